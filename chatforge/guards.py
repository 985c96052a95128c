"""Guards of a training loop: skip non-finite steps, and turn an out-of-memory crash into advice.

Every training stage checks its loss and gradient norm with a NonFiniteGuard before the optimizer
steps. The CLI turns a GPU out-of-memory error into a message that names the stage's settings to
lower (out_of_memory_advice).
"""

from __future__ import annotations

import math
import sys

import torch

from chatforge.errors import ChatforgeError

# settings that shrink a step's memory, in the order worth trying; each stage has some of them
MEMORY_SETTINGS = (
    ("batch_size", "sequences per micro-batch: halve it, and double grad_accum to keep the batch"),
    ("rollout_batch", "prompts sampled per PPO step"),
    ("minibatch_size", "responses per PPO minibatch"),
    ("batch_prompts", "comparisons per RM step (each holds K responses)"),
    ("ptx_batch_size", "pretraining sequences per PPO minibatch"),
    ("seq_len", "tokens per sequence"),
    ("max_len", "longest sequence (0 = the model's whole context)"),
    ("ptx_seq_len", "tokens per pretraining sequence in PPO-ptx"),
    ("max_new_tokens", "longest sampled response"),
    ("gradient_checkpointing", "set true: recompute activations in the backward pass"),
    ("dtype", "bf16 halves activation memory against fp32"),
    ("lora_r", "LoRA (e.g. 8) trains and stores optimizer state for far fewer weights"),
    ("freeze_layers", "frozen lower layers need no gradients or optimizer state"),
)


def is_finite(value) -> bool:
    """True for a finite float or a tensor whose every element is finite."""
    if isinstance(value, torch.Tensor):
        return bool(torch.isfinite(value).all())
    return math.isfinite(value)


class NonFiniteGuard:
    """Decides whether an optimizer step may be applied: a non-finite loss or gradient norm skips it, and
    `limit` skips in a row stop the run with a message naming the last good checkpoint."""

    def __init__(self, stage: str, run_dir, limit: int = 5):
        self.stage, self.run_dir, self.limit = stage, run_dir, limit
        self.in_a_row = 0
        self.skipped = 0

    def step_ok(self, step: int, loss, grad_norm) -> bool:
        """True when `loss` and `grad_norm` are finite; False (the caller zeroes the gradients and skips)
        otherwise; raises a ChatforgeError on the `limit`-th non-finite step in a row."""
        if is_finite(loss) and is_finite(grad_norm):
            self.in_a_row = 0
            return True
        self.in_a_row += 1
        self.skipped += 1
        what = "loss" if not is_finite(loss) else "gradient"
        print(f"{self.stage}: step {step + 1}: non-finite {what}, step skipped ({self.in_a_row} in a row)",
              file=sys.stderr)
        if self.in_a_row >= self.limit:
            from chatforge.checkpoint import latest_checkpoint

            last = latest_checkpoint(self.run_dir, report=False)
            where = (f"The last good checkpoint is {last}; rerunning resumes from it" if last is not None
                     else "No checkpoint was written yet")
            raise ChatforgeError(
                f"{self.stage}: {self.in_a_row} steps in a row had a non-finite loss or gradient (the last at step "
                f"{step + 1}); the weights were not updated by them. Lower learning_rate, set grad_clip, use "
                f"dtype=bf16 or fp32 rather than fp16, or check the data of these steps. {where}.")
        return False


def is_out_of_memory(exc: BaseException) -> bool:
    """True for torch's out-of-memory error (CUDA and other accelerators)."""
    return isinstance(exc, torch.OutOfMemoryError) or (
        isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower())


def out_of_memory_advice(stage: str, cfg) -> str:
    """The message for an out-of-memory crash: what ran out, and this stage's settings to change, with their values."""
    rows = [f"  {name}={getattr(cfg, name)!r}: {why}" for name, why in MEMORY_SETTINGS
            if cfg is not None and hasattr(cfg, name)]
    device = getattr(cfg, "device", "?")
    return (f"{stage}: the accelerator ran out of memory (device {device}). Lower one of these settings "
            "(key=value on the command line) and rerun; a run with checkpoints resumes from the newest:\n"
            + "\n".join(rows))
