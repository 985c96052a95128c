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
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Literal

import torch

from chatforge.config import opt
from chatforge.data.formats import Comparison
from chatforge.errors import ChatforgeError
from chatforge.models.io import check_model_dir, check_same_tokenizer, load_causal_lm, load_tokenizer
from chatforge.reward_fn import as_messages
from chatforge.rollouts import (Rounds, SamplingConfig, check_sampling_config, end_round, finish, optimizer_step,
                                sample_and_score, start_rounds)
from chatforge.stages.dpo import batch_logprobs, check_loss_fields, pair_count, pair_loss, summed_logprobs
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
        check_loss_fields(self, "online_dpo")


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


def train_round(rounds: Rounds, groups: list) -> dict:
    """`epochs` passes of DPO steps over the round's (item, reference log-probs) groups; pair-weighted means."""
    cfg, model = rounds.cfg, rounds.model
    settings = loss_settings(cfg)
    totals = {"loss": 0.0, "accuracy": 0.0, "margin": 0.0, "chosen_logprobs": 0.0, "rejected_logprobs": 0.0}
    pairs, steps = 0, 0
    model.train()
    for epoch in range(cfg.epochs):
        order = list(range(len(groups)))
        random.Random(cfg.seed * 1_000_003 + rounds.state["round"] * 1000 + epoch).shuffle(order)
        for first in range(0, len(order), cfg.batch_prompts):
            batch = [groups[i] for i in order[first:first + cfg.batch_prompts]]
            policy, counts = batch_logprobs(model, [item for item, _ in batch], rounds.tokenizer.pad_token_id,
                                            rounds.device, rounds.amp_dtype)
            reference = torch.cat([ref for _, ref in batch]).to(rounds.device)
            loss, stats = pair_loss(settings, policy, counts, reference, [len(item.sequences) for item, _ in batch])
            loss.backward()
            if optimizer_step(rounds, loss.item()):
                steps += 1
                stats["loss"] = loss.item()
                for key in totals:
                    totals[key] += stats[key] * stats["pairs"]
                pairs += stats["pairs"]
    model.eval()
    return {**{f"train/{key}": value / max(pairs, 1) for key, value in totals.items()}, "train/steps": steps}


def run(cfg: Config) -> Path:
    """Train the policy by DPO on ranked pairs of its own samples, round after round; return the final folder."""
    def check_reference(tokenizer):
        if cfg.reference:
            check_same_tokenizer(tokenizer, cfg.policy, load_tokenizer(cfg.reference), cfg.reference, "reference")

    rounds = start_rounds(cfg, "online_dpo", check_reference)  # every input checked before anything is written
    reference = load_causal_lm(cfg.reference or cfg.policy, device=rounds.device).requires_grad_(False).eval()
    pad_id, device, amp_dtype = rounds.tokenizer.pad_token_id, rounds.device, rounds.amp_dtype
    print(f"online_dpo: {len(rounds.prompts)} prompts, {cfg.rounds} rounds x {cfg.prompts_per_round} prompts x "
          f"{cfg.k} samples, pairs {cfg.pairs}, beta {cfg.beta}")
    while rounds.state["round"] < cfg.rounds:
        samples = sample_and_score(rounds, cfg.k)
        # every sample's log-probs under both models: the KL on the samples, and the reference's for the loss
        items = sample_items(samples.prompts[::cfg.k], samples.result, cfg.k)
        ref_logprobs = summed_logprobs(reference, items, pad_id, device, amp_dtype, cfg.batch_prompts)
        policy_logprobs = summed_logprobs(rounds.model, items, pad_id, device, amp_dtype, cfg.batch_prompts)
        groups = []
        for p, item in enumerate(items):
            order = ranked_group(samples.combined[p * cfg.k:(p + 1) * cfg.k].tolist(), cfg.pairs)
            if order:
                groups.append((EncodedComparison([item.sequences[i] for i in order], item.comparison, item.prompt_len),
                               ref_logprobs[p][order]))
        record = samples.record
        record["samples/kl"] = (torch.cat(policy_logprobs) - torch.cat(ref_logprobs)).mean().item()
        record["pairs/prompts"] = len(groups)
        record["pairs/count"] = sum(pair_count(len(item.sequences), loss_settings(cfg).pairs) for item, _ in groups)
        if groups:
            record.update(train_round(rounds, groups))
        end_round(rounds, samples, kl=f"{record['samples/kl']:.2f}")
    return finish(rounds, "online-dpo")
