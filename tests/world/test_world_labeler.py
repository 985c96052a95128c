import random

import pytest

from chatforge.errors import ChatforgeError
from chatforge.world import render
from chatforge.world.facts import World
from chatforge.world.gold import GoldScorer
from chatforge.world.labeler import (DEFAULT_AGREEMENT, SimulatedLabeler, calibrate_noise, expected_agreement,
                                     gold_pools, measure_agreement, pairwise_agreement, rank_scores)


@pytest.fixture(scope="module")
def setup():
    world = World.generate(seed=0)
    split = render.split_prompts(world, random.Random(0), render.DEFAULT_TASK_MIX, n_eval=0, n_demo_val=0)
    scorer = GoldScorer(world)
    calibration = render.response_pools(world, split.train, 300, random.Random(1))
    fresh = render.response_pools(world, split.train, 300, random.Random(2))
    return scorer, calibration, fresh


def test_pairwise_agreement_by_hand():
    assert pairwise_agreement([[0, 1, 2]], [[0, 1, 2]]) == 1.0
    assert pairwise_agreement([[0, 1, 2]], [[0, 2, 1]]) == pytest.approx(2 / 3)
    assert pairwise_agreement([[0, 1], [2, 1, 0]], [[1, 0], [0, 1, 2]]) == 0.0
    with pytest.raises(ValueError):
        pairwise_agreement([[0, 1]], [])


def test_expected_agreement_by_hand():
    assert expected_agreement([[1.0, 0.0]], 0.0) == 1.0
    assert expected_agreement([[1.0, 1.0]], 0.0) == 0.5       # a tie is a coin flip
    assert expected_agreement([[1.0, 1.0]], 3.0) == 0.5
    # gap 1, noise 1: p = Phi(1 / sqrt 2) = 0.760250, p^2 + (1 - p)^2 = 0.635460
    assert expected_agreement([[1.0, 0.0]], 1.0) == pytest.approx(0.635460, abs=1e-6)
    assert expected_agreement([[1.0, 0.0, 1.0]], 0.0) == pytest.approx((1 + 1 + 0.5) / 3)


def test_calibration_inverts_expected_agreement():
    pools = [[1.0, 0.85, 0.5, 0.1, 0.0], [1.0, 1.0, -1.0, 0.65]]
    noise = calibrate_noise(pools, 0.73)
    assert expected_agreement(pools, noise) == pytest.approx(0.73, abs=1e-6)
    with pytest.raises(ChatforgeError, match="out of reach"):
        calibrate_noise([[1.0, 1.0, 0.0]], 0.9)              # one tie in three pairs caps it at 0.833


def test_default_labelers_agree_about_73_percent(setup):
    scorer, calibration, fresh = setup
    first = SimulatedLabeler.calibrated(scorer, calibration, seed=1)
    second = SimulatedLabeler(scorer, first.noise, seed=2)
    assert DEFAULT_AGREEMENT == 0.73
    assert 0.2 < first.noise < 0.4
    assert measure_agreement(first, second, fresh) == pytest.approx(0.73, abs=0.03)


def test_noiseless_labelers_agree_except_on_ties(setup):
    scorer, _, fresh = setup
    measured = measure_agreement(SimulatedLabeler(scorer, 0.0, seed=1), SimulatedLabeler(scorer, 0.0, seed=2), fresh)
    assert measured == pytest.approx(expected_agreement(gold_pools(scorer, fresh), 0.0), abs=0.03)
    # no ties: identical rankings, the ideal answer first
    world = World.generate(seed=0)
    name, job = world.people[0].name, world.people[0].job
    other = next(v for v in world.values["job"] if v != job)
    responses = [f"{name} is a {other}.", "I am not sure.", f"{name} is a {job}.", f"Let me think about that. {name} is a {job}."]
    ranks = [SimulatedLabeler(GoldScorer(world), 0.0, seed=s).rank(f"What is {name}'s job?", responses) for s in range(5)]
    assert all(r == [2, 3, 1, 0] for r in ranks)


def test_rank_scores_is_a_seeded_permutation():
    scores = [0.5, 1.0, 0.0, 0.5]
    ranking = rank_scores(scores, 0.3, random.Random(0))
    assert sorted(ranking) == [0, 1, 2, 3]
    assert ranking == rank_scores(scores, 0.3, random.Random(0))
    tied_first = {tuple(rank_scores([1.0, 1.0], 0.0, random.Random(s))) for s in range(20)}
    assert tied_first == {(0, 1), (1, 0)}
