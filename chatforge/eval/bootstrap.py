"""95% intervals by bootstrap over prompts: resample prompts with replacement, keep all their samples.

Prompts, not samples, are the unit resampled: the samples of one prompt are not independent (a prompt
the model knows is answered well every time), so resampling samples would give intervals too narrow.
Samples come prompt-major (row i * n + j is sample j of prompt i, as in compare.py). A comparison of
two models is paired: a resampled prompt brings the samples of both models with it.

Every statistic here is a ratio of per-prompt sums (mean score: score sum / samples; win rate: wins
with ties half / pairs), so a resample is two sums over the drawn prompts and 2000 resamples cost
little. The interval is the percentile interval of the resampled statistic.
"""

from __future__ import annotations

import numpy as np

RESAMPLES = 2000
LEVEL = 0.95


def per_prompt_sums(values: list[float], n: int) -> list[float]:
    """Sum of each prompt's n values, for prompt-major values (row i * n + j belongs to prompt i)."""
    if n < 1 or len(values) % n:
        raise ValueError(f"per_prompt_sums: {len(values)} values are not whole groups of {n}")
    return [float(sum(values[start:start + n])) for start in range(0, len(values), n)]


def ratio_interval(numerators: list[float], denominators: list[float], resamples: int = RESAMPLES,
                   seed: int = 0, level: float = LEVEL) -> list[float] | None:
    """Percentile interval of sum(numerators) / sum(denominators) over prompts drawn with replacement.

    One entry per prompt in both lists. None when there is no prompt or resamples is 0; resamples whose
    denominator is 0 (no drawn prompt counts) are left out.
    """
    if len(numerators) != len(denominators):
        raise ValueError(f"ratio_interval: {len(numerators)} numerators against {len(denominators)} denominators")
    if not numerators or resamples < 1:
        return None
    numerators, denominators = np.asarray(numerators, dtype=float), np.asarray(denominators, dtype=float)
    drawn = np.random.default_rng(seed).integers(0, len(numerators), size=(resamples, len(numerators)))
    totals = denominators[drawn].sum(axis=1)  # (resamples,)
    kept = totals > 0
    if not kept.any():
        return None
    statistics = numerators[drawn].sum(axis=1)[kept] / totals[kept]
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(statistics, [tail, 100 - tail])
    return [float(low), float(high)]


def mean_interval(scores: list[float], n: int, resamples: int = RESAMPLES, seed: int = 0) -> list[float] | None:
    """Interval of the mean of prompt-major scores with n samples per prompt."""
    sums = per_prompt_sums(scores, n)
    return ratio_interval(sums, [float(n)] * len(sums), resamples, seed)


def wins(scores_a: list[float], scores_b: list[float]) -> list[float]:
    """1 where a beats b, 0.5 on a tie, 0 where b wins, sample by sample."""
    if len(scores_a) != len(scores_b):
        raise ValueError(f"wins: {len(scores_a)} scores against {len(scores_b)}")
    return [1.0 if a > b else 0.5 if a == b else 0.0 for a, b in zip(scores_a, scores_b)]


def win_rate_interval(scores_a: list[float], scores_b: list[float], n: int, resamples: int = RESAMPLES,
                      seed: int = 0) -> list[float] | None:
    """Paired interval of a's win rate over b (ties half): row k of a is judged against row k of b, and a
    resampled prompt brings both models' n samples of it."""
    return mean_interval(wins(scores_a, scores_b), n, resamples, seed)
