"""Stage 2: pretrain a decoder-only causal LM on a corpus by next-token prediction.

Builds a Llama-style model from a preset (or continues any local HF causal-LM folder), streams
the corpus through sequence packing, and trains with AdamW, warmup + cosine, gradient clipping and
accumulation (bf16 autocast and SDPA attention on GPU). Writes to out_dir:

    metrics.jsonl, tensorboard/     loss, lr, grad norm, tokens/s, val loss / perplexity
    checkpoints/step_N/             HF folders + trainer state; a rerun resumes from the newest
    final/                          the trained model, loadable by AutoModelForCausalLM as it is
"""

from __future__ import annotations

import itertools
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from chatforge import distributed as dist
from chatforge.checkpoint import gather_rng_states, latest_checkpoint, load_trainer_state, save_checkpoint
from chatforge.config import opt, require_positive, save_config, to_dict
from chatforge.data.corpus import corpus_files
from chatforge.data.packing import PackedBlocks, validation_batches
from chatforge.errors import ChatforgeError
from chatforge.guards import NonFiniteGuard
from chatforge.losses import IGNORE_INDEX, token_cross_entropy
from chatforge.metrics import MetricsLogger, progress_bar
from chatforge.models.card import model_card
from chatforge.models.io import check_model_dir, check_tokenizer_fits, load_causal_lm, load_tokenizer, save_hf_folder
from chatforge.models.presets import PRESETS, count_parameters, llama_config
from chatforge.optim import build_optimizer, warmup_cosine
from chatforge.runtime import autocast, enable_gradient_checkpointing, start_run


@dataclass
class Config:
    corpus: list[str] = opt([], "training corpus: files or folders of .jsonl / .txt / .parquet")
    val_corpus: list[str] = opt([], "held-out corpus for validation loss and perplexity (optional)")
    tokenizer: str = opt("", "tokenizer folder (default: the one inside init_from)")
    init_from: str = opt("", "continue from this HF causal-LM folder instead of a fresh preset model")
    model_preset: str = opt("tiny", f"architecture of a fresh model: one of {sorted(PRESETS)}")
    model_overrides: dict = opt({}, "LlamaConfig fields replacing the preset's, e.g. {num_hidden_layers: 2}")
    out_dir: str = opt("runs/pretrain", "run folder: metrics, checkpoints, final model")
    seq_len: int = opt(256, "tokens per training sequence (packed)")
    batch_size: int = opt(16, "sequences per micro-batch, over all ranks (under torchrun each of N takes 1/N)")
    grad_accum: int = opt(1, "micro-batches per optimizer step")
    max_steps: int = opt(1000, "optimizer steps")
    learning_rate: float = opt(3e-3, "peak learning rate")
    min_lr_ratio: float = opt(0.1, "final learning rate as a share of the peak (cosine decay)")
    warmup_steps: int = opt(50, "linear warmup steps")
    weight_decay: float = opt(0.1, "AdamW weight decay on matrices")
    beta1: float = opt(0.9, "AdamW beta1")
    beta2: float = opt(0.95, "AdamW beta2")
    grad_clip: float = opt(1.0, "clip the gradient norm to this (0 = off)")
    log_every: int = opt(10, "steps between metric lines")
    eval_every: int = opt(200, "steps between validation passes (0 = only at the end)")
    val_tokens: int = opt(65536, "held-out tokens per validation pass")
    save_every: int = opt(500, "steps between checkpoints (0 = only at the end)")
    keep_last: int = opt(2, "checkpoints kept on disk")
    resume: bool = opt(True, "continue from the newest checkpoint in out_dir if there is one")
    shuffle_buffer: int = opt(2048, "blocks in the shuffle buffer (bounded memory)")
    text_field: str = opt("text", "JSONL/parquet field holding a document's text")
    seed: int = opt(0, "seed for initialisation and data order")
    device: str = opt("auto", "auto (cuda if available), cpu, cuda, cuda:1, ...")
    dtype: str = opt("auto", "autocast dtype: auto (bf16 on GPU, fp32 on CPU), bf16, fp16, fp32")
    num_threads: int = opt(0, "CPU threads for torch (0 = torch's default)")
    gradient_checkpointing: bool = opt(False, "recompute activations in the backward pass: less memory, ~1/3 more compute")
    distributed_strategy: Literal["ddp", "fsdp"] = opt(
        "ddp", "under torchrun: ddp (a model copy per rank) or fsdp (FSDP2: weights, gradients, optimizer sharded)")
    tensorboard: bool = opt(True, "also write TensorBoard event files")
    wandb_project: str = opt("", "log to this Weights & Biases project too (needs wandb)")

    def validate(self):
        """Check everything that can be checked before a model is loaded."""
        if not self.corpus:
            raise ChatforgeError("pretrain: field 'corpus' is empty; give corpus=PATH")
        corpus_files(self.corpus)
        if self.val_corpus:
            corpus_files(self.val_corpus)
        if not self.tokenizer and not self.init_from:
            raise ChatforgeError("pretrain: set 'tokenizer' (a folder from `chatforge tokenizer`) or 'init_from'")
        if self.init_from:
            check_model_dir(self.init_from)
        elif self.model_preset not in PRESETS:
            raise ChatforgeError(f"pretrain: field 'model_preset' = '{self.model_preset}' is not one of "
                                 f"{sorted(PRESETS)}")
        require_positive(self, "pretrain", ("seq_len", "batch_size", "grad_accum", "max_steps", "log_every"))
        dist.check_divisible("pretrain", "batch_size", self.batch_size)
        dist.check_strategy(self.distributed_strategy, "pretrain")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ChatforgeError(f"pretrain: field 'min_lr_ratio' must be in [0, 1], got {self.min_lr_ratio}")


def build_model(cfg: Config, tokenizer):
    """A fresh preset model sized to the tokenizer, or the init_from model."""
    if cfg.init_from:
        model = load_causal_lm(cfg.init_from)
        context = getattr(model.config, "max_position_embeddings", None)
        if context is not None and cfg.seq_len > context:
            raise ChatforgeError(f"pretrain: seq_len {cfg.seq_len} exceeds the model's context {context} "
                                 f"({cfg.init_from}/config.json: max_position_embeddings)")
        return model
    from transformers import AutoModelForCausalLM

    config = llama_config(cfg.model_preset, vocab_size=len(tokenizer), max_position_embeddings=cfg.seq_len,
                          bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                          pad_token_id=tokenizer.pad_token_id, **cfg.model_overrides)
    return AutoModelForCausalLM.from_config(config, attn_implementation="sdpa")


def lm_loss(model, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy over the targets that are not IGNORE_INDEX."""
    logits = model(input_ids=inputs, use_cache=False).logits  # (batch, seq, vocab)
    return token_cross_entropy(logits, targets)


@torch.no_grad()
def evaluate(model, batches, device, amp_dtype) -> float:
    """Mean loss per held-out token (every real token counted once)."""
    model.eval()
    total, count = 0.0, 0
    for inputs, targets in dist.eval_shard(batches, model):  # under torchrun each rank scores its share
        inputs, targets = inputs.to(device), targets.to(device)
        n = int((targets != IGNORE_INDEX).sum())
        with autocast(device, amp_dtype):
            total += lm_loss(model, inputs, targets).item() * n
        count += n
    total, count = dist.eval_sum((total, count), model)
    model.train()
    return total / max(count, 1)


def run(cfg: Config) -> Path:
    """Train, checkpoint and save the final model; return the final model folder."""
    out_dir, device, amp_dtype = start_run(cfg)
    tokenizer = load_tokenizer(cfg.tokenizer or cfg.init_from)
    if cfg.init_from:
        check_tokenizer_fits(tokenizer, cfg.init_from, "init_from")

    resume_from = latest_checkpoint(out_dir) if cfg.resume else None
    if resume_from is not None:
        model = load_causal_lm(resume_from)
        print(f"pretrain: resuming from {resume_from}")
    else:
        model = build_model(cfg, tokenizer)
    model.to(device).train()
    if cfg.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    trained = dist.wrap(model, cfg.distributed_strategy)  # under torchrun DDP / FSDP2, else the model itself

    optimizer = build_optimizer(model, cfg.learning_rate, cfg.weight_decay, (cfg.beta1, cfg.beta2))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, warmup_cosine(cfg.warmup_steps, cfg.max_steps, cfg.min_lr_ratio))
    state = {"step": 0, "blocks_seen": 0, "tokens_seen": 0}
    if resume_from is not None:
        state.update(load_trainer_state(resume_from, dist.checkpoint_state(
            model, {"optimizer": optimizer, "scheduler": scheduler}, saving=False)))

    train_blocks = PackedBlocks(cfg.corpus, tokenizer, cfg.seq_len, cfg.text_field, cfg.shuffle_buffer, cfg.seed)
    batches = train_blocks.batches(cfg.batch_size, skip_blocks=state["blocks_seen"])
    # a bad record in the first shuffle buffer of text fails here, before anything in out_dir is written
    batches = itertools.chain([next(batches)], batches)
    val_batches = (validation_batches(cfg.val_corpus, tokenizer, cfg.seq_len, cfg.val_tokens, cfg.batch_size,
                                      cfg.text_field) if cfg.val_corpus else [])
    if dist.is_main():
        save_config(cfg, out_dir / "config.yaml")
    logger = MetricsLogger(out_dir, cfg.tensorboard, cfg.wandb_project or None, to_dict(cfg), state["step"])
    n_params = count_parameters(model)
    print(f"pretrain: {n_params / 1e6:.2f}M parameters, {len(tokenizer)} tokens vocabulary, device {device}"
          f"{', ' + str(amp_dtype).replace('torch.', '') + ' autocast' if amp_dtype else ''}")

    tokens_per_step = cfg.batch_size * cfg.grad_accum * cfg.seq_len
    guard, last_val = NonFiniteGuard("pretrain", out_dir), None
    window_start, window_tokens = time.perf_counter(), 0
    progress = progress_bar(cfg.max_steps, "pretrain", state["step"])
    while state["step"] < cfg.max_steps:
        step_loss = 0.0
        for micro in range(cfg.grad_accum):
            # every rank reads the same seeded stream and takes every world_size-th block of each batch
            block = dist.shard(next(batches)).to(device)  # (batch / world_size, seq_len + 1)
            with dist.accumulating(trained, last=micro == cfg.grad_accum - 1):
                with autocast(device, amp_dtype):
                    loss = lm_loss(trained, block[:, :-1], block[:, 1:]) / cfg.grad_accum
                loss.backward()
            step_loss += loss.item()
        step_loss = dist.all_reduce_mean(step_loss)  # the whole batch's loss, the same number on every rank
        state["blocks_seen"] += cfg.batch_size * cfg.grad_accum
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip or float("inf"))
        if not guard.step_ok(state["step"], step_loss, grad_norm):
            optimizer.zero_grad(set_to_none=True)  # a non-finite step would poison the weights: skip it
            continue
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        state["step"] += 1
        state["tokens_seen"] += tokens_per_step
        window_tokens += tokens_per_step
        step = state["step"]
        progress.update(1)

        if step % cfg.log_every == 0 or step == cfg.max_steps:
            elapsed = time.perf_counter() - window_start
            tokens_per_s = window_tokens / max(elapsed, 1e-9)
            window_start, window_tokens = time.perf_counter(), 0
            logger.log(step, {"train/loss": step_loss, "train/lr": scheduler.get_last_lr()[0],
                              "train/grad_norm": float(grad_norm), "train/tokens_per_s": tokens_per_s,
                              "train/tokens_seen": state["tokens_seen"]})
            progress.set_postfix(loss=f"{step_loss:.3f}", tok_s=f"{tokens_per_s:,.0f}")
        if val_batches and ((cfg.eval_every and step % cfg.eval_every == 0) or step == cfg.max_steps):
            last_val = evaluate(model, val_batches, device, amp_dtype)
            logger.log(step, {"val/loss": last_val, "val/ppl": math.exp(min(last_val, 50))})
            progress.write(f"step {step}: val loss {last_val:.4f} (ppl {math.exp(min(last_val, 50)):.2f})")
        if (cfg.save_every and step % cfg.save_every == 0) or step == cfg.max_steps:
            dist.on_main(save_checkpoint, out_dir, step, dist.saveable(model), tokenizer,
                         dist.checkpoint_state(model, {"optimizer": optimizer, "scheduler": scheduler}, saving=True),
                         {k: v for k, v in state.items() if k != "step"}, cfg.keep_last, rng_states=gather_rng_states())
    progress.close()
    if val_batches and last_val is None:  # resumed a finished run: still report its validation loss
        last_val = evaluate(model, val_batches, device, amp_dtype)
    logger.close()

    final = out_dir / "final"
    summary = {"step": state["step"], "tokens_seen": state["tokens_seen"], "parameters": n_params,
               "val_loss": last_val, "val_ppl": math.exp(min(last_val, 50)) if last_val is not None else None}
    if dist.is_main():
        (out_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    card = model_card("pretrain", tokenizer, base_model=cfg.init_from, data=cfg.corpus + cfg.val_corpus,
                      metrics=summary, folder=str(final))
    dist.on_main(save_hf_folder, dist.saveable(model), tokenizer, final, card=card)
    print(f"pretrain: done, {state['tokens_seen']:,} tokens seen -> {final}")
    return final
