"""One DPO step: chatforge's dpo stage against TRL's DPOTrainer, side by side in one process.

Same tiny random Llama (the `tiny` preset with the world's tokenizer and chat template), same preference pairs
(the built-in world's K = 4 rankings, labelled by a simulated labeler, as their C(4,2) chosen/rejected pairs:
ours reads them as strings, TRL as conversational messages; both render them with the same chat template),
same pairs per step (--batch), same max length (--max-len), sigmoid loss, beta 0.1, same threads, fp32 on CPU
(TRL's bf16 default switched off there; bf16 autocast on GPU both sides),
one optimizer step per batch, --steps steps over exactly --steps x --batch pairs (one epoch).

Reference log-probs: ours always computes them once before training, with the starting model, and keeps them
(dpo.py); TRL runs two ways: precompute_ref_log_probs=True (the same as ours: the row "TRL") and False (a
reference forward inside every step: the row "TRL, live reference"). `step_speedup` compares ours with the
former, `step_speedup_live_reference` with the latter. Precomputing is before the first step on both sides,
so it is outside every timed step; the seconds it takes are in the table's last column.

Both sides do one forward over the batch's chosen and rejected responses together (a batch of 2 x --batch
rows padded to the batch's longest), the loss, backward, gradient clipping at 1.0 and AdamW.

Timing: a step is the wall time from one optimizer step's end to the next (ours: a hook on the optimizer;
TRL: the Trainer's on_step_end), so it includes the data loading, loss and logging each side does per step.
Each side runs --repeats fresh runs, interleaved so drifts in machine load hit both; each run's first step
is dropped (warm-up); medians over the rest. Model loading is excluded on both sides. CPU seconds per step (the
process's CPU time, all threads) move less than wall seconds when other jobs share the machine.

TRL lives in the benchmark's own environment, never in chatforge's:
    bash benchmarks/setup_trl_env.sh
    OMP_NUM_THREADS=1 benchmarks/.venv-trl/bin/python benchmarks/dpo_vs_trl.py \\
        [--steps 12] [--repeats 3] [--batch 16] [--max-len 256] [--threads 1] [--json FILE]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from chatforge.data.chat import tokenize_chat  # noqa: E402
from chatforge.data.jsonl import write_jsonl  # noqa: E402

from _table import Report, add_json_arg  # noqa: E402  (benchmarks/, the script's own folder)
from sft_rm_vs_trl import prepare  # noqa: E402

LEARNING_RATE = 1e-6  # the DPO paper's
BETA = 0.1


def now() -> tuple[float, float]:
    """(wall seconds, this process's CPU seconds)."""
    return time.perf_counter(), time.process_time()


def step_times(ends: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """(wall, CPU) seconds of each step from the times steps ended."""
    return [(b[0] - a[0], b[1] - a[1]) for a, b in zip(ends, ends[1:])]


def run_ours(model_dir, pairs_file: Path, out: Path, args) -> tuple[list[tuple[float, float]], float]:
    """chatforge's dpo stage over the pairs: ((wall, CPU) seconds of each step after the first, seconds before
    step 1)."""
    from chatforge.stages import dpo

    ends: list[tuple[float, float]] = []
    build_optimizer = dpo.build_optimizer

    def timed_optimizer(*build_args, **kwargs):
        optimizer = build_optimizer(*build_args, **kwargs)
        optimizer.register_step_post_hook(lambda *unused: ends.append(now()))
        ends.append(now())  # built after the reference log-probs: the first step starts here
        return optimizer

    cfg = dpo.Config(model=str(model_dir), train_data=[str(pairs_file)], out_dir=str(out), max_len=args.max_len,
                     batch_prompts=args.batch, epochs=1, beta=BETA, learning_rate=LEARNING_RATE,
                     warmup_ratio=0.0, log_every=10**6, num_threads=args.threads, tensorboard=False, resume=False)
    dpo.build_optimizer = timed_optimizer
    start = time.perf_counter()
    try:
        dpo.run(cfg)
    finally:
        dpo.build_optimizer = build_optimizer
    return step_times(ends[1:]), ends[0][0] - start


def run_trl(model_dir, tokenizer, pairs: list[dict], out: Path, args,
            precompute: bool) -> tuple[list[tuple[float, float]], float]:
    """TRL's DPOTrainer over the same pairs: ((wall, CPU) seconds of each step after the first, seconds of its
    set-up)."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, PrinterCallback, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    config = DPOConfig(output_dir=str(out), max_steps=args.steps, per_device_train_batch_size=args.batch,
                       gradient_accumulation_steps=1, learning_rate=LEARNING_RATE, beta=BETA, loss_type=["sigmoid"],
                       max_length=args.max_len, precompute_ref_log_probs=precompute, max_grad_norm=1.0,
                       disable_dropout=True, seed=0, save_strategy="no", report_to="none",
                       # TRL's configs default to bf16 autocast, also on CPU; ours autocasts to bf16 on GPU only
                       bf16=torch.cuda.is_available(), use_cpu=not torch.cuda.is_available(), logging_steps=10**6, disable_tqdm=True,
                       dataloader_num_workers=0)
    rows = [{"prompt": [{"role": "user", "content": p["prompt"]}],
             "chosen": [{"role": "assistant", "content": p["chosen"]}],
             "rejected": [{"role": "assistant", "content": p["rejected"]}]} for p in pairs]
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    start = time.perf_counter()  # precomputing the reference's log-probs happens in the constructor
    trainer = DPOTrainer(model=model, args=config, train_dataset=Dataset.from_list(rows),
                         processing_class=tokenizer)
    ends: list[tuple[float, float]] = []

    class StepTimer(TrainerCallback):
        def on_step_end(self, *unused, **kwargs):
            ends.append(now())

    trainer.add_callback(StepTimer())
    trainer.remove_callback(PrinterCallback)
    setup_s = time.perf_counter() - start
    trainer.train()
    return step_times(ends), setup_s


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=12, help="DPO steps per run; the first is warm-up, dropped")
    parser.add_argument("--repeats", type=int, default=3, help="fresh runs per side, interleaved")
    parser.add_argument("--batch", type=int, default=16, help="preference pairs per step")
    parser.add_argument("--max-len", type=int, default=256, help="longest prompt + response in tokens")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads, both sides (0 = torch default)")
    parser.add_argument("--no-live", action="store_true", help="skip TRL with a live reference model")
    add_json_arg(parser)
    args = parser.parse_args()
    if args.steps < 2:
        raise SystemExit("--steps must be 2 or more: the first step is warm-up, dropped")
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    import transformers
    import trl

    report = Report("dpo_vs_trl", args)
    n_pairs = args.steps * args.batch
    sides = {"ours": None, "TRL": True, **({} if args.no_live else {"TRL, live reference": False})}
    seconds = {side: [] for side in sides}
    setup = {side: [] for side in sides}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        _, model_dir, tokenizer, _, _, _, pairs = prepare(root, 10, n_pairs // 3 + 10)
        pairs = pairs[:n_pairs]
        if len(pairs) < n_pairs:
            raise SystemExit(f"the world gave {len(pairs)} pairs, fewer than --steps x --batch = {n_pairs}")
        pairs_file = root / "pairs.jsonl"
        write_jsonl(pairs_file, pairs)
        tokens = [len(tokenize_chat(tokenizer, [{"role": "user", "content": p["prompt"]},
                                                {"role": "assistant", "content": p[side]}]).input_ids)
                  for p in pairs for side in ("chosen", "rejected")]
        for i in range(args.repeats):  # interleaved, so drifts in machine load hit both sides alike
            for side, precompute in sides.items():
                out = root / f"{side.replace(' ', '_').replace(',', '')}{i}"
                steps, setup_s = run_ours(model_dir, pairs_file, out, args) if precompute is None else \
                    run_trl(model_dir, tokenizer, pairs, out, args, precompute)
                seconds[side].append(steps)
                setup[side].append(setup_s)
                print(f"run {i + 1}, {side}: median step {statistics.median(s for s, _ in steps):.3f} s", flush=True)

    median = {side: statistics.median(wall for run in runs for wall, _ in run) for side, runs in seconds.items()}
    cpu = {side: statistics.median(cpu_s for run in runs for _, cpu_s in run) for side, runs in seconds.items()}
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU, {torch.get_num_threads()} threads"
    print(f"\nchatforge dpo vs TRL {trl.__version__} DPOTrainer (transformers {transformers.__version__}, torch "
          f"{torch.__version__}), {device}; tiny Llama, {args.batch} pairs a step, {n_pairs} pairs of "
          f"{statistics.mean(tokens):.0f} tokens on average (longest {max(tokens)}), max_len {args.max_len}; median of "
          f"{args.repeats} runs x {args.steps - 1} steps (warm-up dropped)\n")
    rows = []
    for side in sides:
        steps = [s for run in seconds[side] for s, _ in run]
        rows.append([side, "before training" if side != "TRL, live reference" else "every step",
                     f"{median[side]:.3f}", f"{min(steps):.3f}", f"{cpu[side]:.3f}", f"{args.batch / median[side]:.1f}",
                     f"{median[side] / median['ours']:.2f}x", f"{cpu[side] / cpu['ours']:.2f}x",
                     f"{statistics.median(setup[side]):.1f}"])
    report.table(["run", "reference log-probs", "s / step (median)", "fastest step s", "CPU s / step", "pairs / s",
                  "TRL / ours", "TRL / ours, CPU s", "set-up s (reference precompute, data)"], rows)
    print("\nset-up: ours from the start of run() to the optimizer's creation (data, reference log-probs, model "
          "load); TRL the DPOTrainer constructor (dataset tokenizing, reference log-probs when precomputed).")
    for side, runs in seconds.items():
        print(f"{side} seconds of each step, per run: " + "; ".join(" ".join(f"{s:.2f}" for s, _ in run) for run in runs))
    report.put(step_speedup=median["TRL"] / median["ours"], step_speedup_cpu=cpu["TRL"] / cpu["ours"],
               seconds_per_step=median, cpu_seconds_per_step=cpu,
               **({} if args.no_live else
                  {"step_speedup_live_reference": median["TRL, live reference"] / median["ours"]}))
    report.write()


if __name__ == "__main__":
    main()
