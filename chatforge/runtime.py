"""Where and how a stage runs: device, autocast dtype, threads, seeds."""

from __future__ import annotations

import contextlib
import random
from pathlib import Path

import numpy as np
import torch

from chatforge import distributed
from chatforge.errors import ChatforgeError


def resolve_device(name: str = "auto") -> torch.device:
    """'auto' -> cuda when available, else cpu; a CUDA request on a machine without one is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ChatforgeError(f"device '{name}' was asked for but torch sees no CUDA GPU; use device=cpu")
    return torch.device(name)


def autocast_dtype(name: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype: 'auto' -> bf16 on a GPU that supports it, none (fp32) on CPU."""
    if name == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return None
    table = {"fp32": None, "float32": None, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
             "fp16": torch.float16, "float16": torch.float16}
    if name not in table:
        raise ChatforgeError(f"dtype '{name}' is not one of auto, {', '.join(table)}")
    return table[name]


def autocast(device: torch.device, dtype: torch.dtype | None):
    """A mixed-precision context, or a no-op for fp32."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def set_threads(num_threads: int) -> None:
    """Use `num_threads` CPU threads for torch (0 keeps torch's default)."""
    if num_threads > 0:
        torch.set_num_threads(num_threads)


def start_run(cfg) -> tuple[Path, torch.device, torch.dtype | None]:
    """A training stage's common start: make cfg.out_dir, set threads and seeds, pick the device (under
    torchrun: join the process group, GPU LOCAL_RANK) and the autocast dtype (cfg.dtype, 'auto' when the
    config has none). Returns (out_dir, device, amp_dtype)."""
    out_dir = Path(cfg.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    set_threads(cfg.num_threads)
    seed_everything(cfg.seed)  # the same seed on every rank: fresh models start identical
    device = distributed.setup(resolve_device(cfg.device))
    return out_dir, device, autocast_dtype(getattr(cfg, "dtype", "auto"), device)


def enable_gradient_checkpointing(model, in_eval_mode: bool = False) -> None:
    """Recompute each decoder block's activations in the backward pass instead of storing them (less memory,
    about one more forward of compute). Non-reentrant, so it works under DDP. transformers checkpoints a block
    only in training mode; in_eval_mode marks just the blocks as training, so a model kept in eval mode for
    having no dropout (PPO) still checkpoints while its dropout stays off."""
    if hasattr(model, "activation_checkpointing_enable"):  # the name since transformers 5.x (the old one warns)
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if in_eval_mode:
        from transformers.modeling_layers import GradientCheckpointingLayer

        for module in model.modules():
            if isinstance(module, GradientCheckpointingLayer):
                module.training = True  # only the block's own flag; its dropout modules stay in eval mode


@contextlib.contextmanager
def on_device(model, device: torch.device, offload: bool):
    """With offload: `model` lives on the CPU and moves to `device` only inside the block (a frozen model's
    forward pass), freeing accelerator memory between uses. Without offload, or on a CPU run: nothing moves."""
    if not offload or device.type == "cpu":
        yield model
        return
    model.to(device)
    try:
        yield model
    finally:
        model.to("cpu")
