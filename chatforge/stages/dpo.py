"""Direct preference optimisation: train the policy on ranked comparisons, no reward model, no sampling.

The loss (Rafailov et al. 2023) pushes the policy's log-ratio to a frozen reference (the starting model) up on
each pair's chosen response and down on its rejected one: -log sigmoid(beta ((pc - rc) - (pr - rr))), with pc, pr
the policy's summed log-probs of the chosen and rejected response tokens (end-of-turn included) and rc, rr the
reference's. loss_type=ipo uses Azar et al.'s (h - 1/(2 beta))^2 on MEAN log-probs per token instead;
label_smoothing > 0 is conservative DPO. A K-wise ranking gives all its C(K,2) pairs (pairs=all, as the RM
reads it) or best against each other response (pairs=best_vs_rest); a step takes batch_prompts comparisons and
averages over all their pairs. The reference's log-probs are computed once before training, with the starting
model, and kept in memory: the reference is never held during training, and a resumed run recomputes them.

    out_dir/final/          the trained policy: a plain HF causal-LM folder (LoRA merged) with a model card
    out_dir/summary.json    loss, implicit-reward accuracy and margin on the training and validation pairs
    out_dir/metrics.jsonl   per step: loss, reward accuracy and margin, chosen / rejected log-probs, KL, lr
    out_dir/checkpoints/    resume points (each epoch's end, and every save_every steps; with LoRA the merged
                            weights, so a resumed LoRA run starts fresh adapters on them)
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Literal

import torch

from chatforge import distributed as dist
from chatforge.checkpoint import gather_rng_states, latest_checkpoint, load_trainer_state, save_checkpoint
from chatforge.config import opt, save_config, to_dict
from chatforge.data.formats import nothing_left, read_comparisons
from chatforge.errors import ChatforgeError
from chatforge.generation import context_length
from chatforge.guards import NonFiniteGuard
from chatforge.losses import dpo_loss
from chatforge.metrics import MetricsLogger, progress_bar
from chatforge.models.card import model_card
from chatforge.models.io import check_tokenizer_fits, load_causal_lm, save_hf_folder
from chatforge.models.scoring import takes_logits_to_keep, token_logprobs, unwrapped
from chatforge.models.templates import load_chat_tokenizer
from chatforge.models.trainable import configure_trainable, plain_model
from chatforge.optim import build_optimizer, warmup_cosine
from chatforge.runtime import autocast, enable_gradient_checkpointing, start_run
from chatforge.stages.rm import EncodedComparison, batch_tensors, check_comparison_run, encode_comparisons


@dataclass
class Config:
    model: str = opt("", "SFT model folder: the policy starts from it and it is the frozen reference")
    train_data: list[str] = opt([], "comparison files/folders (.jsonl, .parquet, .csv, datasets folder): K-wise "
                                    "rankings, chosen/rejected pairs (TRL too) or HH")
    val_data: list[str] = opt([], "held-out comparisons: loss and implicit-reward accuracy each epoch")
    format: Literal["auto", "chatforge", "trl", "hh"] = opt(
        "auto", "record shapes to read: auto (each record's shape found by its fields) or one format's shapes "
                "(docs/data-formats.md)")
    fields: dict = opt({}, "rename the data's fields: fields.chosen=better reads the field (or CSV column) "
                           "'better' as 'chosen'")
    out_dir: str = opt("runs/dpo", "run folder")
    max_len: int = opt(0, "longest prompt + response in tokens (0 = the model's context)")
    too_long: Literal["truncate_prompt", "drop"] = opt(
        "truncate_prompt", "a comparison too long for max_len: cut the prompt's start, or drop it")
    pairs: Literal["all", "best_vs_rest"] = opt(
        "all", "pairs of a K-wise ranking: all C(K,2) (every order the labeler gave), or the best against each other")
    loss_type: Literal["sigmoid", "ipo"] = opt(
        "sigmoid", "sigmoid: DPO on summed log-probs; ipo: (h - 1/(2 beta))^2 on mean log-probs per token")
    beta: float = opt(0.1, "strength of the pull to the reference (DPO paper: 0.1; smaller lets the policy move further)")
    label_smoothing: float = opt(0.0, "conservative DPO: the share of labels taken to be flipped (sigmoid only)")
    epochs: int = opt(1, "passes over the comparisons")
    batch_prompts: int = opt(8, "comparisons (prompts, with all their pairs) per step, over all ranks")
    learning_rate: float = opt(1e-6, "peak learning rate (DPO paper: 1e-6)")
    min_lr_ratio: float = opt(0.1, "final learning rate as a share of the peak (cosine decay)")
    warmup_ratio: float = opt(0.1, "share of the steps spent warming up")
    weight_decay: float = opt(0.0, "AdamW weight decay on matrices")
    grad_clip: float = opt(1.0, "clip the gradient norm to this (0 = off)")
    freeze_layers: int = opt(0, "freeze the embeddings and this many lowest layers")
    lora_r: int = opt(0, "LoRA rank (0 = full fine-tuning); the saved model has the adapters merged")
    lora_alpha: float = opt(16.0, "LoRA alpha")
    lora_targets: str = opt("all-linear", "modules that get adapters (PEFT target_modules)")
    log_every: int = opt(10, "steps between metric lines")
    save_every: int = opt(0, "steps between mid-epoch resume checkpoints (0 = only at the end of each epoch)")
    keep_last: int = opt(2, "resume checkpoints kept (with 2, a damaged newest one falls back to the one before)")
    resume: bool = opt(True, "continue from the newest checkpoint in out_dir if there is one")
    seed: int = opt(0, "seed for data order")
    device: str = opt("auto", "auto (cuda if available), cpu, cuda, ...")
    dtype: str = opt("auto", "autocast dtype: auto (bf16 on GPU, fp32 on CPU), bf16, fp16, fp32")
    num_threads: int = opt(0, "CPU threads for torch (0 = torch's default)")
    gradient_checkpointing: bool = opt(False, "recompute activations in the backward pass: less memory, ~1/3 more compute")
    tensorboard: bool = opt(True, "also write TensorBoard event files")

    def validate(self):
        """Check everything that can be checked before a model is loaded."""
        check_comparison_run(self, "dpo")
        check_loss_fields(self, "dpo")


def check_loss_fields(cfg, stage: str) -> None:
    """The DPO loss's fields: beta > 0, label_smoothing in [0, 0.5) and only with loss_type sigmoid."""
    if not cfg.beta > 0:
        raise ChatforgeError(f"{stage}: field 'beta' must be > 0, got {cfg.beta}")
    if not 0.0 <= cfg.label_smoothing < 0.5:
        raise ChatforgeError(f"{stage}: field 'label_smoothing' must be in [0, 0.5), got {cfg.label_smoothing}")
    if cfg.label_smoothing and cfg.loss_type != "sigmoid":
        raise ChatforgeError(f"{stage}: field 'label_smoothing' applies to loss_type=sigmoid only")


def sequence_logprobs(model, ids: torch.Tensor, mask: torch.Tensor,
                      response_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed log-prob of each sequence's response tokens, their count), both (rows,); sequences right-padded.

    The LM head runs from the first position that predicts a response token in any row, and the log-softmax
    only where one is predicted: on a small model they are a large share of the step."""
    target = response_mask[:, 1:].bool()  # the logits at t predict token t + 1
    first = int(target.float().argmax(1).min())  # 0 when a row has no response token: then every position
    kwargs = {"logits_to_keep": ids.shape[1] - first} if takes_logits_to_keep(type(unwrapped(model))) else {}
    logits = model(input_ids=ids, attention_mask=mask, use_cache=False, **kwargs).logits
    logits = logits[:, logits.shape[1] - (ids.shape[1] - first):-1]  # (rows, seq - 1 - first, vocab)
    target = target[:, first:]
    per_token = token_logprobs(logits[target].float(), ids[:, first + 1:][target])  # (response tokens,)
    sums = torch.zeros(len(ids), dtype=per_token.dtype, device=ids.device).index_add(0, target.nonzero()[:, 0],
                                                                                      per_token)
    return sums, target.sum(1).to(per_token.dtype)


def pair_indices(sizes: list[int], pairs: str, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(chosen rows, rejected rows) into the flattened responses of groups of `sizes`, each ranked best first."""
    chosen, rejected, start = [], [], 0
    for k in sizes:
        if pairs == "all":
            winners, losers = torch.triu_indices(k, k, offset=1)
        else:
            winners, losers = torch.zeros(k - 1, dtype=torch.long), torch.arange(1, k)
        chosen.append(winners + start)
        rejected.append(losers + start)
        start += k
    return torch.cat(chosen).to(device), torch.cat(rejected).to(device)


def pair_count(k: int, pairs: str) -> int:
    """How many pairs a ranking of k responses gives."""
    return k * (k - 1) // 2 if pairs == "all" else k - 1


def batch_logprobs(forward, batch: list[EncodedComparison], pad_id: int, device, amp_dtype):
    """(summed log-probs, token counts) of every response of every comparison in `batch`, flattened in order."""
    ids, mask, response_mask = batch_tensors(batch, pad_id, device)
    with autocast(device, amp_dtype):
        return sequence_logprobs(forward, ids, mask, response_mask)


@torch.no_grad()
def reference_logprobs(model_dir, items: list[EncodedComparison], pad_id: int, device, amp_dtype,
                       batch_prompts: int) -> list[torch.Tensor]:
    """The reference model's summed log-probs of each comparison's responses, (K,) per comparison, on the CPU."""
    reference = load_causal_lm(model_dir).to(device).eval()
    cache = summed_logprobs(reference, items, pad_id, device, amp_dtype, batch_prompts)
    del reference
    return cache


@torch.no_grad()
def summed_logprobs(model, items: list[EncodedComparison], pad_id: int, device, amp_dtype,
                    batch_prompts: int) -> list[torch.Tensor]:
    """`model`'s summed log-probs of each comparison's responses, (K,) per comparison, on the CPU."""
    sums = []
    for start in range(0, len(items), batch_prompts):
        batch = items[start:start + batch_prompts]
        batch_sums, _ = batch_logprobs(model, batch, pad_id, device, amp_dtype)
        sums += list(batch_sums.cpu().split([len(item.sequences) for item in batch]))
    return sums


def pair_loss(cfg: Config, policy: torch.Tensor, counts: torch.Tensor, reference: torch.Tensor,
              sizes: list[int]) -> tuple[torch.Tensor, dict]:
    """The DPO loss over a batch's pairs and its statistics; policy, counts, reference are (sum of K,)."""
    chosen, rejected = pair_indices(sizes, cfg.pairs, policy.device)
    if cfg.loss_type == "ipo":  # IPO's log-probs are means per token: the square would punish length otherwise
        policy, reference = policy / counts.clamp(min=1), reference / counts.clamp(min=1)
    loss, stats = dpo_loss(policy[chosen], policy[rejected], reference[chosen], reference[rejected], cfg.beta,
                           cfg.loss_type, cfg.label_smoothing)
    stats.update({"chosen_logprobs": policy[chosen].detach().mean().item(),
                  "rejected_logprobs": policy[rejected].detach().mean().item(),
                  # KL estimate: log pi - log pi_ref of the chosen response (per response, or per token with ipo)
                  "kl": (policy[chosen] - reference[chosen]).detach().mean().item(),
                  "pairs": chosen.numel()})
    return loss, stats


@torch.no_grad()
def evaluate(model, items: list[EncodedComparison], reference: list[torch.Tensor], cfg: Config, pad_id: int,
             device, amp_dtype) -> dict:
    """Loss, implicit-reward accuracy and margin over every pair of `items` (means over pairs)."""
    model.eval()
    totals, pairs = {"loss": 0.0, "accuracy": 0.0, "margin": 0.0, "kl": 0.0}, 0
    for start in range(0, len(items), cfg.batch_prompts):
        batch = items[start:start + cfg.batch_prompts]
        policy, counts = batch_logprobs(model, batch, pad_id, device, amp_dtype)
        ref = torch.cat(reference[start:start + cfg.batch_prompts]).to(device)
        loss, stats = pair_loss(cfg, policy, counts, ref, [len(item.sequences) for item in batch])
        stats["loss"] = loss.item()
        for key in totals:
            totals[key] += stats[key] * stats["pairs"]
        pairs += stats["pairs"]
    model.train()
    return {**{key: value / max(pairs, 1) for key, value in totals.items()}, "pairs": pairs}


def pair_means(step_stats: dict, weight: float) -> dict:
    """The step's statistics as means over the pairs of all ranks (a rank with weight 0 ran a stand-in)."""
    keys = ("accuracy", "margin", "chosen_logprobs", "rejected_logprobs", "kl")
    pairs = step_stats["pairs"] if weight else 0
    sums = dist.all_reduce_sum({**{key: step_stats[key] * pairs for key in keys}, "pairs": pairs})
    return {key: sums[key] / max(sums["pairs"], 1) for key in keys}


def save_resume_point(out_dir, model, tokenizer, stateful: dict, state: dict, keep_last: int) -> None:
    """A checkpoint of the (merged) weights, optimizer, scheduler, data position and RNG states."""
    dist.on_main(save_checkpoint, out_dir, state["step"], plain_model(model), tokenizer, stateful,
                 {k: v for k, v in state.items() if k != "step"}, keep_last, rng_states=gather_rng_states())


def run(cfg: Config) -> Path:
    """Train the policy by DPO on ranked comparisons; return the final folder."""
    out_dir, device, amp_dtype = start_run(cfg)
    tokenizer = load_chat_tokenizer(cfg.model)
    check_tokenizer_fits(tokenizer, cfg.model)
    pad_id = tokenizer.pad_token_id

    comparisons, stats = read_comparisons(cfg.train_data, cfg.format, cfg.fields)
    max_len = cfg.max_len or context_length_of(cfg.model)
    train = encode_comparisons(comparisons, tokenizer, max_len, cfg.too_long, stats)
    print(f"dpo: train: {stats.summary()}")
    val = []
    if cfg.val_data:
        val_comparisons, val_stats = read_comparisons(cfg.val_data, cfg.format, cfg.fields)
        val = encode_comparisons(val_comparisons, tokenizer, max_len, cfg.too_long, val_stats)
        print(f"dpo: val: {val_stats.summary()}")
    if not train:
        raise nothing_left("dpo", "training comparison", cfg.train_data, stats, max_len)

    # the reference is the starting model: its log-probs once, then it is freed (a resumed run recomputes them)
    ref_train = reference_logprobs(cfg.model, train, pad_id, device, amp_dtype, cfg.batch_prompts)
    ref_val = reference_logprobs(cfg.model, val, pad_id, device, amp_dtype, cfg.batch_prompts) if val else []

    resume_from = latest_checkpoint(out_dir) if cfg.resume else None
    model = load_causal_lm(resume_from or cfg.model)
    model = configure_trainable(model, cfg.freeze_layers, cfg.lora_r, cfg.lora_alpha, 0.0, cfg.lora_targets)
    model.to(device).train()
    if cfg.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    trained = dist.wrap(model)  # DDP under torchrun, else the model itself

    steps_per_epoch = math.ceil(len(train) / cfg.batch_prompts)
    total_steps = steps_per_epoch * cfg.epochs
    optimizer = build_optimizer(model, cfg.learning_rate, cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, warmup_cosine(max(1, int(cfg.warmup_ratio * total_steps)), total_steps, cfg.min_lr_ratio))
    # epoch_rows: comparisons of the current epoch already consumed, the data position of a mid-epoch resume
    state = {"step": 0, "epoch": 0, "epoch_rows": 0}
    stateful = {"optimizer": optimizer, "scheduler": scheduler}
    if resume_from is not None:
        state.update(load_trainer_state(resume_from, stateful))
        print(f"dpo: resuming at step {state['step']} (epoch {state['epoch'] + 1}) from {resume_from}")
    if dist.is_main():
        save_config(cfg, out_dir / "config.yaml")  # only now: bad inputs above leave an earlier run's files as they were
    logger = MetricsLogger(out_dir, cfg.tensorboard, None, to_dict(cfg), state["step"])
    print(f"dpo: {len(train)} comparisons ({sum(len(t.sequences) for t in train)} responses), "
          f"{steps_per_epoch} steps/epoch, {cfg.epochs} epochs")

    progress = progress_bar(total_steps, "dpo", state["step"])
    guard = NonFiniteGuard("dpo", out_dir)
    while state["epoch"] < cfg.epochs:
        epoch = state["epoch"]
        order = list(range(len(train)))
        random.Random(cfg.seed * 1000 + epoch).shuffle(order)
        for first in range(state["epoch_rows"], len(order), cfg.batch_prompts):
            state["epoch_rows"] = first + cfg.batch_prompts
            # under torchrun each rank takes its share of the comparisons, its loss weighted by its share of the
            # pairs, so that the ranks' average gradient is the one of the mean over all the step's pairs
            rows, weight = dist.share(order[first:first + cfg.batch_prompts],
                                      count=lambda i: pair_count(len(train[i].sequences), cfg.pairs))
            batch = [train[i] for i in rows]
            policy, counts = batch_logprobs(trained, batch, pad_id, device, amp_dtype)  # (sum of K,) each
            reference = torch.cat([ref_train[i] for i in rows]).to(device)
            loss, step_stats = pair_loss(cfg, policy, counts, reference, [len(item.sequences) for item in batch])
            (loss * weight).backward()
            loss = dist.all_reduce_mean(loss.detach() * weight)  # the whole batch's loss, the same on every rank
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip or float("inf"))
            if not guard.step_ok(state["step"], loss.item(), grad_norm):
                optimizer.zero_grad(set_to_none=True)  # skip a non-finite step rather than poison the weights
                continue
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            state["step"] += 1
            progress.update(1)
            if state["step"] % cfg.log_every == 0:
                numbers = pair_means(step_stats, weight)
                logger.log(state["step"], {"train/loss": loss.item(), "train/lr": scheduler.get_last_lr()[0],
                                           "train/grad_norm": float(grad_norm),
                                           **{f"train/{key}": value for key, value in numbers.items()}})
                progress.set_postfix(loss=f"{loss.item():.3f}", acc=f"{numbers['accuracy']:.2f}")
            if cfg.save_every and state["step"] % cfg.save_every == 0 and state["epoch_rows"] < len(order):
                save_resume_point(out_dir, model, tokenizer, stateful, state, cfg.keep_last)
        if val:
            result = evaluate(model, val, ref_val, cfg, pad_id, device, amp_dtype)
            logger.log(state["step"], {f"val/{key}": value for key, value in result.items() if key != "pairs"})
            progress.write(f"dpo: epoch {epoch + 1}: val loss {result['loss']:.4f}, "
                           f"reward accuracy {result['accuracy']:.4f}")
        state["epoch"], state["epoch_rows"] = epoch + 1, 0
        save_resume_point(out_dir, model, tokenizer, stateful, state, cfg.keep_last)
    progress.close()
    logger.close()

    base = plain_model(model)
    summary = {"train_comparisons": len(train), "steps": state["step"],
               "train": evaluate(base, train, ref_train, cfg, pad_id, device, amp_dtype),
               "val": evaluate(base, val, ref_val, cfg, pad_id, device, amp_dtype) if val else None}
    final = out_dir / "final"
    dist.on_main((out_dir / "summary.json").write_text, json.dumps(summary, indent=1))
    numbers = {f"{split}_{key}": value for split in ("train", "val") for key, value in (summary[split] or {}).items()}
    card = model_card("dpo", tokenizer, base_model=cfg.model, data=cfg.train_data + cfg.val_data, folder=str(final),
                      metrics={"beta": cfg.beta, **numbers})
    dist.on_main(save_hf_folder, base, tokenizer, final, card=card)
    print(f"dpo: train reward accuracy {summary['train']['accuracy']:.4f}"
          + (f", val {summary['val']['accuracy']:.4f}" if val else "") + f" -> {final}")
    return final


def context_length_of(model_dir) -> int:
    """The model's context from its config.json (no weights loaded), or 2048 when it names none."""
    from transformers import AutoConfig

    return context_length(SimpleNamespace(config=AutoConfig.from_pretrained(model_dir))) or 2048
