import random

import pytest

from chatforge.eval.bootstrap import (mean_interval, per_prompt_sums, ratio_interval, win_rate_interval, wins)
from chatforge.eval.compare import mean, win_rate


def test_per_prompt_sums_group_prompt_major_rows():
    assert per_prompt_sums([1.0, 2.0, 3.0, 4.0, 5.0, 6.0], 3) == [6.0, 15.0]
    with pytest.raises(ValueError):
        per_prompt_sums([1.0, 2.0, 3.0], 2)


def test_all_wins_give_one_one_and_all_ties_a_half():
    assert win_rate_interval([1.0] * 6, [0.0] * 6, n=2) == [1.0, 1.0]
    assert win_rate_interval([0.5] * 6, [0.5] * 6, n=3) == [0.5, 0.5]
    assert wins([1.0, 0.0, 0.3], [0.0, 1.0, 0.3]) == [1.0, 0.0, 0.5]


def test_one_prompt_is_degenerate_the_interval_is_the_point():
    assert mean_interval([0.2, 0.6], n=2) == pytest.approx([0.4, 0.4])


def test_two_prompts_worked_by_hand():
    # prompt means 0 and 1: a resample's mean is 0, 0.5 or 1 with chance 1/4, 1/2, 1/4, so the 2.5% and
    # 97.5% points are 0 and 1
    assert mean_interval([0.0, 0.0, 1.0, 1.0], n=2) == [0.0, 1.0]
    # a ratio of sums, not a mean of ratios: prompt 0 is 1 of 1, prompt 1 is 0 of 3; resamples give
    # 2/2, 0/6 or 1/4
    assert ratio_interval([1.0, 0.0], [1.0, 3.0]) == [0.0, 1.0]


def test_the_interval_holds_the_point_estimate_and_narrows_like_one_over_root_n():
    rng = random.Random(0)
    scores = [rng.choice([0.0, 1.0]) for _ in range(400 * 4)]
    low, high = mean_interval(scores, n=4)
    assert low < mean(scores) < high
    # 1600 independent coin flips: the normal interval is 2 * 1.96 * sqrt(0.25 / 1600) = 0.049 wide
    assert 0.04 < high - low < 0.06
    a = [rng.random() for _ in range(50 * 2)]
    b = [rng.random() for _ in range(50 * 2)]
    low, high = win_rate_interval(a, b, n=2)
    assert low < win_rate(a, b) < high


def test_paired_resampling_keeps_each_prompts_pairs_together():
    # prompts differ a lot in difficulty, and on each one a beats b by a little: a resample of prompts that
    # kept pairs together never sees a loss, while the two means alone overlap widely
    difficulty = [i / 20 for i in range(20) for _ in range(3)]  # 20 prompts x 3 samples
    a = [d + 0.01 for d in difficulty]
    b = list(difficulty)
    assert win_rate_interval(a, b, n=3) == [1.0, 1.0]
    low_a, high_a = mean_interval(a, n=3)
    low_b, high_b = mean_interval(b, n=3)
    assert low_a < high_b and low_b < high_a


def test_seeded_and_empty_cases():
    rng = random.Random(1)
    scores = [rng.random() for _ in range(30)]
    assert mean_interval(scores, n=3, seed=5) == mean_interval(scores, n=3, seed=5)
    assert mean_interval(scores, n=3, seed=5) != mean_interval(scores, n=3, seed=6)
    assert mean_interval([], n=1) is None
    assert mean_interval(scores, n=3, resamples=0) is None
    assert ratio_interval([0.0, 0.0], [0.0, 0.0]) is None  # nothing ever counted
    with pytest.raises(ValueError):
        win_rate_interval([1.0], [1.0, 0.0], n=1)
