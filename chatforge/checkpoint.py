"""Training checkpoints: an HF model folder plus the trainer's state, written atomically and verified on load.

    RUN/checkpoints/step_0000500/
        config.json, model.safetensors, tokenizer files   <- loads with from_pretrained as it is
        trainer_state.pt    optimizer(s) + scheduler(s) (tensors only: loaded with weights_only=True)
        rng_rank0.pt ...    each rank's RNG streams: python, numpy, torch CPU (+ CUDA)
        ...                 anything a stage adds (PPO: the critic's HF folder, critic/)
        train_state.json    step counters, data position, a stage's controllers (PPO: the KL coefficient)
        manifest.json       every file above with its size and sha256; written last, it marks the folder complete

A checkpoint is written to `step_N.tmp/` and renamed (models.io.save_hf_folder), so a crash
mid-save leaves no folder that looks complete. On resume the newest checkpoint is checked against
its manifest; a damaged one (a file cut short, changed or missing) is reported and the one before is
used. A save removes checkpoints newer than itself (left by a run it no longer continues: a damaged
one it fell back from, or one from before `resume=false`) and older ones with a file cut short or
missing, and keeps the newest `keep_last`.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
import sys
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from chatforge.errors import ChatforgeError
from chatforge.models.io import save_hf_folder

STATE_FILE = "train_state.json"
TRAINER_FILE = "trainer_state.pt"
MANIFEST_FILE = "manifest.json"
RNG_FILE = "rng_rank{rank}.pt"


def process_rank() -> int:
    """This process's rank under torchrun (RANK), 0 in a single process."""
    return int(os.environ.get("RANK", 0))


def rng_state() -> dict:
    """This process's RNG streams (python, numpy, torch CPU and the current CUDA device) as tensors and ints."""
    version, python_state, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": [version, list(python_state), gauss],
             "numpy": [name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict) -> None:
    """Restore streams saved by rng_state()."""
    version, python_state, gauss = state["python"]
    random.setstate((version, tuple(python_state), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def gather_rng_states() -> list[dict]:
    """Every rank's rng_state(), indexed by rank. Under an initialised process group this is a collective:
    each rank must call it (then pass the list to save_checkpoint on the rank that saves)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        states: list = [None] * dist.get_world_size()
        dist.all_gather_object(states, rng_state())
        return states
    return [rng_state()]


def _sha256(path: Path) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def write_manifest(folder: Path, step: int) -> None:
    """List every file under `folder` with its size and sha256 in manifest.json."""
    files = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST_FILE):
        files[path.relative_to(folder).as_posix()] = {"bytes": path.stat().st_size, "sha256": _sha256(path)}
    (folder / MANIFEST_FILE).write_text(json.dumps({"format": 1, "step": step, "files": files}, indent=1))


def verify_checkpoint(folder: Path, checksums: bool = True) -> list[str]:
    """What is wrong with a checkpoint against its manifest ([] = intact): missing, cut-short or changed files
    (checksums=False: sizes only, no reading). A checkpoint from before manifests existed (no manifest.json)
    cannot be checked and counts as intact."""
    folder = Path(folder)
    manifest_path = folder / MANIFEST_FILE
    if not manifest_path.exists():
        return []
    try:
        files = {name: (entry["bytes"], entry["sha256"])
                 for name, entry in json.loads(manifest_path.read_text())["files"].items()}
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, AttributeError) as exc:
        return [f"{MANIFEST_FILE} is unreadable ({type(exc).__name__})"]
    problems = []
    for name, (size, sha256) in files.items():
        path = folder / name
        if not path.is_file():
            problems.append(f"{name} is missing")
        elif path.stat().st_size != size:
            problems.append(f"{name} has {path.stat().st_size} bytes, the manifest says {size}")
        elif checksums and _sha256(path) != sha256:
            problems.append(f"{name} does not match its sha256 in the manifest")
    return problems


def save_checkpoint(run_dir, step: int, model, tokenizer, stateful: dict, state: dict, keep_last: int = 2,
                    write_extra: Callable[[Path], None] | None = None,
                    rng_states: list[dict] | None = None) -> Path:
    """Write checkpoint `step` under run_dir/checkpoints and prune; return its folder.

    stateful: named objects with state_dict() (optimizers, schedulers); state: JSON-able counters;
    write_extra(folder): writes more files into the checkpoint before it is marked complete;
    rng_states: every rank's RNG from gather_rng_states() (default: this process's, as its rank's)."""
    def write_trainer_state(folder: Path) -> None:
        if write_extra is not None:
            write_extra(folder)
        torch.save({name: obj.state_dict() for name, obj in stateful.items()}, folder / TRAINER_FILE)
        ranked = enumerate(rng_states) if rng_states is not None else [(process_rank(), rng_state())]
        for rank, rng in ranked:
            torch.save(rng, folder / RNG_FILE.format(rank=rank))
        (folder / STATE_FILE).write_text(json.dumps({"step": step, **state}, indent=1))
        write_manifest(folder, step)

    folder = Path(run_dir) / "checkpoints" / f"step_{step:07d}"
    final = save_hf_folder(model, tokenizer, folder, write_trainer_state)
    # older ones kept as fallbacks must at least have every file whole (a size check; hashing is for resume)
    older = [p for p in list_checkpoints(run_dir) if _step(p) < step]
    damaged = [p for p in older if verify_checkpoint(p, checksums=False)]
    older = [p for p in older if p not in damaged]
    newer = [p for p in list_checkpoints(run_dir) if _step(p) > step]
    for stale in newer + damaged + (older[:max(0, len(older) + 1 - keep_last)] if keep_last > 0 else []):
        shutil.rmtree(stale)
    return final


def _step(folder: Path) -> int:
    return int(folder.name.split("_")[1])


def list_checkpoints(run_dir) -> list[Path]:
    """Checkpoints of a run that look complete (not yet verified), oldest first."""
    root = Path(run_dir) / "checkpoints"
    if not root.exists():
        return []
    # step_N only: a save's step_N.tmp / step_N.old folders are never checkpoints
    done = [p for p in root.glob("step_*") if p.is_dir() and re.fullmatch(r"step_\d+", p.name)
            and ((p / MANIFEST_FILE).exists() or (p / STATE_FILE).exists())]
    return sorted(done, key=_step)


def latest_checkpoint(run_dir, report: bool = True) -> Path | None:
    """The newest checkpoint that passes verify_checkpoint, or None when the run has none.

    Each damaged checkpoint on the way is reported (on stderr, by rank 0) and skipped, not deleted (a later
    save_checkpoint does that); when every checkpoint is damaged the run stops rather than silently start over."""
    found = list_checkpoints(run_dir)
    damaged = []
    for folder in reversed(found):
        problems = verify_checkpoint(folder)
        if not problems:
            if damaged and report and process_rank() == 0:
                print(f"warning: resuming from {folder} instead (damaged checkpoints stay until a later save "
                      "replaces or removes them)", file=sys.stderr)
            return folder
        damaged.append(folder)
        if report and process_rank() == 0:
            print(f"warning: checkpoint {folder} is damaged: {'; '.join(problems[:3])}", file=sys.stderr)
    if damaged:
        raise ChatforgeError(f"{Path(run_dir) / 'checkpoints'}: every checkpoint is damaged "
                             f"({', '.join(p.name for p in damaged)}); move them away or set resume=false to start over")
    return None


def load_trainer_state(checkpoint: Path, stateful: dict) -> dict:
    """Restore the named optimizers / schedulers and this rank's RNG from a checkpoint; return its train_state.json."""
    trainer = torch.load(checkpoint / TRAINER_FILE, map_location="cpu", weights_only=True)
    for name, obj in stateful.items():
        obj.load_state_dict(trainer[name])
    rng_file = checkpoint / RNG_FILE.format(rank=process_rank())
    if rng_file.exists():
        set_rng_state(torch.load(rng_file, map_location="cpu", weights_only=True))
    elif "torch_rng" in trainer:  # a checkpoint from before per-rank RNG files
        torch.set_rng_state(trainer["torch_rng"])
    else:
        # written directly: under torchrun print() is silenced on ranks other than 0, and this is about one of them
        sys.stderr.write(f"warning: {checkpoint} holds no RNG state for rank {process_rank()} (was it saved with "
                         "fewer processes?); this rank continues with freshly seeded RNG, so the run is not an exact "
                         "resume\n")
    return json.loads((checkpoint / STATE_FILE).read_text())
