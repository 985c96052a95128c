"""The training mixture: each source gets a share of a token budget, however big it is (GPT-3's table
of datasets, weights and epochs), and the documents are written as shards the pretrain stage reads.

A source whose share is larger than what it holds is repeated (epochs > 1); a smaller share takes a
random part of it (epochs < 1). Sources are interleaved at random in proportion to what each still
owes, then passed through a shuffle buffer, so every shard is a mix; memory stays bounded.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass
class SourcePlan:
    """One row of the mixture table."""

    name: str
    weight: float          # the share of the budget asked for (normalised)
    docs: int              # documents the source holds after curation
    tokens: int            # tokens the source holds after curation
    target_tokens: int     # tokens it contributes to the mixture
    epochs: float          # target_tokens / tokens: how many times it is seen


def plan_mixture(weights: dict[str, float], docs: dict[str, int], tokens: dict[str, int],
                 token_budget: int) -> list[SourcePlan]:
    """Shares of `token_budget` by `weights`; budget 0 takes every source once (weights are then
    reported as the shares that gives). A source left empty by curation contributes nothing."""
    live = {name: w for name, w in weights.items() if tokens.get(name, 0) > 0}
    plans = []
    total_weight = sum(live.values()) or 1.0
    total_tokens = sum(tokens.get(name, 0) for name in live) or 1
    for name in weights:
        held = tokens.get(name, 0)
        if name not in live:
            plans.append(SourcePlan(name, 0.0, docs.get(name, 0), held, 0, 0.0))
        elif token_budget > 0:
            target = round(token_budget * live[name] / total_weight)
            plans.append(SourcePlan(name, live[name] / total_weight, docs[name], held, target, target / held))
        else:
            plans.append(SourcePlan(name, held / total_tokens, docs[name], held, held, 1.0))
    return plans


def _source_stream(path: Path, plan: SourcePlan, rng: np.random.Generator) -> Iterator[dict]:
    """The source's documents, `plan.epochs` times: whole passes, then each document of the last
    pass with probability equal to the fractional part."""
    whole, fraction = int(plan.epochs), plan.epochs - int(plan.epochs)
    for epoch in range(math.ceil(plan.epochs)):
        keep_share = 1.0 if epoch < whole else fraction
        with path.open(encoding="utf-8") as handle:
            for line in handle:
                if keep_share >= 1.0 or rng.random() < keep_share:
                    yield json.loads(line)


def write_mixture(plans: list[SourcePlan], source_files: dict[str, Path], out_dir: Path, shard_docs: int,
                  shuffle_buffer: int, seed: int) -> dict:
    """Write shards out_dir/train-NNNNN.jsonl of {"text", "source"}; return per-source docs and tokens written."""
    rng = np.random.default_rng(seed)
    streams = {p.name: _source_stream(source_files[p.name], p, rng) for p in plans if p.target_tokens > 0}
    owed = {p.name: float(p.target_tokens) for p in plans if p.target_tokens > 0}
    written = {p.name: {"docs": 0, "tokens": 0} for p in plans}
    out_dir.mkdir(parents=True, exist_ok=True)
    for old in out_dir.glob("train-*.jsonl"):
        old.unlink()  # a rerun must not leave shards of an earlier, larger run behind
    buffer: list[dict] = []
    writer = _ShardWriter(out_dir, shard_docs)
    emit = writer.write
    while streams:
        names = list(streams)
        share = np.array([max(owed[n], 1.0) for n in names])
        name = names[rng.choice(len(names), p=share / share.sum())]
        record = next(streams[name], None)
        if record is None:
            del streams[name]
            continue
        owed[name] -= record["tokens"]
        written[name]["docs"] += 1
        written[name]["tokens"] += record["tokens"]
        if len(buffer) < shuffle_buffer:
            buffer.append(record)
            continue
        slot = int(rng.integers(len(buffer)))
        emit(buffer[slot])
        buffer[slot] = record
    rng.shuffle(buffer)
    for record in buffer:
        emit(record)
    writer.close()
    return {"shards": writer.names, "sources": written}


class _ShardWriter:
    """Writes records line by line into train-NNNNN.jsonl files of `shard_docs` documents each, so only
    the shuffle buffer is ever held in memory, never a whole shard."""

    def __init__(self, out_dir: Path, shard_docs: int):
        self.out_dir, self.shard_docs = out_dir, shard_docs
        self.names: list[str] = []
        self.handle, self.docs = None, 0

    def write(self, record: dict) -> None:
        if self.handle is None:
            self.names.append(f"train-{len(self.names):05d}.jsonl")
            self.handle, self.docs = (self.out_dir / self.names[-1]).open("w", encoding="utf-8"), 0
        self.handle.write(json.dumps({"text": record["text"], "source": record["source"]}, ensure_ascii=False) + "\n")
        self.docs += 1
        if self.docs >= self.shard_docs:
            self.close()

    def close(self) -> None:
        if self.handle is not None:
            self.handle.close()
            self.handle = None
