"""How much faster does pretraining run with 2 torchrun processes (DDP) than with 1, at the same global batch?

Runs the real `chatforge pretrain` stage under `torchrun --standalone --nproc_per_node N` for N = 1 and 2
(each process with `--threads` torch threads, on CPU with gloo unless --device cuda), alternating the two
several times, and reads the stage's own train/tokens_per_s (global tokens over all ranks) from
metrics.jsonl. Prints the median over repeats of each run's median rate (first logged window dropped:
warm-up), and the ratio 2 processes / 1 process. On a machine with 2 free cores the ideal is 2.0x; the
gap is gradient all-reduce plus the data path each rank runs in full (every rank reads the same stream
and keeps its share of the blocks).

Usage: python benchmarks/ddp_scaling.py [--repeats 3] [--steps 30] [--preset tiny] [--device cpu]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from _table import Report, add_json_arg  # benchmarks/, the script's own folder

ROOT = Path(__file__).resolve().parents[1]


def make_corpus(folder: Path) -> tuple[Path, Path]:
    """A corpus and tokenizer from the built-in world (small, written once)."""
    sys.path.insert(0, str(ROOT))
    from chatforge.stages import tokenizer
    from chatforge.stages import world as world_stage

    world = world_stage.run(world_stage.Config(out_dir=folder / "world", n_people=20, n_towns=6, train_docs=3000,
                                               val_docs=10, train_demos=10, val_demos=5, rl_prompts=10,
                                               eval_prompts=5, calibration_prompts=10,
                                               # pretraining reads only the corpus; 10 calibration prompts cannot
                                               # reach the default 0.73 agreement, so the world stage would stop
                                               labeler_agreement=0.6))
    corpus = world / "corpus" / "train.jsonl"
    tokenizer.run(tokenizer.Config(corpus=[str(corpus)], out_dir=str(folder / "tok"), vocab_size=1024))
    return corpus, folder / "tok"


def run_pretrain(processes: int, corpus: Path, tok: Path, out_dir: Path, args) -> float:
    """Median train/tokens_per_s of one pretraining run with `processes` ranks."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes),
               "-m", "chatforge.cli", "pretrain", f"corpus=[{corpus}]", f"tokenizer={tok}", f"out_dir={out_dir}",
               f"model_preset={args.preset}", f"seq_len={args.seq_len}", f"batch_size={args.batch_size}",
               f"max_steps={args.steps}", "log_every=5", "save_every=0", "eval_every=0", "tensorboard=false",
               "resume=false", f"device={args.device}", f"num_threads={args.threads}"]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "PYTHONPATH": str(ROOT)}
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT)
    if done.returncode:
        raise SystemExit(done.stdout[-3000:] + done.stderr[-3000:])
    from chatforge.metrics import read_metrics

    rates = [m["train/tokens_per_s"] for m in read_metrics(out_dir) if "train/tokens_per_s" in m]
    return statistics.median(rates[1:] or rates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--seq_len", type=int, default=128)
    parser.add_argument("--batch_size", type=int, default=16, help="global batch (each of N ranks takes 1/N)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process")
    parser.add_argument("--device", default="cpu")
    add_json_arg(parser)
    args = parser.parse_args()
    report = Report("ddp_scaling", args)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        corpus, tok = make_corpus(folder)
        rates = {1: [], 2: []}
        for repeat in range(args.repeats):
            for processes in (1, 2):  # alternated, so load from other jobs hits both alike
                rates[processes].append(run_pretrain(processes, corpus, tok, folder / f"run_{processes}_{repeat}", args))
                print(f"repeat {repeat + 1}: {processes} process(es): {rates[processes][-1]:,.0f} tokens/s", flush=True)
    one, two = statistics.median(rates[1]), statistics.median(rates[2])
    print(f"\npretrain, preset {args.preset}, seq_len {args.seq_len}, global batch {args.batch_size}, "
          f"{args.threads} thread(s) per process, {args.device}, median of {args.repeats} runs")
    report.table(["processes", "tokens/s (all ranks)", "ratio to 1 process"],
                 [[1, f"{one:,.0f}", "1.00x"], [2, f"{two:,.0f}", f"{two / one:.2f}x"]])
    report.put(scaling_2_processes=two / one)
    report.write()


if __name__ == "__main__":
    main()
