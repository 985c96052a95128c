"""Stage 4: train a reward model on ranked comparisons (K = 2..9 responses per prompt).

The SFT model's unembedding is replaced by a scalar head read at the last token. All C(K,2) pairs of
a prompt go in one batch, so each response is scored once per step (InstructGPT's trick against
overfitting to repeated responses), with the loss -1/C(K,2) * E[log sigmoid(r_w - r_l - margin)].
After training, `config.reward_bias` is set so the rewards of the training responses (samples of the
SFT policy in the InstructGPT recipe) have mean 0. With `likelihood_reward` the reward also counts
w x the response's mean log-likelihood under the model's own (tied) LM head, w learned with the head,
and `lm_coef` adds the LM loss on each comparison's best response, which keeps that head a language model.

    out_dir/final/          the reward model (AutoModelForSequenceClassification, one label)
    out_dir/summary.json    pairwise accuracy (overall, per K, per labeler), reward mean/std, gold agreement
                            (per prompt kind, and on pairs that differ in correctness vs in form only)
    out_dir/metrics.jsonl   loss, accuracy, lr per step (and lm_loss, the likelihood weight)
    out_dir/checkpoints/    resume points (each epoch's end, and every save_every steps; with LoRA the
                            merged weights, so a resumed LoRA run starts fresh adapters on them)
"""

from __future__ import annotations

import json
import math
import random
import statistics
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from chatforge import distributed as dist
from chatforge.checkpoint import gather_rng_states, latest_checkpoint, load_trainer_state, save_checkpoint
from chatforge.config import opt, require_positive, save_config, to_dict
from chatforge.data.chat import chat_prompt_ids
from chatforge.data.formats import Comparison, data_files, fit_to_context, nothing_left, read_comparisons
from chatforge.data.shapes import COMPARISON_SHAPES, check_fields
from chatforge.errors import ChatforgeError
from chatforge.generation import context_length
from chatforge.guards import NonFiniteGuard
from chatforge.losses import pairwise_accuracy, ranking_loss
from chatforge.metrics import MetricsLogger, progress_bar
from chatforge.models.card import model_card
from chatforge.models.io import check_model_dir, check_tokenizer_fits, save_hf_folder
from chatforge.models.reward import (build_reward_model, chat_ids, check_tied_embeddings, head_and_likelihood,
                                     lm_weight, load_reward_model, pad_right, sequence_rewards)
from chatforge.models.templates import load_chat_tokenizer
from chatforge.models.trainable import configure_trainable, plain_model
from chatforge.optim import build_optimizer, warmup_cosine
from chatforge.runtime import autocast, enable_gradient_checkpointing, start_run


@dataclass
class Config:
    model: str = opt("", "SFT model folder the reward model starts from")
    train_data: list[str] = opt([], "comparison files/folders (.jsonl, .parquet, .csv, datasets folder): K-wise "
                                    "rankings, chosen/rejected pairs (TRL too) or HH")
    val_data: list[str] = opt([], "held-out comparisons for pairwise accuracy")
    format: Literal["auto", "chatforge", "trl", "hh"] = opt(
        "auto", "record shapes to read: auto (each record's shape found by its fields) or one format's shapes "
                "(docs/data-formats.md)")
    fields: dict = opt({}, "rename the data's fields: fields.chosen=better reads the field (or CSV column) "
                           "'better' as 'chosen'")
    holdout_labelers: list[str] = opt([], "labelers whose comparisons never train; they are evaluated apart")
    out_dir: str = opt("runs/rm", "run folder")
    max_len: int = opt(0, "longest prompt + response in tokens (0 = the model's context)")
    too_long: Literal["truncate_prompt", "drop"] = opt(
        "truncate_prompt", "a comparison too long for max_len: cut the prompt's start, or drop it")
    epochs: int = opt(1, "passes over the comparisons (InstructGPT: 1; more overfits)")
    batch_prompts: int = opt(8, "comparisons (prompts, with all their K responses) per step, over all ranks")
    learning_rate: float = opt(1e-4, "peak learning rate")
    min_lr_ratio: float = opt(0.1, "final learning rate as a share of the peak (cosine decay)")
    warmup_ratio: float = opt(0.05, "share of the steps spent warming up")
    weight_decay: float = opt(0.0, "AdamW weight decay on matrices")
    grad_clip: float = opt(1.0, "clip the gradient norm to this (0 = off)")
    margin: float = opt(0.0, "margin in the ranking loss: log sigmoid(r_w - r_l - margin)")
    likelihood_reward: bool = opt(False, "add w x the response's mean log-likelihood under the model's own LM head "
                                         "(tied embeddings) to the reward, w learned with the head: the SFT model's "
                                         "knowledge (a wrong fact is unlikely) becomes part of the reward; use it "
                                         "with lm_coef > 0, which keeps that LM head a language model")
    likelihood_learning_rate: float = opt(0.05, "peak learning rate of that weight w (one scalar: it needs a "
                                                "larger step than the network's weights to reach its value)")
    lm_coef: float = opt(0.0, "weight of the LM loss on each comparison's best response, through the tied "
                              "embeddings (keeps the SFT model's knowledge in the backbone; 0 = off)")
    freeze_layers: int = opt(0, "freeze the embeddings and this many lowest layers")
    lora_r: int = opt(0, "LoRA rank (0 = full fine-tuning); the saved model has the adapters merged")
    lora_alpha: float = opt(16.0, "LoRA alpha")
    lora_targets: str = opt("all-linear", "modules that get adapters (PEFT target_modules)")
    gold_world: str = opt("", "built-in world folder: also report agreement with the gold scorer")
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
        check_comparison_run(self, "rm")


def check_comparison_run(cfg, stage: str) -> None:
    """The checks a stage trained on comparisons (rm, dpo) makes of its model, data files, field mapping and
    batch before anything loads."""
    if not cfg.model:
        raise ChatforgeError(f"{stage}: field 'model' is empty; give the SFT model folder")
    check_model_dir(cfg.model)
    if not cfg.train_data:
        raise ChatforgeError(f"{stage}: field 'train_data' is empty; give comparison files")
    data_files(cfg.train_data)
    if cfg.val_data:
        data_files(cfg.val_data)
    check_fields(cfg.fields, COMPARISON_SHAPES, stage)
    require_positive(cfg, stage, ("epochs", "batch_prompts", "log_every"))
    dist.check_divisible(stage, "batch_prompts", cfg.batch_prompts)


@dataclass
class EncodedComparison:
    """A comparison as token ids: one sequence per response, best first."""

    sequences: list[list[int]]
    comparison: Comparison
    prompt_len: int = 0  # tokens before the response in every sequence (prompt + assistant header)


def encode_comparisons(comparisons, tokenizer, max_len: int, too_long: str, stats) -> list[EncodedComparison]:
    """Tokenize prompt + each response with the chat template, applying the length rule."""
    encoded = []
    for comparison in comparisons:
        sequences = [chat_ids(tokenizer, comparison.prompt, r) for r in comparison.responses]
        prompt_len = len(chat_prompt_ids(tokenizer, comparison.prompt))  # prompt + assistant header
        fit = fit_to_context(prompt_len, [len(s) - prompt_len for s in sequences], max_len, too_long)
        if not stats.count_fit(fit):
            continue
        cut = prompt_len - fit.prompt_keep  # the same prompt tokens go from every response's sequence
        encoded.append(EncodedComparison([s[cut:] for s in sequences], comparison, fit.prompt_keep))
    return encoded


def batch_tensors(batch: list[EncodedComparison], pad_id: int, device) -> tuple[torch.Tensor, ...]:
    """(input_ids, attention_mask, response_mask) of every response of every comparison, flattened in order,
    each (sum of K, longest); response_mask is 1 on the response tokens (its end-of-turn included)."""
    ids, mask = pad_right([s for item in batch for s in item.sequences], pad_id, device)
    response_mask, row = mask.clone(), 0
    for item in batch:
        response_mask[row:row + len(item.sequences), :item.prompt_len] = 0
        row += len(item.sequences)
    return ids, mask, response_mask


def batch_rewards(forward, batch: list[EncodedComparison], pad_id: int, device, amp_dtype,
                  likelihood_weight: torch.Tensor | None = None, lm_loss: bool = False):
    """(rewards of every response in the batch (sum of K,), LM loss on each comparison's best response or None).

    forward: sequence_rewards bound to the model (or its DDP wrapper, dist.wrap) when neither the likelihood
    weight nor the LM loss is used, else head_and_likelihood bound the same way."""
    ids, mask, response_mask = batch_tensors(batch, pad_id, device)
    with autocast(device, amp_dtype):
        if likelihood_weight is None and not lm_loss:
            return forward(ids, mask), None
        rewards, likelihood = forward(ids, mask, response_mask)  # (sum of K,) each
    if likelihood_weight is not None:
        rewards = rewards + likelihood_weight * likelihood
    best_rows = torch.tensor([0] + [len(item.sequences) for item in batch[:-1]], device=device).cumsum(0)
    return rewards, -likelihood[best_rows].mean() if lm_loss else None


@torch.no_grad()
def evaluate(model, items: list[EncodedComparison], pad_id: int, device, amp_dtype, batch_prompts: int,
             scorer=None) -> dict:
    """Pairwise accuracy overall, per K and per labeler; reward mean/std; agreement with the gold scorer."""
    model.eval()
    correct, total = 0, 0
    by_k, by_labeler, by_kind, by_contrast = (defaultdict(lambda: [0, 0]) for _ in range(4))
    all_rewards, gold_agree, gold_pairs, gold_as_rm = [], 0, 0, 0.0
    for start in range(0, len(items), batch_prompts):
        batch = items[start:start + batch_prompts]
        ids, mask, response_mask = batch_tensors(batch, pad_id, device)
        with autocast(device, amp_dtype):
            rewards = sequence_rewards(model, ids, mask, response_mask)
        offset = 0
        for item in batch:
            k = len(item.sequences)
            group = rewards[offset:offset + k]
            offset += k
            ok, n = pairwise_accuracy(group, [k])
            correct, total = correct + ok, total + n
            for bucket in (by_k[k], by_labeler[item.comparison.labeler or "unknown"]):
                bucket[0] += ok
                bucket[1] += n
            all_rewards += group.tolist()
            if scorer is not None:
                judged = [scorer.judge(item.comparison.prompt, r) for r in item.comparison.responses]
                gold = [j["score"] for j in judged]
                for i in range(k):
                    for j in range(i + 1, k):
                        # the gold scorer itself as the RM, against the labels (ties half): the ceiling
                        gold_as_rm += 1.0 if gold[i] > gold[j] else 0.5 if gold[i] == gold[j] else 0.0
                        if gold[i] != gold[j]:  # gold ties say nothing about order
                            agree = (gold[i] > gold[j]) == (group[i] > group[j]).item()
                            gold_pairs += 1
                            gold_agree += agree
                            # "correctness": the two answers differ in what they do (right vs wrong fact,
                            # refusal vs compliance); "form": same verdict, they differ in length, loops, cut-off
                            contrast = "form" if judged[i]["verdict"] == judged[j]["verdict"] else "correctness"
                            for bucket in (by_kind[judged[i]["kind"]], by_contrast[contrast]):
                                bucket[0] += agree
                                bucket[1] += 1
    model.train()
    result = {"accuracy": correct / max(total, 1), "pairs": total,
              "accuracy_by_k": {str(k): v[0] / v[1] for k, v in sorted(by_k.items())},
              "accuracy_by_labeler": {name: v[0] / v[1] for name, v in sorted(by_labeler.items())},
              "reward_mean": statistics.fmean(all_rewards) if all_rewards else math.nan,
              "reward_std": statistics.pstdev(all_rewards) if all_rewards else math.nan}
    if scorer is not None:
        result["gold_agreement"] = gold_agree / max(gold_pairs, 1)
        result["gold_ceiling"] = gold_as_rm / max(total, 1)
        result["gold_agreement_by_kind"] = {kind: v[0] / v[1] for kind, v in sorted(by_kind.items())}
        result["gold_agreement_by_contrast"] = {name: v[0] / v[1] for name, v in sorted(by_contrast.items())}
        result["gold_pairs_by_contrast"] = {name: v[1] for name, v in sorted(by_contrast.items())}
    return result


def store_likelihood_weight(model, likelihood_weight: torch.Tensor | None) -> None:
    """Write the learned likelihood weight into the model's config (reward_lm_weight), where the reward reads it."""
    if likelihood_weight is not None:
        model.config.reward_lm_weight = round(likelihood_weight.item(), 6)


def run(cfg: Config) -> Path:
    """Train the reward model, set its bias, evaluate it; return the final folder."""
    out_dir, device, amp_dtype = start_run(cfg)
    tokenizer = load_chat_tokenizer(cfg.model)
    check_tokenizer_fits(tokenizer, cfg.model)
    resume_from = latest_checkpoint(out_dir) if cfg.resume else None
    model = load_reward_model(resume_from) if resume_from else build_reward_model(cfg.model, tokenizer.pad_token_id)
    max_len = cfg.max_len or context_length(model) or 2048
    model = configure_trainable(model, cfg.freeze_layers, cfg.lora_r, cfg.lora_alpha, 0.0, cfg.lora_targets)
    model.to(device).train()
    if cfg.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    uses_lm = cfg.likelihood_reward or cfg.lm_coef > 0
    for field in ("likelihood_reward", "lm_coef"):
        if getattr(cfg, field):
            check_tied_embeddings(model, field)
    # the forward trained through (DDP under torchrun): rewards, or (head, response likelihood) when the LM is used
    trained = dist.wrap(model, forward=head_and_likelihood if uses_lm else sequence_rewards)
    # the likelihood weight lives in config.json (reward_lm_weight, read by sequence_rewards); a resumed run
    # finds the value it had reached there
    likelihood_weight = None
    if cfg.likelihood_reward:
        likelihood_weight = torch.tensor(lm_weight(model), device=device, requires_grad=True)

    comparisons, stats = read_comparisons(cfg.train_data, cfg.format, cfg.fields)
    held_out = [c for c in comparisons if c.labeler in cfg.holdout_labelers]
    train_comparisons = [c for c in comparisons if c.labeler not in cfg.holdout_labelers]
    train = encode_comparisons(train_comparisons, tokenizer, max_len, cfg.too_long, stats)
    kept_out = f"; {len(held_out)} by held-out labelers kept out" if held_out else ""
    print(f"rm: train: {stats.summary()}{kept_out}")
    val_comparisons = held_out
    if cfg.val_data:
        extra, val_stats = read_comparisons(cfg.val_data, cfg.format, cfg.fields)
        val_comparisons = extra + held_out
        print(f"rm: val: {val_stats.summary()}")
    else:
        val_stats = stats
    val = encode_comparisons(val_comparisons, tokenizer, max_len, cfg.too_long, val_stats)
    if not train:
        raise nothing_left("rm", "training comparison", cfg.train_data, stats, max_len, kept_out)

    steps_per_epoch = math.ceil(len(train) / cfg.batch_prompts)
    total_steps = steps_per_epoch * cfg.epochs
    optimizer = build_optimizer(model, cfg.learning_rate, cfg.weight_decay)
    if likelihood_weight is not None:
        optimizer.add_param_group({"params": [likelihood_weight], "lr": cfg.likelihood_learning_rate,
                                   "weight_decay": 0.0})
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, warmup_cosine(max(1, int(cfg.warmup_ratio * total_steps)), total_steps, cfg.min_lr_ratio))
    # epoch_rows: comparisons of the current epoch already consumed, the data position of a mid-epoch resume
    state = {"step": 0, "epoch": 0, "epoch_rows": 0}
    stateful = {"optimizer": optimizer, "scheduler": scheduler}
    if resume_from is not None:
        state.update(load_trainer_state(resume_from, stateful))
        print(f"rm: resuming at step {state['step']} (epoch {state['epoch'] + 1}) from {resume_from}")
    if dist.is_main():
        save_config(cfg, out_dir / "config.yaml")  # only now: bad inputs above leave an earlier run's files as they were
    logger = MetricsLogger(out_dir, cfg.tensorboard, None, to_dict(cfg), state["step"])
    pad_id = tokenizer.pad_token_id
    print(f"rm: {len(train)} comparisons ({sum(len(t.sequences) for t in train)} responses), "
          f"{steps_per_epoch} steps/epoch, {cfg.epochs} epochs")

    progress = progress_bar(total_steps, "rm", state["step"])
    guard = NonFiniteGuard("rm", out_dir)
    while state["epoch"] < cfg.epochs:
        epoch = state["epoch"]
        order = list(range(len(train)))
        random.Random(cfg.seed * 1000 + epoch).shuffle(order)
        for first in range(state["epoch_rows"], len(order), cfg.batch_prompts):
            state["epoch_rows"] = first + cfg.batch_prompts
            # under torchrun each rank takes its share of the comparisons; the weight makes the ranks' average
            # gradient the one of the mean over all of them
            batch, weight = dist.share([train[i] for i in order[first:first + cfg.batch_prompts]])
            sizes = [len(item.sequences) for item in batch]
            rewards, lm_loss = batch_rewards(trained, batch, pad_id, device, amp_dtype, likelihood_weight,
                                             cfg.lm_coef > 0)
            loss = ranking_loss(rewards, sizes, cfg.margin)
            if lm_loss is not None:
                loss = loss + cfg.lm_coef * lm_loss
            loss = loss * weight
            loss.backward()
            if likelihood_weight is not None:  # outside the model, so DDP does not average its gradient
                likelihood_weight.grad = dist.all_reduce_mean(likelihood_weight.grad)
            loss = dist.all_reduce_mean(loss.detach())  # the whole batch's loss, the same on every rank
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip or float("inf"))
            if not guard.step_ok(state["step"], loss.item(), grad_norm):
                optimizer.zero_grad(set_to_none=True)  # skip a non-finite step rather than poison the weights
                continue
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            state["step"] += 1
            step = state["step"]
            progress.update(1)
            if step % cfg.log_every == 0:
                ok, n = dist.all_reduce_sum(pairwise_accuracy(rewards.detach(), sizes) if weight else (0, 0))
                metrics = {"train/loss": loss.item(), "train/accuracy": ok / n,
                           "train/lr": scheduler.get_last_lr()[0], "train/grad_norm": float(grad_norm)}
                if lm_loss is not None:
                    metrics["train/lm_loss"] = dist.all_reduce_mean(lm_loss.detach()).item()
                if likelihood_weight is not None:
                    metrics["train/likelihood_weight"] = likelihood_weight.item()
                logger.log(step, metrics)
                progress.set_postfix(loss=f"{loss.item():.3f}", acc=f"{ok / n:.2f}")
            if cfg.save_every and step % cfg.save_every == 0 and state["epoch_rows"] < len(order):
                store_likelihood_weight(model, likelihood_weight)
                dist.on_main(save_checkpoint, out_dir, step, plain_model(model), tokenizer, stateful,
                             {k: v for k, v in state.items() if k != "step"}, cfg.keep_last,
                             rng_states=gather_rng_states())
        store_likelihood_weight(model, likelihood_weight)
        if val:
            result = evaluate(model, val, pad_id, device, amp_dtype, cfg.batch_prompts)
            logger.log(state["step"], {"val/accuracy": result["accuracy"]})
            progress.write(f"rm: epoch {epoch + 1}: val pairwise accuracy {result['accuracy']:.4f}")
        state["epoch"], state["epoch_rows"] = epoch + 1, 0
        dist.on_main(save_checkpoint, out_dir, state["step"], plain_model(model), tokenizer, stateful,
                     {k: v for k, v in state.items() if k != "step"}, cfg.keep_last,
                     rng_states=gather_rng_states())
    progress.close()
    step = state["step"]

    # the bias that centres the rewards of the training responses (SFT samples) at 0
    model.eval()
    base = plain_model(model)
    base.config.reward_bias = 0.0
    train_result = evaluate(base, train, pad_id, device, amp_dtype, cfg.batch_prompts)
    mean_reward = train_result["reward_mean"]
    base.config.reward_bias = -mean_reward
    # a constant shift changes no order and no spread: only the training mean moves, to 0
    train_result["reward_mean"] = 0.0
    scorer = None
    if cfg.gold_world:
        from chatforge.world.gold import GoldScorer

        scorer = GoldScorer.from_dir(cfg.gold_world)
    summary = {"train_comparisons": len(train), "reward_bias": -mean_reward, "reward_lm_weight": lm_weight(base),
               "val": evaluate(base, val, pad_id, device, amp_dtype, cfg.batch_prompts, scorer) if val else None,
               "train": train_result}
    if val:
        logger.log(step, {"val/accuracy": summary["val"]["accuracy"], "val/reward_mean": summary["val"]["reward_mean"],
                          "val/reward_std": summary["val"]["reward_std"]})
    logger.close()
    # every rank evaluated the same model on the same data above (no communication); rank 0 writes
    final = out_dir / "final"
    if dist.is_main():
        (out_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    val_numbers = {f"val_{key}": value for key, value in (summary["val"] or {}).items()
                   if isinstance(value, (int, float))}
    card = model_card("rm", tokenizer, base_model=cfg.model, data=cfg.train_data + cfg.val_data, folder=str(final),
                      metrics={"train_comparisons": len(train), "reward_bias": -mean_reward, **val_numbers},
                      reward_model=True)
    dist.on_main(save_hf_folder, base, tokenizer, final, card=card)
    if val:
        line = f"rm: val pairwise accuracy {summary['val']['accuracy']:.4f} over {summary['val']['pairs']} pairs"
        if "gold_agreement" in summary["val"]:
            line += f", agreement with gold {summary['val']['gold_agreement']:.4f}"
        print(line)
    print(f"rm: reward bias {-mean_reward:+.4f} (mean 0 on the training responses) -> {final}")
    return final
