"""`chatforge compare`: every alignment method from the same SFT model, scored by the built-in world's gold judge.

    chain     world -> tokenizer -> pretrain -> sft -> rank -> rm, once (the demo's stages and configs;
              from_run reuses a finished demo run folder instead)
    methods   for each seed, each method from that SFT model at the same budget of policy samples:
                sft                 the starting point (win rate 0.5 by definition)
                best_of_n           n SFT samples a prompt, the RM picks one (inference only)
                ppo, ppo_ptx        PPO against the RM, with a critic; ppo_ptx adds the pretraining loss
                grpo, rloo,         critic-free RL against the RM (group-normalised, leave-one-out,
                reinforce_pp        globally normalised advantages)
                dpo                 DPO on the chain's ranked comparisons (offline: no policy samples)
                online_dpo          rounds of: sample K from the policy, the RM ranks, DPO
                rejection_sampling  rounds of: sample n from the policy, keep the RM's best, fine-tune
    eval      `chatforge eval` of each policy against SFT on the world's held-out prompts (T=1 samples,
              gold win rate with a paired bootstrap interval, gold score, KL to SFT, held-out perplexity,
              failure rates by dimension), and both models' greedy answers gold-scored

The budget is the number of responses a method samples from its policy while it trains (`samples`):
PPO-family runs get samples / rollout_batch steps, rejection sampling and online DPO
samples / (rounds x samples per prompt) prompts a round. DPO trains on the comparisons the chain already
collected (SFT samples ranked by the simulated labelers, the same data the RM learned from).

    out_dir/chain/                 the shared stages' folders
    out_dir/seed_N/METHOD/         the method's run folder, eval/ and result.json (a method whose result.json
                                   exists is not rerun: an interrupted compare resumes)
    out_dir/leaderboard.json       {"rows": [{"method", "winrate_vs_sft", "winrate_vs_sft_ci95",
                                   "winrate_vs_sft_greedy", "gold_score", "kl", "ppl", "seconds", ...}], ...}
    out_dir/leaderboard.md         the same as tables
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import time
from dataclasses import dataclass
from datetime import date
from pathlib import Path

from chatforge import demo
from chatforge.config import load_config, opt, save_config
from chatforge.data.jsonl import read_jsonl
from chatforge.environment import machine, versions
from chatforge.errors import ChatforgeError
from chatforge.eval import leaderboard
from chatforge.eval.answers import chat_answers
from chatforge.eval.dimensions import gold_scores
from chatforge.eval.judges import GoldJudge
from chatforge.generation import SamplingParams
from chatforge.models.io import load_causal_lm, load_tokenizer
from chatforge.runtime import set_threads
from chatforge.stages import evaluate

METHODS = ("sft", "best_of_n", "ppo", "ppo_ptx", "grpo", "rloo", "reinforce_pp", "dpo", "online_dpo",
           "rejection_sampling")
PPO_FAMILY = ("ppo", "ppo_ptx", "grpo", "rloo", "reinforce_pp")


@dataclass
class Config:
    out_dir: str = opt("runs/compare", "folder of the chain, every method's runs and the leaderboard")
    demo_config: str = opt("configs/demo.yaml", "the demo config whose stage configs build the shared chain")
    from_run: str = opt("", "a finished demo run folder (e.g. runs/demo): reuse its world, tokenizer, base model, "
                            "SFT model, comparisons and RM instead of training them")
    world: dict = opt({}, "overrides of world config fields (the shared chain)")
    pretrain: dict = opt({}, "overrides of pretraining config fields (the shared chain)")
    sft: dict = opt({}, "overrides of SFT config fields (the shared chain)")
    rank: dict = opt({}, "overrides of rank config fields (the shared chain)")
    rm: dict = opt({}, "overrides of reward-model config fields (the shared chain)")
    methods: list[str] = opt(list(METHODS), "methods to run, in the leaderboard's order")
    seeds: list[int] | str = opt([0, 1, 2], "each method runs once per seed (its `seed` and the eval's)")
    samples: int = opt(4096, "the budget: responses each sampling method draws from its policy while it trains")
    best_of_n: int = opt(8, "n of the best-of-n row")
    ppo_config: str = opt("configs/ppo_tiny.yaml", "config of the PPO-family runs (ppo, ppo_ptx, grpo, rloo, "
                                                  "reinforce_pp)")
    dpo_config: str = opt("configs/dpo_tiny.yaml", "config of the DPO run")
    online_dpo_config: str = opt("configs/online_dpo_tiny.yaml", "config of the online DPO run")
    rejection_sampling_config: str = opt("configs/rejection_sampling_tiny.yaml", "config of the rejection-sampling run")
    eval_config: str = opt("configs/eval.yaml", "config of the comparisons with SFT")
    overrides: dict = opt({}, "per-method overrides of its stage config, e.g. overrides.grpo.group_size=8")
    eval: dict = opt({}, "overrides of eval config fields (e.g. eval.ppl_tokens=16384)")
    eval_prompts: int = opt(200, "held-out prompts each policy answers")
    eval_samples: int = opt(2, "T=1 answers per prompt and model")
    quick: bool = opt(False, "one seed (the first), quick_samples, quick_eval_prompts, quick_pretrain_steps and "
                             "eval.ppl_tokens 16384: the whole table in about 10 minutes on 2 CPU cores")
    quick_samples: int = opt(2048, "samples with quick=true")
    quick_eval_prompts: int = opt(100, "eval_prompts with quick=true")
    quick_pretrain_steps: int = opt(600, "pretraining steps with quick=true (unless pretrain.max_steps is given)")
    num_threads: int = opt(0, "CPU threads for torch (0 = torch's default)")

    def __post_init__(self):
        self.seeds = demo.parse_seeds(self.seeds)

    def validate(self):
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown:
            raise ChatforgeError(f"compare: field 'methods': unknown {unknown}; choose from {list(METHODS)}")
        if "sft" not in self.methods:
            raise ChatforgeError("compare: field 'methods' must hold 'sft': every row is compared with it")
        bad = [m for m in self.overrides if m not in METHODS]
        if bad:
            raise ChatforgeError(f"compare: field 'overrides': unknown method(s) {bad}")
        if not self.seeds:
            raise ChatforgeError("compare: field 'seeds' is empty")
        if self.samples < 1 or self.eval_prompts < 1 or self.eval_samples < 1:
            raise ChatforgeError("compare: samples, eval_prompts and eval_samples must be >= 1")
        if self.from_run and not (Path(self.from_run) / "rm" / "final" / "config.json").is_file():
            raise ChatforgeError(f"{self.from_run}: field 'from_run': not a finished demo run folder (no rm/final)")


def effective(cfg: Config) -> Config:
    """The config with quick=true's settings applied."""
    if not cfg.quick:
        return cfg
    pretrain = {"max_steps": cfg.quick_pretrain_steps, **cfg.pretrain}
    return dataclasses.replace(cfg, seeds=cfg.seeds[:1], samples=cfg.quick_samples,
                               eval_prompts=cfg.quick_eval_prompts, pretrain=pretrain,
                               eval={"ppl_tokens": 16384, **cfg.eval})


@dataclass
class Shared:
    """What every method starts from."""

    world: Path
    tokenizer: Path
    sft: Path
    rm: Path
    comparisons: Path
    pretrain_text: Path
    val_text: Path
    chain_seconds: float

    @property
    def prompts(self) -> Path:
        return self.world / "prompts" / "rl.jsonl"

    @property
    def eval_prompts(self) -> Path:
        return self.world / "prompts" / "eval.jsonl"


def shared_chain(cfg: Config, out_dir: Path) -> Shared:
    """Train (or reuse) world -> tokenizer -> pretrain -> sft -> rank -> rm; stages already finished are skipped."""
    start = time.time()
    if cfg.from_run:
        run_dir = Path(cfg.from_run)
        dcfg = load_config(demo.Config, cfg.demo_config, {"run_dir": str(run_dir)}, validate=False)
    else:
        run_dir = out_dir / "chain"
        dcfg = load_config(demo.Config, cfg.demo_config, {
            "run_dir": str(run_dir), "world": cfg.world, "pretrain": cfg.pretrain, "sft": cfg.sft, "rank": cfg.rank,
            "rm": cfg.rm}, validate=False)
    chain = demo.chain_configs(dcfg)
    done_marks = {"world": "world.json", "tokenizer": "tokenizer.json"}
    for name in ("world", "tokenizer", "pretrain", "sft", "rank", "rm"):
        stage_cfg = getattr(chain, name)
        if (Path(stage_cfg.out_dir) / done_marks.get(name, "summary.json")).is_file():
            continue
        if cfg.from_run:
            raise ChatforgeError(f"{cfg.from_run}: field 'from_run': the {name} stage has not finished there")
        print(f"\n== chain: {name}", flush=True)
        module = importlib.import_module(f"chatforge.stages.{name}")
        module.run(demo.validated(stage_cfg))
    world = Path(chain.world.out_dir)
    return Shared(world=world, tokenizer=Path(chain.tokenizer.out_dir), sft=Path(chain.sft.out_dir) / "best",
                  rm=Path(chain.rm.out_dir) / "final", comparisons=Path(chain.rank.out_dir),
                  pretrain_text=world / "corpus" / "train.jsonl", val_text=world / "corpus" / "val.jsonl",
                  chain_seconds=time.time() - start)


def method_config(cfg: Config, method: str, shared: Shared, out_dir: Path, seed: int):
    """(stage module, its config) for one method's training run, at the budget of cfg.samples."""
    extra = dict(cfg.overrides.get(method, {}))
    common = {"out_dir": str(out_dir), "seed": seed}
    if method in PPO_FAMILY:
        from chatforge.stages import ppo
        base = load_config(ppo.Config, cfg.ppo_config, validate=False)
        algorithm = {"ppo_ptx": {}, "ppo": {"ptx_coef": 0.0}}.get(method, {"algorithm": method, "ptx_coef": 0.0})
        rollout_batch = extra.get("rollout_batch", base.rollout_batch)
        values = {"policy": str(shared.sft), "reward_model": str(shared.rm), "prompts": str(shared.prompts),
                  "pretrain_data": [str(shared.pretrain_text)], "gold_world": str(shared.world),
                  "steps": max(1, cfg.samples // rollout_batch), "save_every": 0, **algorithm, **common, **extra}
        return ppo, load_config(ppo.Config, cfg.ppo_config, values)
    if method == "dpo":
        from chatforge.stages import dpo
        values = {"model": str(shared.sft), "train_data": [str(shared.comparisons / "train.jsonl")],
                  "val_data": [str(shared.comparisons / "val.jsonl")], **common, **extra}
        return dpo, load_config(dpo.Config, cfg.dpo_config, values)
    if method in ("online_dpo", "rejection_sampling"):
        module = importlib.import_module(f"chatforge.stages.{method}")
        path = getattr(cfg, f"{method}_config")
        base = load_config(module.Config, path, validate=False)
        per_prompt = base.k if method == "online_dpo" else base.n
        rounds = extra.get("rounds", base.rounds)
        values = {"policy": str(shared.sft), "reward_model": str(shared.rm), "prompts": str(shared.prompts),
                  "gold_world": str(shared.world),
                  "prompts_per_round": max(1, cfg.samples // (rounds * extra.get("k" if method == "online_dpo"
                                                                                 else "n", per_prompt))),
                  **common, **extra}
        return module, load_config(module.Config, path, values)
    raise ChatforgeError(f"compare: no training run for method '{method}'")


def policy_samples(method: str, stage_cfg) -> int:
    """Responses the run samples from its policy while it trains."""
    if method in PPO_FAMILY:
        return stage_cfg.steps * stage_cfg.rollout_batch
    if method == "online_dpo":
        return stage_cfg.rounds * stage_cfg.prompts_per_round * stage_cfg.k
    if method == "rejection_sampling":
        return stage_cfg.rounds * stage_cfg.prompts_per_round * stage_cfg.n
    return 0


def final_folder(returned: Path) -> Path:
    """The policy folder a stage's run() returned (some return the run folder, whose final/ holds it)."""
    returned = Path(returned)
    return returned if (returned / "config.json").is_file() else returned / "final"


def greedy_gold(model_dir: Path, prompts: list, gold: GoldJudge) -> list[float]:
    """Gold scores of the model's greedy answers, one a prompt."""
    tokenizer = load_tokenizer(model_dir)
    answers = chat_answers(load_causal_lm(model_dir).eval(), tokenizer, prompts,
                           SamplingParams(max_new_tokens=48, do_sample=False)).texts
    return gold_scores(gold.judgements(prompts, answers))


def run_method(cfg: Config, method: str, shared: Shared, seed_dir: Path, seed: int, sft_greedy: list[float],
               prompts: list, gold: GoldJudge) -> dict:
    """Train (unless sft / best_of_n), evaluate against SFT, write and return result.json."""
    method_dir = seed_dir / method
    result_path = method_dir / "result.json"
    if result_path.is_file():
        print(f"\n== seed {seed}, {method}: {result_path} exists, not rerun", flush=True)
        return json.loads(result_path.read_text())
    print(f"\n== seed {seed}, {method}", flush=True)
    start, samples = time.time(), 0
    policy = shared.sft
    if method not in ("sft", "best_of_n"):
        module, stage_cfg = method_config(cfg, method, shared, method_dir / "run", seed)
        samples = policy_samples(method, stage_cfg)
        policy = final_folder(module.run(stage_cfg))
    seconds = time.time() - start
    eval_cfg = load_config(evaluate.Config, cfg.eval_config, {
        "model": str(policy), "baseline": str(shared.sft), "prompts": str(shared.eval_prompts),
        "max_prompts": cfg.eval_prompts, "samples_per_prompt": cfg.eval_samples, "gold_world": str(shared.world),
        "reward_model": str(shared.rm), "ppl_corpus": [str(shared.val_text)], "out_dir": str(method_dir / "eval"),
        "seed": seed, "best_of_n": cfg.best_of_n if method == "best_of_n" else 0, **cfg.eval})
    eval_path = evaluate.run(eval_cfg)
    report = json.loads(eval_path.read_text())
    eval_samples = read_jsonl(eval_path.parent / "samples.jsonl")
    side = {"sft": "baseline", "best_of_n": "best_of_n"}.get(method, "model")
    greedy = None if method == "best_of_n" else (
        sft_greedy if method == "sft" else greedy_gold(policy, prompts, gold))
    result = leaderboard.seed_result(report, eval_samples, greedy, sft_greedy, seconds, samples, side)
    result.update(method=method, seed=seed, policy=str(policy), eval_seconds=time.time() - start - seconds)
    result_path.write_text(json.dumps(result) + "\n")
    return result


def run(cfg: Config) -> Path:
    """Chain once, every method for every seed, then leaderboard.{json,md}; return the leaderboard.md path."""
    cfg.validate()
    cfg = effective(cfg)
    start = time.time()
    set_threads(cfg.num_threads)
    for method in cfg.methods:  # a typo in a method's overrides fails now, before hours of training
        if method not in ("sft", "best_of_n"):
            load_config(*_config_source(cfg, method), validate=False)
    out_dir = Path(cfg.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out_dir / "config.yaml")
    shared = shared_chain(cfg, out_dir)
    gold = GoldJudge(shared.world)
    prompts = [row["prompt"] for row in read_jsonl(shared.eval_prompts)][:cfg.eval_prompts]
    sft_greedy = greedy_gold(shared.sft, prompts, gold)
    results: dict[str, dict[int, dict]] = {method: {} for method in cfg.methods}
    for seed in cfg.seeds:
        for method in cfg.methods:
            results[method][seed] = run_method(cfg, method, shared, out_dir / f"seed_{seed}", seed, sft_greedy,
                                               prompts, gold)
    rows = [leaderboard.leaderboard_row(method, by_seed) for method, by_seed in results.items()]
    meta = {"date": date.today().isoformat(), "machine": machine(), "versions": versions(), "seeds": cfg.seeds,
            "samples": cfg.samples, "eval_prompts": len(prompts), "eval_samples_per_prompt": cfg.eval_samples,
            "best_of_n": cfg.best_of_n, "quick": cfg.quick, "chain_seconds": round(shared.chain_seconds, 1),
            "wall_seconds": round(time.time() - start, 1), "sft": str(shared.sft), "reward_model": str(shared.rm)}
    header = (f"# chatforge compare: every method from one SFT model\n\n{meta['date']}, {machine().get('cpu', '')}; "
              f"seeds {cfg.seeds}; budget {cfg.samples} policy samples a method; {len(prompts)} held-out prompts x "
              f"{cfg.eval_samples} samples (T=1) and greedy; gold judge of the built-in world; wall "
              f"{meta['wall_seconds']:.0f} s (chain {meta['chain_seconds']:.0f} s).")
    json_path, md_path = leaderboard.write(out_dir, rows, meta, header)
    print("\n" + md_path.read_text())
    print(f"leaderboard: {md_path}, {json_path}")
    return md_path


def _config_source(cfg: Config, method: str) -> tuple:
    """(Config class, YAML path, overrides) of a method's stage, for checking field names early."""
    if method in PPO_FAMILY:
        from chatforge.stages import ppo
        return ppo.Config, cfg.ppo_config, cfg.overrides.get(method, {})
    module = importlib.import_module(f"chatforge.stages.{method}")
    return module.Config, getattr(cfg, f"{method}_config"), cfg.overrides.get(method, {})
