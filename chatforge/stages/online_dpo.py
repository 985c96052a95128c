"""Online (iterative) DPO: DPO on pairs of the current policy's own samples, ranked by a scorer each round.

Each round: sample `k` responses at `temperature` for each of `prompts_per_round` RL prompts from the CURRENT
policy -> score every sample (reward_source rm / gold / fn, + reward_fn; chatforge/rollouts.py) -> rank each
prompt's samples by score and form pairs: best_vs_worst (one pair a prompt), best_vs_rest (the best against each
sample scoring below it) or all (one sample per distinct score, every pair of them); samples that tie make no
pair, and a prompt whose samples all tie is skipped -> `epochs` passes of DPO steps over the round's pairs
(`batch_prompts` prompts a step), the loss of `chatforge dpo` (stages/dpo.py: sigmoid or ipo, beta,
label_smoothing) against a frozen reference (the starting policy unless `reference` names another), on the
sampled token ids themselves (stop token included). One AdamW runs over all rounds at a constant learning rate.
One process (no torchrun).

    out_dir/metrics.jsonl, tensorboard/  per round (step = round): samples' reward (mean, max), score, gold score,
                                         length, EOS rate, tokens/s; KL to the reference (mean over the samples of
                                         log pi - log pi_ref, summed over the response: exact at temperature 1);
                                         pairs; DPO loss, implicit-reward accuracy and margin (means over the
                                         round's steps); time split
    out_dir/checkpoints/step_N/          the policy after round N, the optimizer, the score normalisation
    out_dir/final/                       the trained policy: a plain HF folder with the chat template and a model card
    out_dir/summary.json                 the first and last round's numbers and the score normalisation
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Literal

import torch

from chatforge.checkpoint import latest_checkpoint, load_trainer_state, save_checkpoint
from chatforge.config import opt, save_config, to_dict
from chatforge.data.formats import Comparison
from chatforge.errors import ChatforgeError
from chatforge.guards import NonFiniteGuard
from chatforge.metrics import MetricsLogger, progress_bar
from chatforge.models.io import check_model_dir, check_same_tokenizer, load_causal_lm, load_tokenizer
from chatforge.optim import build_optimizer
from chatforge.reward_fn import as_messages
from chatforge.rollouts import (SamplingConfig, check_sampling_config, combined_scores, load_reward_model_into,
                                normalisation, prepare, sample_metrics, sample_round, save_final, source_scores)
from chatforge.runtime import start_run
from chatforge.stages.dpo import batch_logprobs, pair_count, pair_loss
from chatforge.stages.ppo import step_prompts
from chatforge.stages.rm import EncodedComparison


@dataclass
class Config(SamplingConfig):
    out_dir: str = opt("runs/online_dpo", "run folder")
    reference: str = opt("", "frozen reference of the DPO loss ('' = policy, the starting model)")
    k: int = opt(4, "samples per prompt each round (>= 2), ranked by score into pairs")
    pairs: Literal["best_vs_worst", "best_vs_rest", "all"] = opt(
        "best_vs_worst", "pairs of a prompt's ranked samples: the best against the worst, against each lower one, "
                         "or every pair of samples with distinct scores; ties make no pair")
    loss_type: Literal["sigmoid", "ipo"] = opt(
        "sigmoid", "sigmoid: DPO on summed log-probs; ipo: (h - 1/(2 beta))^2 on mean log-probs per token")
    beta: float = opt(0.1, "strength of the pull to the reference (DPO paper: 0.1)")
    label_smoothing: float = opt(0.0, "conservative DPO: the share of labels taken to be flipped (sigmoid only)")
    epochs: int = opt(1, "DPO passes over each round's pairs")
    batch_prompts: int = opt(8, "prompts (with all their pairs) per DPO step")

    def validate(self):
        """Check everything that can be checked before a model is loaded."""
        check_sampling_config(self, "online_dpo", ("epochs", "batch_prompts"))
        if self.k < 2:
            raise ChatforgeError(f"online_dpo: field 'k' must be >= 2 (a pair needs two samples), got {self.k}")
        if self.reference:
            check_model_dir(self.reference)
        if not self.beta > 0:
            raise ChatforgeError(f"online_dpo: field 'beta' must be > 0, got {self.beta}")
        if not 0.0 <= self.label_smoothing < 0.5:
            raise ChatforgeError(f"online_dpo: field 'label_smoothing' must be in [0, 0.5), got {self.label_smoothing}")
        if self.label_smoothing and self.loss_type != "sigmoid":
            raise ChatforgeError("online_dpo: field 'label_smoothing' applies to loss_type=sigmoid only")


def ranked_group(scores: list[float], pairs: str) -> list[int]:
    """Sample indices of one prompt, best first, such that dpo.pair_indices gives exactly the pairs wanted
    (`all` over them for best_vs_worst and all, `best_vs_rest` for best_vs_rest); [] when every sample ties.
    Ties go to the earlier sample."""
    order = sorted(range(len(scores)), key=lambda i: -scores[i])
    best, worst = order[0], order[-1]
    if scores[best] == scores[worst]:
        return []
    if pairs == "best_vs_worst":
        return [best, worst]
    if pairs == "best_vs_rest":
        return [best] + [i for i in order if scores[i] < scores[best]]
    distinct: dict[float, int] = {}
    for i in order:
        distinct.setdefault(scores[i], i)
    return list(distinct.values())


def loss_settings(cfg: Config) -> SimpleNamespace:
    """The fields dpo.pair_loss reads, its `pairs` saying how to read a ranked_group."""
    return SimpleNamespace(pairs="best_vs_rest" if cfg.pairs == "best_vs_rest" else "all", beta=cfg.beta,
                           loss_type=cfg.loss_type, label_smoothing=cfg.label_smoothing)


def sample_items(prompts: list, result, k: int) -> list[EncodedComparison]:
    """One item per prompt with its k samples as token ids (prompt + response), in sample order."""
    items = []
    for p, prompt in enumerate(prompts):
        rows = range(p * k, (p + 1) * k)
        items.append(EncodedComparison([result.prompt_ids[i] + result.response_ids[i] for i in rows],
                                       Comparison(as_messages(prompt), [result.texts[i] for i in rows], None, ""),
                                       len(result.prompt_ids[p * k])))
    return items


@torch.no_grad()
def summed_logprobs(model, items: list[EncodedComparison], pad_id: int, device, amp_dtype,
                    batch: int) -> list[torch.Tensor]:
    """Each item's samples' summed response log-probs under `model`, (k,) per item, on the CPU."""
    out = []
    for start in range(0, len(items), batch):
        part = items[start:start + batch]
        sums, _ = batch_logprobs(model, part, pad_id, device, amp_dtype)
        out += list(sums.float().cpu().split([len(item.sequences) for item in part]))
    return out


def train_round(model, groups: list, optimizer, guard, cfg: Config, round_index: int, pad_id: int, device,
                amp_dtype) -> dict:
    """`epochs` passes of DPO steps over the round's (item, reference log-probs) groups; pair-weighted means."""
    settings = loss_settings(cfg)
    totals = {"loss": 0.0, "accuracy": 0.0, "margin": 0.0, "chosen_logprobs": 0.0, "rejected_logprobs": 0.0}
    pairs, steps = 0, 0
    model.train()
    for epoch in range(cfg.epochs):
        order = list(range(len(groups)))
        random.Random(cfg.seed * 1_000_003 + round_index * 1000 + epoch).shuffle(order)
        for first in range(0, len(order), cfg.batch_prompts):
            batch = [groups[i] for i in order[first:first + cfg.batch_prompts]]
            policy, counts = batch_logprobs(model, [item for item, _ in batch], pad_id, device, amp_dtype)
            reference = torch.cat([ref for _, ref in batch]).to(device)
            loss, stats = pair_loss(settings, policy, counts, reference, [len(item.sequences) for item, _ in batch])
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip or float("inf"))
            if guard.step_ok(round_index, loss.item(), grad_norm):  # a non-finite step is skipped, never applied
                optimizer.step()
                steps += 1
                stats["loss"] = loss.item()
                for key in totals:
                    totals[key] += stats[key] * stats["pairs"]
                pairs += stats["pairs"]
            optimizer.zero_grad(set_to_none=True)
    model.eval()
    return {**{f"train/{key}": value / max(pairs, 1) for key, value in totals.items()}, "train/steps": steps}


def run(cfg: Config) -> Path:
    """Train the policy by DPO on ranked pairs of its own samples, round after round; return the final folder."""
    tokenizer, prompts, scorers = prepare(cfg, "online_dpo")  # every input checked: nothing written yet
    reference_dir = cfg.reference or cfg.policy
    if cfg.reference:
        check_same_tokenizer(tokenizer, cfg.policy, load_tokenizer(cfg.reference), cfg.reference, "reference")
    out_dir, device, amp_dtype = start_run(cfg)
    resume_from = latest_checkpoint(out_dir) if cfg.resume else None
    model = load_causal_lm(resume_from or cfg.policy, device=device).eval()
    reference = load_causal_lm(reference_dir, device=device).requires_grad_(False).eval()
    load_reward_model_into(scorers, cfg, device)
    optimizer = build_optimizer(model, cfg.learning_rate, cfg.weight_decay)
    state = {"round": 0, "reward_mean": None, "reward_std": None, "first": None, "last": None}
    if resume_from is not None:
        state.update(load_trainer_state(resume_from, {"optimizer": optimizer}))
        print(f"online_dpo: resuming after round {state['round']} from {resume_from}")
    save_config(cfg, out_dir / "config.yaml")
    logger = MetricsLogger(out_dir, cfg.tensorboard, None, to_dict(cfg), state["round"])
    print(f"online_dpo: {len(prompts)} prompts, {cfg.rounds} rounds x {cfg.prompts_per_round} prompts x {cfg.k} "
          f"samples, pairs {cfg.pairs}, beta {cfg.beta}")

    pad_id = tokenizer.pad_token_id
    progress = progress_bar(cfg.rounds, "online_dpo", state["round"])
    guard = NonFiniteGuard("online_dpo", out_dir)
    while state["round"] < cfg.rounds:
        round_index = state["round"]
        start = time.perf_counter()
        round_prompts = step_prompts(prompts, round_index, cfg.prompts_per_round, cfg.seed)
        result = sample_round(model, round_prompts, cfg.k, cfg, cfg.seed * 1_000_003 + round_index, tokenizer)
        sampled = time.perf_counter()

        # score, rank, pair; the log-probs of every sample under both models (the KL, and the reference's for DPO)
        prompt_list = [prompt for prompt, _ in round_prompts]
        scores = source_scores(cfg, scorers, [p for p in prompt_list for _ in range(cfg.k)], result, device, amp_dtype)
        if state["reward_mean"] is None:  # the starting policy's samples set the scale, as PPO's SFT samples do
            state["reward_mean"], state["reward_std"] = normalisation(cfg, scores["raw"])
        combined = combined_scores(scores, cfg, state["reward_mean"], state["reward_std"])
        items = sample_items(prompt_list, result, cfg.k)
        ref_logprobs = summed_logprobs(reference, items, pad_id, device, amp_dtype, cfg.batch_prompts)
        policy_logprobs = summed_logprobs(model, items, pad_id, device, amp_dtype, cfg.batch_prompts)
        groups = []
        for p, item in enumerate(items):
            order = ranked_group(combined[p * cfg.k:(p + 1) * cfg.k].tolist(), cfg.pairs)
            if order:
                groups.append((EncodedComparison([item.sequences[i] for i in order], item.comparison, item.prompt_len),
                               ref_logprobs[p][order]))
        scored = time.perf_counter()

        record = sample_metrics(scores, combined, result, sampled - start)
        record["samples/kl"] = (torch.cat(policy_logprobs) - torch.cat(ref_logprobs)).mean().item()
        record["pairs/prompts"] = len(groups)
        record["pairs/count"] = sum(pair_count(len(item.sequences), loss_settings(cfg).pairs) for item, _ in groups)
        if groups:
            record.update(train_round(model, groups, optimizer, guard, cfg, round_index, pad_id, device, amp_dtype))
        trained = time.perf_counter()
        record.update({"time/sample_s": sampled - start, "time/score_s": scored - sampled,
                       "time/train_s": trained - scored, "time/round_s": trained - start})
        state["round"] = round_index + 1
        state["first"] = state["first"] or record
        state["last"] = record
        logger.log(state["round"], record)
        progress.update(1)
        progress.set_postfix(reward=f"{record['samples/reward']:.3f}", kl=f"{record['samples/kl']:.2f}",
                             **({"gold": f"{record['samples/gold_score']:.3f}"} if scores["gold"] is not None else {}))
        save_checkpoint(out_dir, state["round"], model, tokenizer, {"optimizer": optimizer},
                        state, cfg.keep_last)
    progress.close()
    logger.close()
    return save_final(out_dir, model, tokenizer, cfg, state, "online-dpo")
