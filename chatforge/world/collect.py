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
from chatforge.generation import SamplingParams
from chatforge.world.gold import GoldScorer
from chatforge.world.labeler import (SimulatedLabeler, calibrate_noise, expected_agreement, gold_pools,
                                     measure_agreement)


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
                seed: int = 0, noise: float | None = None) -> tuple[list[dict], dict]:
    """Rank each pool by one of n_labelers simulated labelers (round robin).

    The labelers' noise is calibrated so two of them agree `agreement` of the time on these pools, or,
    when `noise` is given, is that (the same labelers as on earlier pools; their agreement is measured).

    Returns comparison records {"prompt", "responses" (best first), "labeler"} and the labelers' stats:
    noise, the agreement two independent labelers reach on these pools, and the most they could reach.
    """
    scores = gold_pools(scorer, pools)
    ceiling = expected_agreement(scores, 0.0)
    if noise is None:
        noise = calibrate_noise(scores, agreement) if agreement < ceiling else 0.0
    labelers = [SimulatedLabeler(scorer, noise, seed=seed * 100 + i) for i in range(n_labelers)]
    records = []
    for index, (prompt, responses) in enumerate(pools):
        labeler = index % n_labelers
        order = labelers[labeler].rank(prompt, responses)
        records.append({"prompt": prompt, "responses": [responses[i] for i in order], "labeler": f"sim-{labeler}"})
    first, second = (SimulatedLabeler(scorer, noise, seed=seed * 100 + 90 + i) for i in range(2))
    measured = measure_agreement(first, second, pools) if pools else math.nan
    return records, {"noise": noise, "agreement": measured, "agreement_target": agreement,
                     "agreement_ceiling": ceiling, "pools": len(pools),
                     "responses": sum(len(r) for _, r in pools)}
