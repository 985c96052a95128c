"""Stage 3: supervised fine-tuning on demonstrations (prompt -> response, or multi-turn chats).

The LM loss counts assistant tokens only (every assistant turn of a chat, its end-of-turn token
included). Several chats are packed into one sequence with position ids restarting per chat, so no
attention or loss crosses between them. Each epoch ends with the validation loss AND the score of
the model's own answers to held-out prompts (the built-in world's gold scorer, or a reward model).
`select_by` picks the checkpoint kept as `best/`: by default the best by that score, not by loss
(InstructGPT found SFT overfits on validation loss after one epoch while the answers keep getting
better, and picked by RM score). The demo picks by validation loss instead: its gold judge is the
evaluation's, and in world v2 an undertrained model that refuses everything can outscore a trained
one that imitates the demonstrations' flaws (docs/LOG.md, 2026-12-05).

    out_dir/metrics.jsonl, tensorboard/    loss, lr, tokens/s; per epoch val loss and answer score
    out_dir/checkpoints/step_N/            resume points (each epoch's end, and every save_every steps); with
                                           LoRA they hold the merged weights, so a resumed LoRA run starts
                                           fresh adapters on them
    out_dir/best/                          the selected model (LoRA merged): a plain HF folder
    out_dir/summary.json                   per-epoch numbers and the chosen epoch
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from chatforge import distributed as dist
from chatforge.checkpoint import gather_rng_states, latest_checkpoint, load_trainer_state, save_checkpoint
from chatforge.config import opt, require_positive, save_config, to_dict
from chatforge.data.chat import TokenizedChat, collate, fit_chat, pack, tokenize_chat
from chatforge.data.formats import data_files, nothing_left, read_demonstrations, read_prompts
from chatforge.data.shapes import DEMONSTRATION_SHAPES, check_fields
from chatforge.errors import ChatforgeError
from chatforge.eval.answers import chat_answers
from chatforge.eval.judges import load_judge
from chatforge.generation import SamplingParams, context_length
from chatforge.guards import NonFiniteGuard
from chatforge.losses import token_cross_entropy
from chatforge.metrics import MetricsLogger, progress_bar
from chatforge.models.card import model_card
from chatforge.models.io import check_model_dir, check_tokenizer_fits, load_causal_lm, save_hf_folder
from chatforge.models.templates import load_chat_tokenizer
from chatforge.models.trainable import configure_trainable, plain_model
from chatforge.optim import build_optimizer, warmup_cosine
from chatforge.runtime import autocast, enable_gradient_checkpointing, start_run


@dataclass
class Config:
    model: str = opt("", "pretrained model folder to start from (any HF causal LM)")
    train_data: list[str] = opt([], "demonstration files/folders (.jsonl, .parquet, .csv, datasets folder)")
    val_data: list[str] = opt([], "held-out demonstrations for the validation loss")
    format: Literal["auto", "chatforge", "trl", "alpaca", "sharegpt", "openai"] = opt(
        "auto", "record shapes to read: auto (each record's shape found by its fields) or one format's shapes "
                "(docs/data-formats.md)")
    fields: dict = opt({}, "rename the data's fields: fields.prompt=question reads the field (or CSV column) "
                           "'question' as 'prompt'")
    out_dir: str = opt("runs/sft", "run folder")
    max_len: int = opt(0, "longest training sequence in tokens (0 = the model's context)")
    too_long: Literal["truncate_prompt", "drop"] = opt(
        "truncate_prompt", "a chat longer than max_len: cut its start (keeping the last response whole) or drop it")
    packing: bool = opt(True, "pack several chats into one sequence (position ids restart per chat)")
    epochs: int = opt(4, "passes over the demonstrations (InstructGPT: 16)")
    batch_size: int = opt(8, "sequences per micro-batch, over all ranks (under torchrun each of N takes 1/N)")
    grad_accum: int = opt(1, "micro-batches per optimizer step")
    learning_rate: float = opt(1e-4, "peak learning rate")
    min_lr_ratio: float = opt(0.1, "final learning rate as a share of the peak (cosine decay)")
    warmup_ratio: float = opt(0.05, "share of the steps spent warming up")
    weight_decay: float = opt(0.0, "AdamW weight decay on matrices")
    grad_clip: float = opt(1.0, "clip the gradient norm to this (0 = off)")
    freeze_layers: int = opt(0, "freeze the embeddings and this many lowest layers")
    lora_r: int = opt(0, "LoRA rank (0 = full fine-tuning); the saved model has the adapters merged")
    lora_alpha: float = opt(16.0, "LoRA alpha")
    lora_dropout: float = opt(0.0, "LoRA dropout")
    lora_targets: str = opt("all-linear", "modules that get adapters (PEFT target_modules)")
    eval_prompts: str = opt("", 'JSONL of {"prompt": ...} whose answers are scored each epoch')
    eval_skip: int = opt(0, "skip the first N eval prompts (the demo scores those in its report card, so the choice "
                            "of epoch never sees them)")
    eval_max_prompts: int = opt(200, "score at most this many eval prompts (after the skipped ones)")
    gold_world: str = opt("", "built-in world folder: score answers with its gold scorer")
    reward_model: str = opt("", "reward-model folder: score answers with it (when there is no gold_world)")
    eval_max_new_tokens: int = opt(48, "longest answer generated for scoring")
    eval_temperature: float = opt(0.0, "0 = greedy answers for scoring; > 0 samples at this temperature")
    select_by: Literal["auto", "score", "val_loss", "last"] = opt(
        "auto", "which epoch becomes best/: the answers' score, the validation loss, the last epoch; auto = score "
        "when eval_prompts are scored, else val_loss when there is val_data, else last")
    early_stopping_patience: int = opt(
        0, "stop once this many epochs in a row are no better by select_by than the best (0 = run every epoch); "
           "best/ is the same model a full run would keep unless a later epoch would have beaten it")
    log_every: int = opt(10, "steps between metric lines")
    save_every: int = opt(0, "steps between mid-epoch resume checkpoints (0 = only at the end of each epoch)")
    keep_last: int = opt(2, "resume checkpoints kept (with 2, a damaged newest one falls back to the one before)")
    resume: bool = opt(True, "continue from the newest checkpoint in out_dir if there is one")
    seed: int = opt(0, "seed for data order and sampling")
    device: str = opt("auto", "auto (cuda if available), cpu, cuda, ...")
    dtype: str = opt("auto", "autocast dtype: auto (bf16 on GPU, fp32 on CPU), bf16, fp16, fp32")
    num_threads: int = opt(0, "CPU threads for torch (0 = torch's default)")
    gradient_checkpointing: bool = opt(False, "recompute activations in the backward pass: less memory, ~1/3 more compute")
    distributed_strategy: Literal["ddp", "fsdp"] = opt(
        "ddp", "under torchrun: ddp (a model copy per rank) or fsdp (FSDP2: weights, gradients, optimizer sharded)")
    tensorboard: bool = opt(True, "also write TensorBoard event files")
    wandb_project: str = opt("", "log to this Weights & Biases project too (needs wandb)")

    def validate(self):
        """Check everything that can be checked before a model is loaded."""
        if not self.model:
            raise ChatforgeError("sft: field 'model' is empty; give the pretrained model folder")
        check_model_dir(self.model)
        if not self.train_data:
            raise ChatforgeError("sft: field 'train_data' is empty; give demonstration files")
        data_files(self.train_data)
        if self.val_data:
            data_files(self.val_data)
        check_fields(self.fields, DEMONSTRATION_SHAPES, "sft")
        if self.eval_prompts and not Path(self.eval_prompts).is_file():
            raise ChatforgeError(f"{self.eval_prompts}: field 'eval_prompts': file does not exist")
        if self.select_by == "score" and not (self.eval_prompts and (self.gold_world or self.reward_model)):
            raise ChatforgeError("sft: select_by=score needs eval_prompts and a judge (gold_world or reward_model)")
        if self.select_by == "val_loss" and not self.val_data:
            raise ChatforgeError("sft: select_by=val_loss needs val_data")
        require_positive(self, "sft", ("epochs", "batch_size", "grad_accum", "log_every"))
        if self.eval_skip < 0:
            raise ChatforgeError(f"sft: field 'eval_skip' must be >= 0, got {self.eval_skip}")
        if self.early_stopping_patience < 0:
            raise ChatforgeError(f"sft: field 'early_stopping_patience' must be >= 0, got {self.early_stopping_patience}")
        if self.early_stopping_patience and self.select_by == "last":
            raise ChatforgeError("sft: early_stopping_patience needs a select_by that compares epochs (score or val_loss)")
        dist.check_divisible("sft", "batch_size", self.batch_size)
        dist.check_strategy(self.distributed_strategy, "sft")
        if self.distributed_strategy == "fsdp" and self.lora_r > 0:
            raise ChatforgeError("sft: distributed_strategy=fsdp with lora_r > 0 is not supported; LoRA's few "
                                 "trained weights fit every rank: use distributed_strategy=ddp")


def load_chats(paths, tokenizer, max_len: int, too_long: str, what: str, format: str = "auto",
               fields: dict | None = None) -> list[TokenizedChat]:
    """Read, tokenize and length-check demonstrations; print what was kept and skipped."""
    demos, stats = read_demonstrations(paths, format, fields)
    chats = []
    for demo in demos:
        chat = fit_chat(tokenize_chat(tokenizer, demo.messages, demo.source), max_len, too_long, stats)
        if chat is not None:
            chats.append(chat)
    print(f"sft: {what}: {stats.summary()}")
    if not chats:
        raise nothing_left("sft", f"{what} demonstration", paths, stats, max_len)
    return chats


def make_rows(chats: list[TokenizedChat], max_len: int, packing: bool) -> list[list[TokenizedChat]]:
    """Sequences of one chat each, or chats packed up to max_len tokens."""
    if not packing:
        return [[chat] for chat in chats]
    return [[chats[i] for i in row] for row in pack(chats, max_len)]


def assistant_tokens(row: list[TokenizedChat]) -> int:
    """Tokens of a training row the loss counts (its chats' assistant tokens, as labels)."""
    return sum(sum(chat.loss_mask[1:]) for chat in row)


def batch_loss(model, batch: dict, device) -> torch.Tensor:
    """Mean loss over the batch's assistant tokens."""
    logits = model(input_ids=batch["input_ids"].to(device), position_ids=batch["position_ids"].to(device),
                   use_cache=False).logits  # (batch, seq, vocab)
    return token_cross_entropy(logits, batch["labels"].to(device))


def backward_step(trained, step_rows: list[list[TokenizedChat]], batch_size: int, pad_id: int, device,
                  amp_dtype) -> tuple[float, int]:
    """Accumulate the gradient of one optimizer step's rows, in micro-batches of batch_size; return (the step's
    mean loss per assistant token, the same on every rank; the rows' tokens, padding not counted)."""
    step_loss, tokens = 0.0, 0
    micro_batches = [step_rows[i:i + batch_size] for i in range(0, len(step_rows), batch_size)]
    for micro, rows in enumerate(micro_batches):
        # under torchrun each rank takes its share of the micro-batch, its loss weighted so that the
        # ranks' average is the mean over all the micro-batch's assistant tokens
        my_rows, weight = dist.share(rows, count=assistant_tokens)
        batch = collate(my_rows, pad_id)
        with dist.accumulating(trained, last=micro == len(micro_batches) - 1):
            with autocast(device, amp_dtype):
                loss = batch_loss(trained, batch, device) * weight / len(micro_batches)
            loss.backward()
        step_loss += loss.item()
        tokens += sum(len(chat.input_ids) for row in rows for chat in row)
    return dist.all_reduce_mean(step_loss), tokens


@torch.no_grad()
def validation_loss(model, rows, batch_size: int, pad_id: int, device, amp_dtype) -> float:
    """Mean loss per assistant token over the validation chats."""
    model.eval()
    total, count = 0.0, 0
    for start in dist.eval_shard(range(0, len(rows), batch_size), model):  # under torchrun: this rank's batches
        batch = collate(rows[start:start + batch_size], pad_id)
        n = int((batch["labels"] != -100).sum())
        with autocast(device, amp_dtype):
            total += batch_loss(model, batch, device).item() * n
        count += n
    total, count = dist.eval_sum((total, count), model)
    model.train()
    return total / max(count, 1)


def answer_score(model, tokenizer, judge, prompts, cfg: Config) -> float:
    """Mean judge score of the model's answers to `prompts`."""
    params = SamplingParams(max_new_tokens=cfg.eval_max_new_tokens, do_sample=cfg.eval_temperature > 0,
                            temperature=cfg.eval_temperature or 1.0, seed=cfg.seed)
    prompts = dist.eval_shard(prompts, model)  # under torchrun each rank answers its share
    answers = chat_answers(model, tokenizer, prompts, params).texts if prompts else []
    scores = judge(prompts, answers) if prompts else []
    if dist.is_distributed():
        total, count = dist.eval_sum((sum(scores), len(scores)), model)
        return total / count
    return sum(scores) / len(scores)


def stop_early(state: dict, patience: int) -> bool:
    """True once `patience` (> 0) finished epochs in a row came after the best one."""
    return patience > 0 and state["best_epoch"] is not None and state["epoch"] - state["best_epoch"] >= patience


def run(cfg: Config) -> Path:
    """Fine-tune on demonstrations; return the folder of the checkpoint that scored best."""
    out_dir, device, amp_dtype = start_run(cfg)
    tokenizer = load_chat_tokenizer(cfg.model)
    check_tokenizer_fits(tokenizer, cfg.model)

    resume_from = latest_checkpoint(out_dir) if cfg.resume else None
    model = load_causal_lm(resume_from or cfg.model)
    max_len = cfg.max_len or context_length(model) or 2048
    if context_length(model) and max_len > context_length(model):
        raise ChatforgeError(f"sft: max_len {max_len} exceeds the model's context {context_length(model)}")
    model = configure_trainable(model, cfg.freeze_layers, cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout,
                                cfg.lora_targets).to(device)
    model.train()
    if cfg.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    trained = dist.wrap(model, cfg.distributed_strategy)  # under torchrun DDP / FSDP2, else the model itself

    train_rows = make_rows(load_chats(cfg.train_data, tokenizer, max_len, cfg.too_long, "train", cfg.format,
                                      cfg.fields), max_len, cfg.packing)
    val_rows = (make_rows(load_chats(cfg.val_data, tokenizer, max_len, cfg.too_long, "val", cfg.format, cfg.fields),
                          max_len, cfg.packing)
                if cfg.val_data else [])
    judge = load_judge(cfg.gold_world, cfg.reward_model, device)
    eval_prompts = [p for p, _ in read_prompts(cfg.eval_prompts)] if cfg.eval_prompts and judge else []
    eval_prompts = eval_prompts[cfg.eval_skip:][:cfg.eval_max_prompts or None]
    selected_by = cfg.select_by if cfg.select_by != "auto" else (
        "score" if eval_prompts else ("val_loss" if val_rows else "last"))
    pad_id = tokenizer.pad_token_id
    if dist.is_main():
        save_config(cfg, out_dir / "config.yaml")  # only now: bad inputs above leave an earlier run's files as they were

    steps_per_epoch = math.ceil(len(train_rows) / (cfg.batch_size * cfg.grad_accum))
    total_steps = steps_per_epoch * cfg.epochs
    optimizer = build_optimizer(model, cfg.learning_rate, cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, warmup_cosine(max(1, int(cfg.warmup_ratio * total_steps)), total_steps, cfg.min_lr_ratio))
    # epoch_rows: training rows of the current epoch already consumed, the data position of a mid-epoch resume
    state = {"step": 0, "epoch": 0, "epoch_rows": 0, "epochs": [], "best_epoch": None, "best_key": None}
    if resume_from is not None:
        state.update(load_trainer_state(resume_from, dist.checkpoint_state(
            model, {"optimizer": optimizer, "scheduler": scheduler}, saving=False)))
        print(f"sft: resuming at step {state['step']} (epoch {state['epoch'] + 1}, row {state['epoch_rows']}) "
              f"from {resume_from}")
    logger = MetricsLogger(out_dir, cfg.tensorboard, cfg.wandb_project or None, to_dict(cfg), state["step"])
    print(f"sft: {len(train_rows)} training sequences ({'packed' if cfg.packing else 'one chat each'}, "
          f"max {max_len} tokens), {steps_per_epoch} steps/epoch, {cfg.epochs} epochs")

    progress = progress_bar(total_steps, "sft", state["step"])
    guard = NonFiniteGuard("sft", out_dir)
    window_start, window_tokens = time.perf_counter(), 0
    while state["epoch"] < cfg.epochs and not stop_early(state, cfg.early_stopping_patience):
        epoch = state["epoch"]
        order = list(range(len(train_rows)))
        random.Random(cfg.seed * 1000 + epoch).shuffle(order)
        per_step = cfg.batch_size * cfg.grad_accum
        for first in range(state["epoch_rows"], len(order), per_step):
            state["epoch_rows"] = first + per_step
            step_rows = [train_rows[i] for i in order[first:first + per_step]]
            step_loss, tokens = backward_step(trained, step_rows, cfg.batch_size, pad_id, device, amp_dtype)
            window_tokens += tokens
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip or float("inf"))
            if not guard.step_ok(state["step"], step_loss, grad_norm):
                optimizer.zero_grad(set_to_none=True)  # skip a non-finite step rather than poison the weights
                continue
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            state["step"] += 1
            progress.update(1)
            if state["step"] % cfg.log_every == 0:
                elapsed = time.perf_counter() - window_start
                rate = window_tokens / max(elapsed, 1e-9)
                window_start, window_tokens = time.perf_counter(), 0
                logger.log(state["step"], {"train/loss": step_loss, "train/lr": scheduler.get_last_lr()[0],
                                           "train/grad_norm": float(grad_norm), "train/tokens_per_s": rate})
                progress.set_postfix(loss=f"{step_loss:.3f}", tok_s=f"{rate:,.0f}")
            if cfg.save_every and state["step"] % cfg.save_every == 0 and state["epoch_rows"] < len(order):
                dist.on_main(save_checkpoint, out_dir, state["step"], dist.saveable(plain_model(model)), tokenizer,
                             dist.checkpoint_state(model, {"optimizer": optimizer, "scheduler": scheduler}, saving=True),
                             {k: v for k, v in state.items() if k != "step"}, cfg.keep_last,
                             rng_states=gather_rng_states())

        # end of epoch: validation loss, then the answers' score, which picks the checkpoint
        record = {"epoch": epoch + 1, "step": state["step"]}
        if val_rows:
            record["val_loss"] = validation_loss(model, val_rows, cfg.batch_size, pad_id, device, amp_dtype)
        if eval_prompts:
            record["score"] = answer_score(model, tokenizer, judge, eval_prompts, cfg)
        logger.log(state["step"], {f"epoch/{k}": v for k, v in record.items() if k not in ("epoch", "step")})
        progress.write("sft: epoch {epoch}: {rest}".format(epoch=epoch + 1, rest=", ".join(
            f"{k} {v:.4f}" for k, v in record.items() if k not in ("epoch", "step"))))
        key = {"score": lambda: record["score"], "val_loss": lambda: -record["val_loss"],
               "last": lambda: 0.0}[selected_by]()  # higher is better
        state["epochs"].append(record)
        state["epoch"], state["epoch_rows"] = epoch + 1, 0
        weights = dist.saveable(plain_model(model))  # with LoRA, one merged copy serves both saves
        if state["best_key"] is None or key > state["best_key"] or selected_by == "last":
            state["best_key"], state["best_epoch"] = key, epoch + 1
            card = model_card("sft", tokenizer, base_model=cfg.model, data=cfg.train_data + cfg.val_data,
                              metrics={**record, "selected_by": selected_by}, folder=str(out_dir / "best"))
            dist.on_main(save_hf_folder, weights, tokenizer, out_dir / "best", card=card)
        dist.on_main(save_checkpoint, out_dir, state["step"], weights, tokenizer,
                     dist.checkpoint_state(model, {"optimizer": optimizer, "scheduler": scheduler}, saving=True),
                     {k: v for k, v in state.items() if k != "step"}, cfg.keep_last,
                     rng_states=gather_rng_states())
    progress.close()
    logger.close()
    if state["epoch"] < cfg.epochs:
        print(f"sft: stopped early after epoch {state['epoch']}: {cfg.early_stopping_patience} epochs without a "
              f"better {selected_by} than epoch {state['best_epoch']}'s")

    summary = {"epochs": state["epochs"], "best_epoch": state["best_epoch"],
               "selected_by": selected_by, "stopped_early": state["epoch"] < cfg.epochs,
               "judge": getattr(judge, "name", None)}
    dist.on_main((out_dir / "summary.json").write_text, json.dumps(summary, indent=1))
    print(f"sft: best epoch {state['best_epoch']} by {summary['selected_by']} -> {out_dir / 'best'}")
    return out_dir / "best"
