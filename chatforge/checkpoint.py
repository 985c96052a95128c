"""Training checkpoints: an HF model folder plus the trainer's state, written atomically.

    RUN/checkpoints/step_0000500/
        config.json, model.safetensors, tokenizer files   <- loads with from_pretrained as it is
        trainer_state.pt    optimizer(s) + scheduler(s) + RNG (tensors only: loaded with weights_only=True)
        ...                 anything a stage adds (PPO: the critic's HF folder, critic/)
        train_state.json    step counters and data position; written last, it marks the folder complete

A checkpoint is written to `step_N.tmp/` and renamed (models.io.save_hf_folder), so a crash
mid-save leaves no folder that looks complete. Only the newest `keep_last` checkpoints are kept.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Callable

import torch

from chatforge.models.io import save_hf_folder

STATE_FILE = "train_state.json"
TRAINER_FILE = "trainer_state.pt"


def save_checkpoint(run_dir, step: int, model, tokenizer, stateful: dict, state: dict, keep_last: int = 2,
                    write_extra: Callable[[Path], None] | None = None) -> Path:
    """Write checkpoint `step` under run_dir/checkpoints and prune older ones; return its folder.

    stateful: named objects with state_dict() (optimizers, schedulers); state: JSON-able counters;
    write_extra(folder): writes more files into the checkpoint before it is marked complete."""
    def write_trainer_state(folder: Path) -> None:
        if write_extra is not None:
            write_extra(folder)
        torch.save({**{name: obj.state_dict() for name, obj in stateful.items()},
                    "torch_rng": torch.get_rng_state()}, folder / TRAINER_FILE)
        (folder / STATE_FILE).write_text(json.dumps({"step": step, **state}, indent=1))

    folder = Path(run_dir) / "checkpoints" / f"step_{step:07d}"
    final = save_hf_folder(model, tokenizer, folder, write_trainer_state)
    for old in list_checkpoints(run_dir)[:-keep_last] if keep_last > 0 else []:
        shutil.rmtree(old)
    return final


def list_checkpoints(run_dir) -> list[Path]:
    """Complete checkpoints of a run, oldest first."""
    root = Path(run_dir) / "checkpoints"
    if not root.exists():
        return []
    # step_N only: a save's step_N.tmp / step_N.old folders are never checkpoints
    done = [p for p in root.glob("step_*") if p.is_dir() and re.fullmatch(r"step_\d+", p.name)
            and (p / STATE_FILE).exists()]
    return sorted(done, key=lambda p: int(p.name.split("_")[1]))


def latest_checkpoint(run_dir) -> Path | None:
    """The newest complete checkpoint, or None."""
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def load_trainer_state(checkpoint: Path, stateful: dict) -> dict:
    """Restore the named optimizers / schedulers and the RNG from a checkpoint; return its train_state.json."""
    trainer = torch.load(checkpoint / TRAINER_FILE, map_location="cpu", weights_only=True)
    for name, obj in stateful.items():
        obj.load_state_dict(trainer[name])
    torch.set_rng_state(trainer["torch_rng"])
    return json.loads((checkpoint / STATE_FILE).read_text())
