"""One RL step: chatforge's PPO stage (ppo, grpo or rloo) against TRL's GRPOTrainer or RLOOTrainer, in one process.

Same tiny random Llama policy (the `tiny` preset, with the world's tokenizer and chat template), same
reward model (that policy's backbone with a small random scalar head: a real RM is not needed to time
a step, only rewards that vary), same prompts (the built-in world's prompts/rl.jsonl), same number of
sequences per step (--batch), same response length (--max-new-tokens, sampling at T = 1, stopping at
EOS or <|end|>), same threads, one optimizer step per rollout batch on both sides.

What each side does in one step:
  ours (chatforge.stages.ppo, ppo_epochs=1, minibatch_size=batch):
    generate  --batch prompts, one response each (our KV-cache decoder, finished rows dropped);
    score     reward model on prompt + response, reference logprobs (frozen SFT copy) for the per-token
              KL penalty, critic values (old logprobs are the sampler's own in fp32: no extra pass);
              then GAE advantages and whitening;
    train     one pass of PPO: actor loss (clipped ratio) + critic loss (clipped values), backward,
              one optimizer step for the actor and one for the critic.
  TRL (GRPOTrainer, num_generations=G, beta>0, num_iterations=1, one optimizer step per generation):
    generate  --batch/G prompts, G completions each (`model.generate`), decode to text;
    score     re-render prompt + completion with the chat template, tokenize, reward-model forward,
              reference logprobs (beta>0 loads a frozen copy of the policy), group-normalized advantages;
              no critic, and no old-logprob pass (with one iteration the ratio uses detached logprobs);
    train     actor forward (logprobs and per-token entropies), clipped loss + beta * KL, backward,
              one optimizer step, the Trainer's per-step bookkeeping.
So per step ours does more model work than TRL: the critic's forward and forward/backward.

--algorithm grpo / rloo: ours runs the same stage with that algorithm (critic-free: no critic forward or
update; --num-generations responses per prompt, group-normalised or leave-one-out advantages; grpo puts the KL
in the loss like TRL's GRPO, rloo in the reward like TRL's RLOO), against TRL's GRPOTrainer / RLOOTrainer
(TRL 1.x's RLOOTrainer: the GRPOTrainer-shaped API with num_generations, beta = KL in the reward). Both sides
then do the same model work: generate, reward model + reference forwards, one actor forward/backward.

Timing: each side runs --steps steps, --repeats times (fresh run each time, ours and TRL interleaved so
drifts in machine load hit both); every run's first step is dropped (warm-up) and medians are taken
over the rest. Tokens/s = response tokens generated in the step (stop token included) / seconds of the
whole step. Ours: its own per-step metrics (time/*, rollout/tokens in metrics.jsonl). TRL: wall time
between step ends (Trainer callback), with `_generate` and `_generate_and_score_completions` wrapped to
split it the same way (score = everything between generation and the training forward). Model loading
and setup are excluded on both sides. The table also gives the fastest step, and every step's seconds follow
it: on a shared machine that spread shows how much other load moved the medians. CPU seconds per step (the
process's CPU time between step ends, all its threads) move less than wall seconds when other jobs share the
machine; `step_speedup_cpu` is their ratio.

TRL lives in the benchmark's own environment, never in chatforge's:
    bash benchmarks/setup_trl_env.sh
    OMP_NUM_THREADS=1 benchmarks/.venv-trl/bin/python benchmarks/rl_step_vs_trl.py \\
        [--algorithm ppo|grpo|rloo] [--steps 4] [--repeats 2] [--batch 64] [--max-new-tokens 48] [--threads 1]
        [--num-generations 4] [--json FILE]

--json FILE writes the table and `step_speedup` (TRL's median seconds per step / ours) and `phase_speedup`
(the same per phase: generate, score, train).
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
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig  # noqa: E402

from chatforge.data.jsonl import read_jsonl  # noqa: E402
from chatforge.metrics import read_metrics  # noqa: E402
from chatforge.models.io import save_hf_folder  # noqa: E402
from chatforge.models.presets import llama_config  # noqa: E402
from chatforge.models.reward import build_reward_model, score_head  # noqa: E402
from chatforge.stages import tokenizer as tokenizer_stage  # noqa: E402
from chatforge.stages import world as world_stage  # noqa: E402

from _table import Report, add_json_arg  # noqa: E402  (benchmarks/, the script's own folder)

MAX_LEN = 512
LEARNING_RATE = 1e-5
KL_COEF = 0.02  # InstructGPT's beta; TRL's GRPO needs beta > 0 to keep a reference model like ours
SPLIT = ("generate", "score", "train")


def prepare(root: Path, n_prompts: int):
    """A small world, its tokenizer, a random tiny policy folder and a random-head reward model folder."""
    world_dir = world_stage.run(world_stage.Config(out_dir=root / "world", train_docs=1000, val_docs=10,
                                                   train_demos=10, val_demos=5, rl_prompts=n_prompts,
                                                   eval_prompts=5, calibration_prompts=20))
    tok_dir = tokenizer_stage.run(tokenizer_stage.Config(corpus=[str(world_dir / "corpus" / "train.jsonl")],
                                                         out_dir=str(root / "tok"), vocab_size=2048))
    tokenizer = AutoTokenizer.from_pretrained(tok_dir)
    end_of_turn = tokenizer.convert_tokens_to_ids(tokenizer_stage.END_OF_TURN)
    config = llama_config("tiny", vocab_size=len(tokenizer), max_position_embeddings=MAX_LEN, bos_token_id=None,
                          eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    policy = AutoModelForCausalLM.from_config(config)
    # both EOS and end-of-turn stop a response, for TRL's `generate` as for our decoder
    policy.generation_config = GenerationConfig(eos_token_id=[tokenizer.eos_token_id, end_of_turn],
                                                pad_token_id=tokenizer.pad_token_id)
    policy_dir = save_hf_folder(policy, tokenizer, root / "policy")

    reward_model = build_reward_model(policy_dir, tokenizer.pad_token_id)
    torch.nn.init.normal_(score_head(reward_model).weight, std=0.05)  # small random head: rewards vary
    rm_dir = save_hf_folder(reward_model, tokenizer, root / "rm")
    prompts_file = world_dir / "prompts" / "rl.jsonl"
    return policy_dir, rm_dir, prompts_file


def read_prompts(prompts_file: Path) -> list[list[dict]]:
    """The RL prompts as chat messages (a string prompt becomes one user turn)."""
    records = read_jsonl(prompts_file)
    return [[{"role": "user", "content": r["prompt"]}] if isinstance(r["prompt"], str) else r["prompt"]
            for r in records]


def run_ours(policy_dir, rm_dir, prompts_file, out: Path, args) -> list[dict]:
    """chatforge's PPO stage for --steps steps; one dict per step: step_s, generate_s, score_s, train_s, tokens."""
    from chatforge.stages import ppo

    algorithm = {}
    if args.algorithm != "ppo":  # the same stage, critic-free, with TRL's choice of where the KL goes
        algorithm = dict(algorithm=args.algorithm, group_size=args.num_generations,
                         kl_in="loss" if args.algorithm == "grpo" else "reward")
    cfg = ppo.Config(**algorithm, policy=str(policy_dir), reward_model=str(rm_dir), prompts=str(prompts_file),
                     out_dir=str(out),
                     steps=args.steps, rollout_batch=args.batch, max_new_tokens=args.max_new_tokens,
                     temperature=1.0, ppo_epochs=1, minibatch_size=args.batch, learning_rate=LEARNING_RATE,
                     critic_learning_rate=LEARNING_RATE, kl_coef=KL_COEF, ptx_coef=0.0, gold_world="",
                     num_threads=args.threads, seed=0, tensorboard=False, resume=False)
    cpu_ends: list[float] = []

    class CPUTimedLogger(ppo.MetricsLogger):
        def log(self, step, values):  # called once at the end of each step
            cpu_ends.append(time.process_time())
            super().log(step, values)

    logger = ppo.MetricsLogger
    ppo.MetricsLogger = CPUTimedLogger
    try:
        ppo.run(cfg)
    finally:
        ppo.MetricsLogger = logger
    rows = [m for m in read_metrics(out) if "time/step_s" in m]
    cpu = [0.0] + [b - a for a, b in zip(cpu_ends, cpu_ends[1:])]  # the first step's (warm-up) is never used
    return [{"step_s": m["time/step_s"], "generate_s": m["time/generate_s"], "score_s": m["time/score_s"],
             "train_s": m["time/train_s"], "tokens": m["rollout/tokens"], "cpu_s": cpu_s}
            for m, cpu_s in zip(rows, cpu)]


def run_trl(policy_dir, rm_dir, prompts: list[list[dict]], out: Path, args) -> list[dict]:
    """TRL's GRPOTrainer (RLOOTrainer for --algorithm rloo) for --steps steps; one dict per step, split like ours
    by wrapping its methods."""
    from datasets import Dataset
    from transformers import PrinterCallback, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer, RLOOConfig, RLOOTrainer

    rloo = args.algorithm == "rloo"
    trainer_config, trainer_class = (RLOOConfig, RLOOTrainer) if rloo else (GRPOConfig, GRPOTrainer)
    config = trainer_config(
        output_dir=str(out), max_steps=args.steps, learning_rate=LEARNING_RATE, seed=0,
        # one generation of --batch sequences per optimizer step, trained on in one pass
        per_device_train_batch_size=args.batch, gradient_accumulation_steps=1, num_generations=args.num_generations,
        num_iterations=1, max_completion_length=args.max_new_tokens, temperature=1.0, top_p=1.0, top_k=0,
        beta=KL_COEF, disable_dropout=True,
        save_strategy="no", report_to="none", logging_steps=10**6,
        # TRL's configs default to bf16 autocast, also on CPU; ours autocasts to bf16 on GPU only
        bf16=torch.cuda.is_available(), use_cpu=not torch.cuda.is_available(),
        disable_tqdm=True, dataloader_num_workers=0)
    trainer = trainer_class(model=str(policy_dir), reward_funcs=str(rm_dir), args=config,
                          train_dataset=Dataset.from_list([{"prompt": p} for p in prompts]))

    phase = {"generate_s": 0.0, "rollout_s": 0.0, "tokens": 0}
    generate, generate_and_score = trainer._generate, trainer._generate_and_score_completions

    def timed_generate(batch_prompts):
        start = time.perf_counter()
        result = generate(batch_prompts)
        phase["generate_s"] += time.perf_counter() - start
        phase["tokens"] += sum(len(ids) for ids in result[1])  # completion ids, cut after the stop token
        return result

    def timed_generate_and_score(inputs):
        start = time.perf_counter()
        result = generate_and_score(inputs)
        phase["rollout_s"] += time.perf_counter() - start
        return result

    trainer._generate, trainer._generate_and_score_completions = timed_generate, timed_generate_and_score
    steps: list[dict] = []

    class StepTimer(TrainerCallback):
        """Wall time from one optimizer step's end to the next: everything the Trainer does per step."""

        def on_train_begin(self, *unused, **kwargs):
            self.last, self.last_cpu = time.perf_counter(), time.process_time()

        def on_step_end(self, *unused, **kwargs):
            sync()
            now = time.perf_counter()
            step_s = now - self.last
            cpu_now = time.process_time()
            steps.append({"step_s": step_s, "generate_s": phase["generate_s"],
                          "score_s": phase["rollout_s"] - phase["generate_s"],
                          "train_s": step_s - phase["rollout_s"], "tokens": phase["tokens"],
                          "cpu_s": cpu_now - self.last_cpu})
            phase.update(generate_s=0.0, rollout_s=0.0, tokens=0)
            self.last, self.last_cpu = now, cpu_now

    trainer.add_callback(StepTimer())
    trainer.remove_callback(PrinterCallback)  # its end-of-training dict would bury the table
    trainer.train()
    return steps


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def summarize(runs: list[list[dict]]) -> dict:
    """Medians over every run's steps but the first (warm-up)."""
    kept = [step for run in runs for step in run[1:]]
    if not kept:
        raise SystemExit("no timed steps left after dropping warm-up: use --steps 2 or more")
    median = {key: statistics.median(s[key] for s in kept)
              for key in ("step_s", "cpu_s", "tokens", *(f"{p}_s" for p in SPLIT))}
    median["tokens_per_s"] = statistics.median(s["tokens"] / s["step_s"] for s in kept)
    median["generate_tokens_per_s"] = statistics.median(s["tokens"] / s["generate_s"] for s in kept)
    median["fastest_step_s"] = min(s["step_s"] for s in kept)  # the least disturbed by other load on the machine
    median["n"] = len(kept)
    return median


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4, help="RL steps per run; the first is warm-up, dropped")
    parser.add_argument("--repeats", type=int, default=2, help="fresh runs per side, interleaved")
    parser.add_argument("--batch", type=int, default=64, help="sequences generated and trained on per step")
    parser.add_argument("--max-new-tokens", type=int, default=48, help="response length limit")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads, both sides (0 = torch default)")
    parser.add_argument("--num-generations", type=int, default=4,
                        help="TRL GRPO completions per prompt: --batch / this many prompts a step (ours: --batch)")
    parser.add_argument("--only", choices=("both", "ours", "trl"), default="both", help="run one side only")
    parser.add_argument("--algorithm", choices=("ppo", "grpo", "rloo"), default="ppo",
                        help="ours: the PPO stage's algorithm; TRL: GRPOTrainer (ppo, grpo) or RLOOTrainer (rloo)")
    add_json_arg(parser)
    args = parser.parse_args()
    if args.algorithm != "ppo" and args.only != "trl":
        from dataclasses import fields

        from chatforge.stages import ppo

        if "algorithm" not in {field.name for field in fields(ppo.Config)}:
            raise SystemExit(f"--algorithm {args.algorithm}: this chatforge's ppo stage has no 'algorithm' field yet "
                             "(use --only trl)")
    if args.batch % args.num_generations:
        raise SystemExit(f"--batch {args.batch} must be a multiple of --num-generations {args.num_generations}")
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    import transformers
    import trl

    sides = ("ours", "trl") if args.only == "both" else (args.only,)
    results = {side: [] for side in sides}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        n_prompts = max(args.batch * args.steps, 256)
        policy_dir, rm_dir, prompts_file = prepare(root, n_prompts)
        prompts = read_prompts(prompts_file)
        for i in range(args.repeats):  # interleaved, so drifts in machine load hit both sides alike
            if "ours" in sides:
                results["ours"].append(run_ours(policy_dir, rm_dir, prompts_file, root / f"ours{i}", args))
            if "trl" in sides:
                results["trl"].append(run_trl(policy_dir, rm_dir, prompts, root / f"trl{i}", args))
    summary = {side: summarize(runs) for side, runs in results.items()}

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU, {torch.get_num_threads()} threads"
    n = next(iter(summary.values()))["n"]
    ours_name = "PPO" if args.algorithm == "ppo" else f"PPO stage, algorithm {args.algorithm}"
    trl_name = "RLOOTrainer" if args.algorithm == "rloo" else "GRPOTrainer"
    groups = f"{args.batch // args.num_generations} prompts x {args.num_generations}"
    shape = f"both: {groups}" if args.algorithm != "ppo" else f"ours: {args.batch} prompts x 1; TRL: {groups}"
    print(f"\nchatforge {ours_name} vs TRL {trl.__version__} {trl_name} (transformers {transformers.__version__}, "
          f"torch {torch.__version__}), {device}; tiny Llama, {args.batch} sequences a step ({shape}), "
          f"up to {args.max_new_tokens} new "
          f"tokens, T=1, one optimizer step a step; median of {n} steps ({args.repeats} runs x {args.steps - 1}, "
          f"warm-up dropped)\n")
    ours, theirs = summary.get("ours"), summary.get("trl")

    def cell(stats, key, fmt):
        return format(stats[key], fmt) if stats else "-"

    def share(stats, part):
        return f" ({stats[f'{part}_s'] / stats['step_s']:.0%})" if stats else ""

    def ratio(key):
        return f"{ours[key] / theirs[key]:.2f}" if ours and theirs and theirs[key] else "-"

    rows = [("seconds / step (lower is better)", "step_s", ".3f", ""),
            ("fastest step, seconds", "fastest_step_s", ".3f", ""),
            ("CPU seconds / step (this process, all threads)", "cpu_s", ".3f", ""),
            ("generated tokens / s (whole step)", "tokens_per_s", ",.0f", ""),
            ("generated tokens / step", "tokens", ",.0f", ""),
            ("generated tokens / s (generate phase only)", "generate_tokens_per_s", ",.0f", "")]
    rows += [(f"  {part} s / step", f"{part}_s", ".3f", part) for part in SPLIT]
    report = Report("rl_step_vs_trl", args)
    report.table(["per step", "ours", "TRL", "ours / TRL"],
                 [[label, cell(ours, key, fmt) + (share(ours, part) if part else ""),
                   cell(theirs, key, fmt) + (share(theirs, part) if part else ""), ratio(key)]
                  for label, key, fmt, part in rows])
    print("\nsplit: generate = sampling the responses; score = reward model, reference (and for ours the critic) "
          "forwards, advantages; train = the optimizer pass (ours: actor and critic). Shares are of the median step; the three "
          "medians need not add up to the step's.")
    for side, runs in results.items():  # the spread shows how much other load on the machine moved the numbers
        print(f"{'ours' if side == 'ours' else 'TRL'} seconds of each step, per run (first = warm-up): "
              + "; ".join(" ".join(f"{s['step_s']:.2f}" for s in run) for run in runs))
    if ours and theirs:  # TRL's seconds / ours: above 1 means ours is faster
        report.put(step_speedup=theirs["step_s"] / ours["step_s"], step_speedup_cpu=theirs["cpu_s"] / ours["cpu_s"],
                   phase_speedup={part: theirs[f"{part}_s"] / ours[f"{part}_s"] for part in SPLIT})
    report.put(summary=summary)
    report.write()


if __name__ == "__main__":
    main()
