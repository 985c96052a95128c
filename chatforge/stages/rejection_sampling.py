"""Rejection-sampling fine-tuning (Llama 2's "rejection sampling"; RAFT, ReST): learn from the policy's best samples.

Each round: sample `n` responses at `temperature` for each of `prompts_per_round` RL prompts from the current
policy -> score every sample (reward_source rm / gold / fn, + reward_fn; chatforge/rollouts.py) -> keep each
prompt's best sample (keep=best, as Llama 2), or only a best that beats its prompt's mean score (keep=above_mean:
a prompt whose samples all score the same teaches nothing and is skipped) -> `epochs` passes of SFT over the kept
(prompt, response) pairs: the SFT stage's loss on the response tokens (the sampled token ids themselves, the stop
token included, so the policy learns to end as it did), rows packed as in SFT. The next round samples the policy
this round trained; one AdamW runs over all rounds at a constant learning rate. One process (no torchrun).

    out_dir/metrics.jsonl, tensorboard/  per round (step = round): samples' reward (mean, max), score, gold score,
                                         length, EOS rate, tokens/s; the kept samples' count, reward and gold
                                         score; SFT loss and tokens/s; time split
    out_dir/rounds/round_N.jsonl         round N's kept samples: prompt, response, score, reward (gold)
    out_dir/checkpoints/step_N/          the policy after round N, the optimizer, the score normalisation
    out_dir/final/                       the trained policy: a plain HF folder with the chat template and a model card
    out_dir/summary.json                 the first and last round's numbers and the score normalisation
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from chatforge.config import opt
from chatforge.data.chat import TokenizedChat
from chatforge.data.jsonl import write_jsonl
from chatforge.rollouts import (Rounds, SamplingConfig, check_sampling_config, end_round, finish, optimizer_step,
                                sample_and_score, start_rounds)
from chatforge.stages.sft import backward_step, make_rows


@dataclass
class Config(SamplingConfig):
    out_dir: str = opt("runs/rejection_sampling", "run folder")
    n: int = opt(8, "samples per prompt each round, the best of which is kept")
    keep: Literal["best", "above_mean"] = opt(
        "best", "which samples are trained on: each prompt's best (Llama 2), or its best only when it scores above "
                "its prompt's mean (prompts whose samples all tie are skipped)")
    epochs: int = opt(1, "SFT passes over each round's kept samples")
    batch_size: int = opt(8, "rows per optimizer step (kept samples, packed when packing is on)")
    packing: bool = opt(True, "pack several kept samples into one row (position ids restart per sample), as SFT")

    def validate(self):
        """Check everything that can be checked before a model is loaded."""
        check_sampling_config(self, "rejection_sampling", ("n", "epochs", "batch_size"))


def select_best(scores: torch.Tensor, keep: str) -> list[int | None]:
    """Per prompt, the index of the sample kept, or None; scores (prompts, n). Ties go to the first sample."""
    best = scores.argmax(1)
    if keep == "best":
        return best.tolist()
    above = scores.max(1).values > scores.mean(1)
    return [int(i) if ok else None for i, ok in zip(best, above)]


def kept_chat(prompt_ids: list[int], response_ids: list[int]) -> TokenizedChat:
    """A kept sample as an SFT row: its own token ids, the loss on the response (stop token included)."""
    return TokenizedChat(prompt_ids + response_ids, [0] * len(prompt_ids) + [1] * len(response_ids))


def train_round(rounds: Rounds, chats: list[TokenizedChat], context: int) -> dict:
    """`epochs` SFT passes over the round's kept samples; the mean loss per step and the training tokens/s."""
    cfg, model, optimizer = rounds.cfg, rounds.model, rounds.optimizer
    rows = make_rows(chats, context, cfg.packing)
    losses, tokens, start = [], 0, time.perf_counter()
    model.train()
    for epoch in range(cfg.epochs):
        order = list(range(len(rows)))
        random.Random(cfg.seed * 1_000_003 + rounds.state["round"] * 1000 + epoch).shuffle(order)
        for first in range(0, len(order), cfg.batch_size):
            step_rows = [rows[i] for i in order[first:first + cfg.batch_size]]
            loss, step_tokens = backward_step(model, step_rows, cfg.batch_size, rounds.tokenizer.pad_token_id,
                                              rounds.device, rounds.amp_dtype)
            tokens += step_tokens
            if optimizer_step(rounds, loss):
                losses.append(loss)
    model.eval()
    return {"train/loss": sum(losses) / len(losses) if losses else float("nan"), "train/steps": len(losses),
            "train/tokens_per_s": tokens / max(time.perf_counter() - start, 1e-9)}


def run(cfg: Config) -> Path:
    """Fine-tune the policy on its own best samples, round after round; return the final policy folder."""
    rounds = start_rounds(cfg, "rejection_sampling")  # every input checked before anything is written
    context = getattr(rounds.model.config, "max_position_embeddings", None) or 2048
    print(f"rejection_sampling: {len(rounds.prompts)} prompts, {cfg.rounds} rounds x {cfg.prompts_per_round} prompts "
          f"x {cfg.n} samples, keep {cfg.keep}")
    while rounds.state["round"] < cfg.rounds:
        samples = sample_and_score(rounds, cfg.n)
        scores, combined, result, record = samples.scores, samples.combined, samples.result, samples.record
        picks = select_best(combined.view(-1, cfg.n), cfg.keep)
        kept = [i * cfg.n + pick for i, pick in enumerate(picks) if pick is not None]
        record["kept/count"] = len(kept)
        if kept:
            record["kept/reward"] = scores["raw"][kept].mean().item()
            record["kept/score"] = combined[kept].mean().item()
            if scores["gold"] is not None:
                record["kept/gold_score"] = scores["gold"][kept].mean().item()
            chats = [kept_chat(result.prompt_ids[i], result.response_ids[i]) for i in kept]
            record.update(train_round(rounds, chats, context))
        write_jsonl(rounds.out_dir / "rounds" / f"round_{rounds.state['round'] + 1}.jsonl", [
            {"prompt": samples.prompts[i], "response": result.texts[i], "score": combined[i].item(),
             "reward": scores["raw"][i].item(),
             **({"gold_score": scores["gold"][i].item()} if scores["gold"] is not None else {})} for i in kept])
        end_round(rounds, samples, kept=len(kept))
    return finish(rounds, "rejection-sampling")
