"""Agreement between labelers: the share of response pairs two labelers order the same way, over the
items both ranked (InstructGPT: training labelers agreed 72.6%, held-out labelers with them 77.3%)."""

from __future__ import annotations

from collections import defaultdict
from itertools import combinations
from math import comb

from sqlalchemy import select
from sqlalchemy.orm import Session

from chatforge.serve.label.db import Item, Job, Label, Labeler
from chatforge.world.labeler import pairwise_agreement


def agreement_table(rankings: dict[int, dict[str, list[int]]], held_out: set[str]) -> dict:
    """Agreement from {item: {labeler: ranking}}: overall, among training labelers, held-out vs training,
    and per labeler (with everyone else); each as {"agreement": share or None, "pairs": response pairs}."""
    sums: dict = defaultdict(lambda: [0.0, 0])  # key -> [agreeing pairs, pairs]

    def add(key, share: float, pairs: int):
        sums[key][0] += share * pairs
        sums[key][1] += pairs

    for by_labeler in rankings.values():
        for (name_a, ranking_a), (name_b, ranking_b) in combinations(sorted(by_labeler.items()), 2):
            pairs = comb(len(ranking_a), 2)
            share = pairwise_agreement([ranking_a], [ranking_b])
            add("overall", share, pairs)
            group = {name_a in held_out, name_b in held_out}
            add("training" if group == {False} else "held_out_vs_training" if group == {True, False} else "held_out",
                share, pairs)
            add(("labeler", name_a), share, pairs)
            add(("labeler", name_b), share, pairs)

    def result(key):
        agree, pairs = sums.get(key, (0.0, 0))
        return {"agreement": agree / pairs if pairs else None, "pairs": pairs}

    names = sorted({name for by_labeler in rankings.values() for name in by_labeler})
    return {"overall": result("overall"), "training": result("training"),
            "held_out_vs_training": result("held_out_vs_training"),
            "per_labeler": {name: result(("labeler", name)) for name in names}}


def label_agreement(session: Session, job: str = "") -> dict:
    """agreement_table over every ranking in the database, or in the job named `job` (skips and
    demonstrations do not count)."""
    rankings: dict[int, dict[str, list[int]]] = defaultdict(dict)
    query = select(Label.item_id, Labeler.name, Label.ranking).join(Labeler).where(Label.kind == "ranking")
    if job:
        query = query.join(Item, Item.id == Label.item_id).join(Job).where(Job.name == job)
    rows = session.execute(query)
    for item_id, name, ranking in rows:
        rankings[item_id][name] = ranking
    held_out = set(session.scalars(select(Labeler.name).where(Labeler.held_out)))
    return agreement_table(dict(rankings), held_out)
