"""The simulated labeler: ranks K responses best -> worst by gold score plus its own noise.

Each labeler adds independent Gaussian noise N(0, noise^2) to every response's gold score and
sorts. Two labelers order a pair of responses whose gold scores differ by d the same way with
probability p^2 + (1 - p)^2, where p = Phi(|d| / (noise * sqrt(2))) is the chance one labeler
follows the gold order; tied pairs (d = 0) are coin flips (p = 1/2). Averaging that over all
C(K, 2) pairs of a set of response pools gives the expected inter-labeler agreement, which
`calibrate_noise` inverts by bisection: InstructGPT's labelers agreed about 73% of the time.
"""

from __future__ import annotations

import json
import math
import random
from collections import Counter
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path

from chatforge.errors import ChatforgeError
from chatforge.world.gold import GoldScorer

DEFAULT_AGREEMENT = 0.73
LABELER_FILE = "labeler.json"
_TIE = 1e-9  # gold differences below this are ties


@dataclass
class SimulatedLabeler:
    """A labeler with noise `noise` (std of the noise added to gold scores) and its own seeded draws."""

    scorer: GoldScorer
    noise: float = 0.0
    seed: int = 0
    _rng: random.Random = field(init=False, repr=False)

    def __post_init__(self):
        self._rng = random.Random(f"labeler:{self.seed}")

    @classmethod
    def calibrated(cls, scorer: GoldScorer, pools: list[tuple], agreement: float = DEFAULT_AGREEMENT,
                   seed: int = 0) -> "SimulatedLabeler":
        """A labeler whose noise gives `agreement` between two such labelers on `pools` [(prompt, responses)]."""
        return cls(scorer, calibrate_noise(gold_pools(scorer, pools), agreement), seed)

    @classmethod
    def from_dir(cls, out_dir: str | Path, seed: int = 0) -> "SimulatedLabeler":
        """The labeler of a world written by `chatforge world` (noise from OUT_DIR/labeler.json)."""
        path = Path(out_dir) / LABELER_FILE
        if not path.exists():
            raise ChatforgeError(f"{path}: labeler file does not exist; run `chatforge world` first")
        return cls(GoldScorer.from_dir(out_dir), float(json.loads(path.read_text())["noise"]), seed)

    def rank(self, prompt: str | list[dict], responses: list[str]) -> list[int]:
        """Indices of `responses` from best to worst, as this labeler sees them."""
        return rank_scores(self.scorer.score_batch([prompt] * len(responses), responses), self.noise, self._rng)


def rank_scores(scores: list[float], noise: float, rng: random.Random) -> list[int]:
    """Indices sorted by score + N(0, noise^2), best first; exact ties broken at random."""
    noisy = [s + rng.gauss(0.0, noise) if noise > 0 else s for s in scores]
    tiebreak = [rng.random() for _ in scores]
    return sorted(range(len(scores)), key=lambda i: (-noisy[i], tiebreak[i]))


def pairwise_agreement(rankings_a: list[list[int]], rankings_b: list[list[int]]) -> float:
    """Share of response pairs, over all C(K, 2) pairs of every item, that two rankings order alike."""
    agree = total = 0
    for ranking_a, ranking_b in zip(rankings_a, rankings_b, strict=True):
        position_a = {index: pos for pos, index in enumerate(ranking_a)}
        position_b = {index: pos for pos, index in enumerate(ranking_b)}
        for i, j in combinations(sorted(position_a), 2):
            agree += (position_a[i] < position_a[j]) == (position_b[i] < position_b[j])
            total += 1
    return agree / total if total else float("nan")


def measure_agreement(labeler_a: SimulatedLabeler, labeler_b: SimulatedLabeler, items: list[tuple]) -> float:
    """Pairwise agreement of two labelers ranking the same items [(prompt, responses)]."""
    rankings_a = [labeler_a.rank(prompt, responses) for prompt, responses in items]
    rankings_b = [labeler_b.rank(prompt, responses) for prompt, responses in items]
    return pairwise_agreement(rankings_a, rankings_b)


def gold_pools(scorer: GoldScorer, items: list[tuple]) -> list[list[float]]:
    """The gold scores of each item's responses."""
    return [scorer.score_batch([prompt] * len(responses), responses) for prompt, responses in items]


def expected_agreement(score_pools: list[list[float]], noise: float) -> float:
    """Analytic pairwise agreement of two independent labelers with this noise (see module doc)."""
    # few distinct gold gaps occur, so count them once
    gaps = Counter(round(abs(a - b), 9) for scores in score_pools for a, b in combinations(scores, 2))
    total = sum(gaps.values())
    if total == 0:
        raise ChatforgeError("labeler: the response pools have no pairs to compare (need K >= 2)")
    agree = 0.0
    for gap, count in gaps.items():
        if gap < _TIE:
            p = 0.5
        elif noise <= 0:
            p = 1.0
        else:
            p = 0.5 * (1.0 + math.erf(gap / (2.0 * noise)))  # Phi(gap / (noise * sqrt 2))
        agree += count * (p * p + (1 - p) * (1 - p))
    return agree / total


def calibrate_noise(score_pools: list[list[float]], agreement: float = DEFAULT_AGREEMENT) -> float:
    """The noise at which two labelers agree `agreement` of the time on these pools (bisection)."""
    ceiling = expected_agreement(score_pools, 0.0)  # tied pairs cap what any noise can reach
    if not 0.5 < agreement <= ceiling:
        raise ChatforgeError(
            f"labeler: agreement {agreement} is out of reach on these response pools; it must be in "
            f"(0.5, {ceiling:.3f}] (0.5 = labelers are coin flips; tied gold scores keep it below 1)")
    if agreement == ceiling:
        return 0.0
    low, high = 0.0, 1.0
    while expected_agreement(score_pools, high) > agreement:
        high *= 2
    for _ in range(60):
        middle = (low + high) / 2
        if expected_agreement(score_pools, middle) > agreement:
            low = middle
        else:
            high = middle
    return (low + high) / 2
