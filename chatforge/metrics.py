"""Per-step metrics to the run folder: `metrics.jsonl` (one JSON object a line) and TensorBoard.

Weights & Biases is used too when `wandb_project` is set and wandb is installed.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

from tqdm import tqdm

from chatforge.data.jsonl import read_jsonl, write_jsonl
from chatforge.distributed import is_main


class MetricsLogger:
    """Append-only metrics for one run folder.

    start_step: the step the run starts from (its resume checkpoint's, 0 for a fresh run). Lines of an
    earlier run past that step are dropped, so a resumed run's file has every step once and a fresh
    run's file starts empty. Under torchrun only rank 0 writes; on the other ranks log() does nothing."""

    def __init__(self, run_dir: str | Path, tensorboard: bool = True, wandb_project: str | None = None,
                 config: dict | None = None, start_step: int = 0):
        self.run_dir = Path(run_dir)
        self.active = is_main()
        if not self.active:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        path = self.run_dir / "metrics.jsonl"
        kept = [r for r in read_metrics(path) if r.get("step", 0) <= start_step] if start_step and path.exists() else []
        write_jsonl(path, kept)
        self.file = open(path, "a")
        self.tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(self.run_dir / "tensorboard"))
            except ImportError:  # tensorboard is optional at run time
                self.tb = None
        self.wandb = None
        if wandb_project:
            import wandb

            self.wandb = wandb.init(project=wandb_project, dir=str(self.run_dir), config=config or {})

    def log(self, step: int, values: dict) -> None:
        """Record `values` (name -> number) at `step`."""
        if not self.active:
            return
        record = {"step": step, "time": round(time.time(), 3)}
        for key, value in values.items():
            value = float(value)
            record[key] = value if math.isfinite(value) else str(value)
            if self.tb is not None:
                self.tb.add_scalar(key, value, step)
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        if self.wandb is not None:
            self.wandb.log(values, step=step)

    def close(self) -> None:
        if not self.active:
            return
        self.file.close()
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()


def read_metrics(path: str | Path) -> list[dict]:
    """Load a metrics.jsonl file (a run folder or the file itself)."""
    path = Path(path)
    if path.is_dir():
        path = path / "metrics.jsonl"
    if not path.exists():
        return []
    return read_jsonl(path)


def progress_bar(total: int, desc: str, initial: int = 0) -> tqdm:
    """A tqdm bar; redrawn at most every 30 s when stderr is not a terminal (CI logs stay short)."""
    interactive = sys.stderr.isatty()
    return tqdm(total=total, initial=initial, desc=desc, unit="step", dynamic_ncols=True,
                mininterval=0.5 if interactive else 30.0, disable=not is_main())  # one bar, rank 0's
