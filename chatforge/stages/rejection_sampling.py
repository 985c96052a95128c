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

from chatforge.checkpoint import latest_checkpoint, load_trainer_state, save_checkpoint
from chatforge.config import opt, save_config, to_dict
from chatforge.data.chat import TokenizedChat
from chatforge.data.jsonl import write_jsonl
from chatforge.guards import NonFiniteGuard
from chatforge.metrics import MetricsLogger, progress_bar
from chatforge.models.io import load_causal_lm
from chatforge.optim import build_optimizer
from chatforge.rollouts import (SamplingConfig, check_sampling_config, combined_scores, load_reward_model_into,
                                normalisation, prepare, sample_metrics, sample_round, save_final, source_scores)
from chatforge.runtime import start_run
from chatforge.stages.ppo import step_prompts
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


def train_round(model, chats: list[TokenizedChat], optimizer, guard, cfg: Config, round_index: int, pad_id: int,
                context: int, device, amp_dtype) -> dict:
    """`epochs` SFT passes over the round's kept samples; the mean loss per step and the training tokens/s."""
    rows = make_rows(chats, context, cfg.packing)
    losses, tokens, start = [], 0, time.perf_counter()
    model.train()
    for epoch in range(cfg.epochs):
        order = list(range(len(rows)))
        random.Random(cfg.seed * 1_000_003 + round_index * 1000 + epoch).shuffle(order)
        for first in range(0, len(order), cfg.batch_size):
            step_rows = [rows[i] for i in order[first:first + cfg.batch_size]]
            loss, step_tokens = backward_step(model, step_rows, cfg.batch_size, pad_id, device, amp_dtype)
            tokens += step_tokens
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip or float("inf"))
            if guard.step_ok(round_index, loss, grad_norm):  # a non-finite step is skipped, never applied
                optimizer.step()
                losses.append(loss)
            optimizer.zero_grad(set_to_none=True)
    model.eval()
    return {"train/loss": sum(losses) / len(losses) if losses else float("nan"), "train/steps": len(losses),
            "train/tokens_per_s": tokens / max(time.perf_counter() - start, 1e-9)}


def run(cfg: Config) -> Path:
    """Fine-tune the policy on its own best samples, round after round; return the final policy folder."""
    tokenizer, prompts, scorers = prepare(cfg, "rejection_sampling")  # every input checked: nothing written yet
    out_dir, device, amp_dtype = start_run(cfg)
    resume_from = latest_checkpoint(out_dir) if cfg.resume else None
    model = load_causal_lm(resume_from or cfg.policy, device=device).eval()
    load_reward_model_into(scorers, cfg, device)
    context = getattr(model.config, "max_position_embeddings", None) or 2048
    optimizer = build_optimizer(model, cfg.learning_rate, cfg.weight_decay)
    state = {"round": 0, "reward_mean": None, "reward_std": None, "first": None, "last": None}
    if resume_from is not None:
        state.update(load_trainer_state(resume_from, {"optimizer": optimizer}))
        print(f"rejection_sampling: resuming after round {state['round']} from {resume_from}")
    save_config(cfg, out_dir / "config.yaml")
    logger = MetricsLogger(out_dir, cfg.tensorboard, None, to_dict(cfg), state["round"])
    print(f"rejection_sampling: {len(prompts)} prompts, {cfg.rounds} rounds x {cfg.prompts_per_round} prompts "
          f"x {cfg.n} samples, keep {cfg.keep}")

    progress = progress_bar(cfg.rounds, "rejection_sampling", state["round"])
    guard = NonFiniteGuard("rejection_sampling", out_dir)
    while state["round"] < cfg.rounds:
        round_index = state["round"]
        start = time.perf_counter()
        round_prompts = step_prompts(prompts, round_index, cfg.prompts_per_round, cfg.seed)
        result = sample_round(model, round_prompts, cfg.n, cfg, cfg.seed * 1_000_003 + round_index, tokenizer)
        sampled = time.perf_counter()

        sample_prompts = [prompt for prompt, _ in round_prompts for _ in range(cfg.n)]
        scores = source_scores(cfg, scorers, sample_prompts, result, device, amp_dtype)
        if state["reward_mean"] is None:  # the starting policy's samples set the scale, as PPO's SFT samples do
            state["reward_mean"], state["reward_std"] = normalisation(cfg, scores["raw"])
        combined = combined_scores(scores, cfg, state["reward_mean"], state["reward_std"])
        picks = select_best(combined.view(len(round_prompts), cfg.n), cfg.keep)
        kept = [i * cfg.n + pick for i, pick in enumerate(picks) if pick is not None]
        scored = time.perf_counter()

        record = sample_metrics(scores, combined, result, sampled - start)
        record["kept/count"] = len(kept)
        if kept:
            record["kept/reward"] = scores["raw"][kept].mean().item()
            record["kept/score"] = combined[kept].mean().item()
            if scores["gold"] is not None:
                record["kept/gold_score"] = scores["gold"][kept].mean().item()
            chats = [kept_chat(result.prompt_ids[i], result.response_ids[i]) for i in kept]
            record.update(train_round(model, chats, optimizer, guard, cfg, round_index, tokenizer.pad_token_id,
                                      context, device, amp_dtype))
        trained = time.perf_counter()
        record.update({"time/sample_s": sampled - start, "time/score_s": scored - sampled,
                       "time/train_s": trained - scored, "time/round_s": trained - start})
        write_jsonl(out_dir / "rounds" / f"round_{round_index + 1}.jsonl", [
            {"prompt": sample_prompts[i], "response": result.texts[i], "score": combined[i].item(),
             "reward": scores["raw"][i].item(),
             **({"gold_score": scores["gold"][i].item()} if scores["gold"] is not None else {})} for i in kept])
        state["round"] = round_index + 1
        state["first"] = state["first"] or record
        state["last"] = record
        logger.log(state["round"], record)
        progress.update(1)
        progress.set_postfix(reward=f"{record['samples/reward']:.3f}", kept=len(kept),
                             **({"gold": f"{record['samples/gold_score']:.3f}"} if scores["gold"] is not None else {}))
        save_checkpoint(out_dir, state["round"], model, tokenizer, {"optimizer": optimizer},
                        state, cfg.keep_last)
    progress.close()
    logger.close()
    return save_final(out_dir, model, tokenizer, cfg, state, "rejection-sampling")

