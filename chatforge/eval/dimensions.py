"""Scores broken down by failure dimension and by prompt kind, from the gold judge's judgements.

A judgement is what `GoldScorer.judge` returns: "kind" (the prompt's task kind), "score" and "failures",
{dimension: True when the response fails it} for the dimensions that apply to that prompt only. A
dimension's failure rate is (responses failing it) / (responses it applies to); where it applies to
none the rate is None, not 0: nothing was measured.
"""

from __future__ import annotations

from chatforge.world.gold import DIMENSIONS


def gold_scores(judgements: list[dict]) -> list[float]:
    """The score of each judgement."""
    return [judgement["score"] for judgement in judgements]


def dimension_names(judgements: list[dict]) -> list[str]:
    """The gold judge's DIMENSIONS in their order, then any other dimension the judgements mark."""
    seen = {name for judgement in judgements for name in judgement.get("failures", {})}
    return list(DIMENSIONS) + sorted(seen - set(DIMENSIONS))


def failure_rates(judgements: list[dict]) -> dict[str, dict]:
    """{dimension: {"rate": failing / applicable or None, "n": applicable}} for every dimension."""
    rates = {}
    for name in dimension_names(judgements):
        marks = [judgement["failures"][name] for judgement in judgements if name in judgement.get("failures", {})]
        rates[name] = {"rate": sum(map(bool, marks)) / len(marks) if marks else None, "n": len(marks)}
    return rates


def score_by_kind(judgements: list[dict]) -> dict[str, dict]:
    """{kind: {"score": mean gold score, "n": responses}}, kinds in the order they first appear."""
    scores: dict[str, list[float]] = {}
    for judgement in judgements:
        scores.setdefault(judgement["kind"], []).append(judgement["score"])
    return {kind: {"score": sum(values) / len(values), "n": len(values)} for kind, values in scores.items()}


def dimensions_block(judgements: list[dict]) -> dict:
    """eval.json's "dimensions" block of one model: failure rates and mean gold score per prompt kind."""
    return {"failure_rates": failure_rates(judgements), "gold_score_by_kind": score_by_kind(judgements)}


def rates_only(block: dict) -> dict[str, float | None]:
    """{dimension: rate} of a dimensions block."""
    return {name: entry["rate"] for name, entry in block["failure_rates"].items()}
