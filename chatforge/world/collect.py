"""Collect ranked comparisons from a policy, with simulated labelers standing in for people.

Sample K responses per prompt from the policy (the SFT model in InstructGPT's first round), drop
duplicate responses (a ranking of equal texts says nothing; pools left with one response are
skipped), and have one of several simulated labelers rank each pool. The labelers' noise is
calibrated on these very pools so two independent labelers agree `agreement` of the time, unless
the caller fixes it (later rounds of iterated RLHF keep the same labelers).
"""

from __future__ import annotations

import math

from chatforge.eval.answers import chat_answers
from chatforge.eval.compare import mean
from chatforge.generation import SamplingParams
from chatforge.world.gold import GoldScorer
from chatforge.world.labeler import (SimulatedLabeler, calibrate_noise, expected_panel_agreement, gold_pools,
                                     pairwise_agreement, panel_pools)


def sample_pools(model, tokenizer, prompts: list, k: int, params: SamplingParams,
                 batch_size: int = 64) -> list[tuple]:
    """[(prompt, distinct responses)] with at least two distinct responses each, from K samples per prompt."""
    repeated = [p for p in prompts for _ in range(k)]
    texts = chat_answers(model, tokenizer, repeated, params, batch_size).texts
    pools = []
    for i, prompt in enumerate(prompts):
        distinct: dict[str, str] = {}
        for text in texts[i * k:(i + 1) * k]:
            if text.strip():
                distinct.setdefault(text.strip(), text)
        if len(distinct) >= 2:
            pools.append((prompt, list(distinct.values())))
    return pools


def label_pools(scorer: GoldScorer, pools: list[tuple], n_labelers: int = 4, agreement: float = 0.73,
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
    measured = mean(pairwise_agreement(rankings[l], rankings[m]) for l in range(len(fresh))
                    for m in range(l + 1, len(fresh))) if pools else math.nan
    return records, {"noise": noise, "agreement": measured, "agreement_target": agreement,
                     "agreement_ceiling": ceiling, "pools": len(pools),
                     "responses": sum(len(r) for _, r in pools), "leanings": panel}
