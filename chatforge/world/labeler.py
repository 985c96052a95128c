"""The simulated labeler: ranks K responses best -> worst by gold score, its own leaning, and noise.

Each labeler adds to every response's gold score its leaning (a systematic taste: a bonus per word,
for refusing, for hedging; version-2 worlds give each labeler of a panel its own, as AlpacaFarm's
simulated annotators differ the way people do) and independent Gaussian noise N(0, noise^2), then
sorts. Two labelers l, m order a pair of responses the same way with probability
p_l p_m + (1 - p_l)(1 - p_m), where p_l = Phi(d_l / (noise * sqrt(2))) is the chance labeler l puts the
first response above the second and d_l the difference of their scores as l sees them (gold + leaning);
equal scores (d = 0) are coin flips. Averaging that over all C(K, 2) pairs of a set of response pools
and over the panel's pairs of labelers gives the expected inter-labeler agreement, which
`calibrate_noise` inverts by bisection: InstructGPT's labelers agreed about 73% of the time.

`label_pools` has a panel of them rank pools of sampled responses (the `rank` stage's comparisons), round
robin, their noise calibrated on these very pools unless the caller fixes it (later rounds of iterated
RLHF keep the same labelers).
"""

from __future__ import annotations

import json
import math
import random
import re
from collections import Counter
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path

from chatforge.errors import ChatforgeError
from chatforge.world import templates as T
from chatforge.world.gold import GoldScorer

DEFAULT_AGREEMENT = 0.73
# The version-2 panel (labeler i leans as entry i mod 5; the demo holds the fifth out): one neutral, one
# who likes longer answers, one cautious (likes refusals and "I don't know"), one who dislikes hedging,
# one who likes length a little and refusals less. Their means are mild (+0.006 a word, +0.04 for a
# refusal), so the rankings still follow the gold judge, but each labeler disagrees in its own direction.
DEFAULT_LEANINGS = ({}, {"length": 0.02}, {"refusal": 0.3, "hedge": 0.2}, {"hedge": -0.2},
                    {"length": 0.01, "refusal": -0.1})
LABELER_FILE = "labeler.json"
_TIE = 1e-9  # gold differences below this are ties
_REFUSAL = [re.compile(p) for p in T.REFUSAL_PATTERNS]
_UNSURE = [re.compile(p) for p in T.UNSURE_PATTERNS]
# What a leaning can weigh: words in the response, refusing, hedging ("I don't know", "not sure").
LEANING_FEATURES = ("length", "refusal", "hedge")


def leaning_bonus(leaning: dict[str, float], response: str) -> float:
    """What a labeler with this leaning adds to a response's gold score."""
    if not leaning:
        return 0.0
    lowered = response.lower()
    bonus = leaning.get("length", 0.0) * len(response.split())
    if any(p.search(lowered) for p in _REFUSAL):
        bonus += leaning.get("refusal", 0.0)
    elif any(p.search(lowered) for p in _UNSURE):
        bonus += leaning.get("hedge", 0.0)
    return bonus


@dataclass
class SimulatedLabeler:
    """A labeler with noise `noise` (std of the noise added to gold scores), a leaning (LEANING_FEATURES ->
    weight, see leaning_bonus) and its own seeded draws."""

    scorer: GoldScorer
    noise: float = 0.0
    seed: int = 0
    leaning: dict = field(default_factory=dict)
    _rng: random.Random = field(init=False, repr=False)

    def __post_init__(self):
        self._rng = random.Random(f"labeler:{self.seed}")

    @classmethod
    def calibrated(cls, scorer: GoldScorer, pools: list[tuple], agreement: float = DEFAULT_AGREEMENT,
                   seed: int = 0) -> "SimulatedLabeler":
        """A labeler whose noise gives `agreement` between two such labelers on `pools` [(prompt, responses)]."""
        return cls(scorer, calibrate_noise(gold_pools(scorer, pools), agreement), seed)

    @classmethod
    def from_dir(cls, out_dir: str | Path, seed: int = 0, index: int = 0) -> "SimulatedLabeler":
        """Labeler `index` of the panel of a world written by `chatforge world` (OUT_DIR/labeler.json)."""
        settings = read_labeler_file(out_dir)
        leanings = settings.get("leanings") or [{}]
        return cls(GoldScorer.from_dir(out_dir), settings["noise"], seed, leanings[index % len(leanings)])

    def rank(self, prompt: str | list[dict], responses: list[str]) -> list[int]:
        """Indices of `responses` from best to worst, as this labeler sees them."""
        return self.rank_scored(self.scorer.score_batch([prompt] * len(responses), responses), responses)

    def rank_scored(self, gold: list[float], responses: list[str]) -> list[int]:
        """`rank` for responses whose gold scores are known already."""
        return rank_scores(seen_scores(gold, responses, self.leaning), self.noise, self._rng)


def read_labeler_file(out_dir: str | Path) -> dict:
    """OUT_DIR/labeler.json: the panel's noise and, in version 2, each labeler's leaning."""
    path = Path(out_dir) / LABELER_FILE
    if not path.exists():
        raise ChatforgeError(f"{path}: labeler file does not exist; run `chatforge world` first")
    settings = json.loads(path.read_text())
    return {**settings, "noise": float(settings["noise"]), "leanings": settings.get("leanings") or [{}]}


def seen_scores(gold: list[float], responses: list[str], leaning: dict) -> list[float]:
    """The scores a labeler with this leaning sees before its noise: gold + leaning bonus."""
    return [g + leaning_bonus(leaning, r) for g, r in zip(gold, responses)] if leaning else list(gold)


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
    """Analytic pairwise agreement of two independent labelers with this noise and no leaning (see module doc)."""
    return expected_panel_agreement([score_pools], noise)


def _follows(gap: float, noise: float) -> float:
    """P(a labeler puts the first response above the second) when it sees them `gap` apart."""
    if abs(gap) < _TIE:
        return 0.5
    if noise <= 0:
        return 1.0 if gap > 0 else 0.0
    return 0.5 * (1.0 + math.erf(gap / (2.0 * noise)))  # Phi(gap / (noise * sqrt 2))


def expected_panel_agreement(panel_pools: list[list[list[float]]], noise: float) -> float:
    """Analytic pairwise agreement of two labelers of a panel, averaged over the panel's pairs of distinct
    labelers (one labeler: two independent copies of it). panel_pools[l][item][response] is the score
    labeler l sees (gold + its leaning)."""
    members = range(len(panel_pools))
    pairs = [(l, m) for l in members for m in members if l < m] or [(0, 0)]
    # few distinct gap pairs occur, so count them once
    gaps = Counter()
    for l, m in pairs:
        for scores_l, scores_m in zip(panel_pools[l], panel_pools[m], strict=True):
            for i, j in combinations(range(len(scores_l)), 2):
                gap_l, gap_m = scores_l[i] - scores_l[j], scores_m[i] - scores_m[j]
                if l == m:  # one labeler against a copy of itself: only the size of the gap matters
                    gap_l = gap_m = abs(gap_l)
                gaps[round(gap_l, 9), round(gap_m, 9)] += 1
    total = sum(gaps.values())
    if total == 0:
        raise ChatforgeError("labeler: the response pools have no pairs to compare (need K >= 2)")
    agree = 0.0
    for (gap_l, gap_m), count in gaps.items():
        p_l, p_m = _follows(gap_l, noise), _follows(gap_m, noise)
        agree += count * (p_l * p_m + (1 - p_l) * (1 - p_m))
    return agree / total


def panel_pools(gold: list[list[float]], responses: list[list[str]], leanings: list[dict]) -> list[list[list[float]]]:
    """The scores each labeler of a panel sees on each pool: gold + its leaning."""
    return [[seen_scores(g, r, leaning) for g, r in zip(gold, responses)] for leaning in leanings]


def calibrate_noise(score_pools: list[list[float]], agreement: float = DEFAULT_AGREEMENT,
                    panel: list[list[list[float]]] | None = None) -> float:
    """The noise at which two labelers agree `agreement` of the time on these pools (bisection); with
    `panel` (see expected_panel_agreement), two labelers of that panel, averaged over its pairs."""
    panel = panel if panel is not None else [score_pools]
    ceiling = expected_panel_agreement(panel, 0.0)  # ties and opposed leanings cap what any noise can reach
    if not 0.5 < agreement <= ceiling:
        raise ChatforgeError(
            f"labeler: agreement {agreement} is out of reach on these response pools; it must be in "
            f"(0.5, {ceiling:.3f}] (0.5 = labelers are coin flips; tied gold scores and the labelers' own "
            "leanings keep it below 1)")
    if agreement == ceiling:
        return 0.0
    low, high = 0.0, 1.0
    while expected_panel_agreement(panel, high) > agreement:
        high *= 2
    for _ in range(60):
        middle = (low + high) / 2
        if expected_panel_agreement(panel, middle) > agreement:
            low = middle
        else:
            high = middle
    return (low + high) / 2


def label_pools(scorer: GoldScorer, pools: list[tuple], n_labelers: int = 4, agreement: float = DEFAULT_AGREEMENT,
                seed: int = 0, noise: float | None = None, leanings: list[dict] | None = None) -> tuple[list[dict], dict]:
    """Rank each pool by one of n_labelers simulated labelers (round robin); labeler i leans as
    leanings[i % len(leanings)] (none: gold + noise only).

    The labelers' noise is calibrated so two of them agree `agreement` of the time on these pools
    (averaged over the panel's pairs), or, when `noise` is given, is that (the same labelers as on
    earlier pools; their agreement is measured).

    Returns comparison records {"prompt", "responses" (best first), "labeler"} and the labelers' stats:
    noise, the agreement two independent labelers reach on these pools, and the most they could reach.
    """
    leanings = leanings or [{}]
    panel = [leanings[i % len(leanings)] for i in range(n_labelers)]
    gold = gold_pools(scorer, pools)
    seen = panel_pools(gold, [responses for _, responses in pools], panel)
    ceiling = expected_panel_agreement(seen, 0.0)
    if noise is None:
        noise = calibrate_noise(gold, agreement, seen) if agreement < ceiling else 0.0
    labelers = [SimulatedLabeler(scorer, noise, seed=seed * 100 + i, leaning=panel[i]) for i in range(n_labelers)]
    records = []
    for index, (prompt, responses) in enumerate(pools):
        labeler = index % n_labelers
        order = labelers[labeler].rank_scored(gold[index], responses)
        records.append({"prompt": prompt, "responses": [responses[i] for i in order], "labeler": f"sim-{labeler}"})
    # fresh labelers, so the measured agreement is not the training labels': two of the same kind, or the
    # whole panel when its members lean differently (then averaged over its pairs)
    varied = len({tuple(sorted(leaning.items())) for leaning in panel}) > 1
    fresh = [SimulatedLabeler(scorer, noise, seed=seed * 100 + 90 + i, leaning=panel[i % len(panel)])
             for i in range(len(panel) if varied else 2)]
    rankings = [[labeler.rank_scored(g, responses) for g, (_, responses) in zip(gold, pools)] for labeler in fresh]
    agreements = [pairwise_agreement(rankings[l], rankings[m]) for l in range(len(fresh))
                  for m in range(l + 1, len(fresh))]
    measured = sum(agreements) / len(agreements) if pools else math.nan
    return records, {"noise": noise, "agreement": measured, "agreement_target": agreement,
                     "agreement_ceiling": ceiling, "pools": len(pools),
                     "responses": sum(len(r) for _, r in pools), "leanings": panel}
