"""The built-in end-to-end run on CPU in minutes:

    world -> tokenizer -> pretrain -> sft -> rank (SFT samples ranked by simulated labelers) -> rm
    -> ppo (ptx_coef 0) and ppo-ptx (ptx_coef > 0), plus, when asked for, plain PPO with a weak KL penalty
    (weak_kl_coef > 0), whose curves look for reward over-optimization, and plain PPO against the gold judge
    instead of the RM (oracle_run: what a perfect RM would give)
    -> report: the base model's fact accuracy and few-shot answers, the greedy answers of every model
    gold-scored, `chatforge eval` of each PPO policy against SFT (win rates, best-of-n, perplexities,
    KL), per-dimension failure rates -> run_dir/report.json (the scoreboard) and report.md (with plots)

Each stage reads its own YAML config (named below) and the demo fills in the paths that chain the
stages together under run_dir. The per-stage mappings (`world`, `tokenizer`, `pretrain`, `sft`, `rank`,
`rm`, `ppo`, `eval`) override fields of those configs, e.g. `chatforge demo pretrain.max_steps=50
world.train_docs=1000`.

Every stage is also a command, and examples/pipeline.sh runs the same chain as plain `chatforge STAGE`
commands; `report_only=true` then evaluates and writes the report card of that run folder (the same
code as the end of `make demo`, so the same numbers).

`seeds=0,1,2` runs the whole chain once per seed into run_dir/seed_N/ (each with its own report card;
a chain whose report.json exists is not rerun, so an interrupted run resumes), then writes
run_dir/seeds.json (every number per seed, mean, std, min, max) and run_dir/report.md (the headline
numbers across seeds, and which of the issue's bars each seed clears).
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path

from chatforge.config import load_config, opt
from chatforge.data.jsonl import read_jsonl
from chatforge.environment import machine, peak_rss_mb, versions
from chatforge.errors import ChatforgeError
from chatforge.eval.answers import chat_answers, fewshot_answers
from chatforge.eval.baselines import unigram_loss
from chatforge.eval.compare import heldout_perplexity, mean, win_rate
from chatforge.eval.demo_report import (add_dimension_numbers, add_intervals, greedy_intervals, overoptimization,
                                        sampled_results, write_answers_section, write_dimensions_section,
                                        write_facts_section, write_ppo_section, write_pretrain_section,
                                        write_rm_section, write_seeds_report, write_sft_section)
from chatforge.eval.dimensions import gold_scores
from chatforge.eval.facts import fact_accuracy, load_clozes
from chatforge.eval.judges import GoldJudge
from chatforge.eval.report import Report
from chatforge.generation import SamplingParams
from chatforge.metrics import read_metrics
from chatforge.models.io import load_causal_lm, load_tokenizer
from chatforge.runtime import set_threads
from chatforge.stages import evaluate, ppo, pretrain, rank, rm, sft, tokenizer
from chatforge.stages import world as world_stage


@dataclass
class Config:
    run_dir: str = opt("runs/demo", "folder for every stage's output and the report")
    world_config: str = opt("configs/world.yaml", "config of the built-in world stage")
    tokenizer_config: str = opt("configs/tokenizer.yaml", "config of the tokenizer stage")
    pretrain_config: str = opt("configs/pretrain_tiny.yaml", "config of the pretraining stage")
    sft_config: str = opt("configs/sft_tiny.yaml", "config of the SFT stage")
    rank_config: str = opt("configs/rank.yaml", "config of the comparisons: SFT samples ranked by simulated labelers")
    rm_config: str = opt("configs/rm_tiny.yaml", "config of the reward-model stage")
    ppo_config: str = opt("configs/ppo_tiny.yaml",
                          "config of the PPO runs (plain PPO gets ptx_coef 0; the weak-KL run its own beta and steps)")
    eval_config: str = opt("configs/eval.yaml", "config of the comparisons of the PPO policies with SFT")
    world: dict = opt({}, "overrides of world config fields")
    tokenizer: dict = opt({}, "overrides of tokenizer config fields")
    pretrain: dict = opt({}, "overrides of pretraining config fields")
    sft: dict = opt({}, "overrides of SFT config fields")
    rank: dict = opt({}, "overrides of rank config fields (e.g. rank.max_prompts=500, rank.k=4)")
    rm: dict = opt({}, "overrides of reward-model config fields")
    ppo: dict = opt({}, "overrides of PPO config fields (every PPO run)")
    eval: dict = opt({}, "overrides of eval config fields")
    eval_prompts: int = opt(200, "held-out prompts the models' answers are gold-scored on in the report")
    select_prompts: int = opt(200, "the held-out prompts after those that SFT scores each epoch on "
                                   "(its eval_skip and eval_max_prompts)")
    weak_kl_coef: float = opt(0.0, "> 0, e.g. 0.05: also run plain PPO at this beta, whose curves look for reward "
                                   "over-optimization (about 2 more minutes; 0 = skip)")
    weak_kl_steps: int = opt(40, "steps of that run")
    oracle_run: bool = opt(False, "also run plain PPO with the gold judge as its reward (reward_source gold): the "
                                  "most this PPO reaches with a perfect RM, so the gap to the RM runs is the RM's "
                                  "(about 2 more minutes)")
    best_of_n: int = opt(8, "n of the best-of-n baseline: n SFT samples per prompt, the RM picks one")
    few_shot_prompts: int = opt(4, "few-shot questions shown in the report as base-model samples")
    num_threads: int = opt(0, "CPU threads for torch (0 = torch's default)")
    report_only: bool = opt(False, "run no stage: evaluate the models already in run_dir and write its report card "
                                   "(a chain run by separate commands, e.g. examples/pipeline.sh; the same "
                                   "overrides as the chain, so the report finds its folders)")
    seeds: list[int] | str = opt([], "run the whole chain once per seed into run_dir/seed_N/ and compare them "
                                     "(seeds=0,1,2 or [0,1,2]); the seed is the world's and every stage's `seed`, "
                                     "except where a per-stage map names `seed` itself (that one is kept for every "
                                     "chain); [] = one chain in run_dir")

    # the comparisons' settings were the demo's own before `chatforge rank` was a stage
    RENAMED = {"comparison_prompts": "rank.max_prompts", "comparison_k": "rank.k",
               "comparison_temperature": "rank.temperature", "comparison_val_share": "rank.val_share",
               "labelers": "rank.labelers"}

    def __post_init__(self):
        self.seeds = parse_seeds(self.seeds)


def parse_seeds(seeds: list[int] | str) -> list[int]:
    """The seeds as a list of ints, from a list or from comma-separated text ("0,1,2")."""
    if isinstance(seeds, str):
        try:
            seeds = [int(part) for part in seeds.split(",") if part.strip()]
        except ValueError:
            raise ChatforgeError(f"demo: field 'seeds': expected integers separated by commas, got {seeds!r}") from None
    if len(set(seeds)) != len(seeds):
        raise ChatforgeError(f"demo: field 'seeds': {seeds} names a seed twice")
    return list(seeds)


def few_shot_examples(world_dir: Path) -> list[tuple[str, str]]:
    """Two ideal single-turn demonstrations, the worked examples of the base model's few-shot prompt."""
    demos = [d for d in read_jsonl(world_dir / "demos" / "val.jsonl")
             if "prompt" in d and d.get("flaw") == "ideal" and d.get("kind", "fact") == "fact"]
    return [("What is 3 plus 4?", "3 plus 4 is 7.")] + [(d["prompt"], d["response"]) for d in demos[:1]]


def run(cfg: Config) -> Path:
    """One chain into run_dir, or with seeds one chain per seed and the comparison across them; return the
    report.md path."""
    if not cfg.seeds:
        return run_chain(cfg)
    run_dir = Path(cfg.run_dir)
    per_seed = {}
    for seed in cfg.seeds:
        chain_cfg = seeded_config(cfg, seed)
        scoreboard = Path(chain_cfg.run_dir) / "report.json"
        if scoreboard.exists() and not cfg.report_only:
            print(f"\n== seed {seed}: {scoreboard} exists, not rerun", flush=True)
        else:
            print(f"\n== seed {seed} -> {chain_cfg.run_dir}", flush=True)
            run_chain(chain_cfg)
        per_seed[seed] = json.loads(scoreboard.read_text())
    json_path, md_path = write_seeds_report(run_dir, per_seed)
    print(f"\nseeds {cfg.seeds}: {md_path} (per-seed report cards under {run_dir}/seed_N/), {json_path}")
    return md_path


SEEDED_STAGES = ("world", "pretrain", "sft", "rank", "rm", "ppo", "eval")  # the stages whose config has a `seed`


def seeded_config(cfg: Config, seed: int) -> Config:
    """The demo config of one chain of a seeds run: run_dir/seed_N, and `seed` in the world's and every seeded
    stage's overrides, unless the user's own overrides name it (theirs win, to hold that stage fixed)."""
    overrides = {stage: {"seed": seed, **getattr(cfg, stage)} for stage in SEEDED_STAGES}
    return dataclasses.replace(cfg, seeds=[], run_dir=str(Path(cfg.run_dir) / f"seed_{seed}"), **overrides)


@dataclass
class Chain:
    """Every stage's config of one chain, with the paths that chain the stages under run_dir filled in."""

    world: world_stage.Config
    tokenizer: tokenizer.Config
    pretrain: pretrain.Config
    sft: sft.Config
    rank: rank.Config
    rm: rm.Config
    ppo: dict[str, ppo.Config]  # by run: ppo, ppo_ptx, and ppo_oracle / ppo_weak_kl when asked for
    eval: dict[str, evaluate.Config]  # by evaluated run (not the weak-KL one, there for its curves)


def ppo_runs(cfg: Config) -> dict[str, dict]:
    """The PPO runs of the chain and what each changes in the PPO config."""
    # RLHF twice, as InstructGPT did, so the alignment tax of plain PPO and what ptx saves are both measured;
    # then (optionally) plain PPO with a weak KL penalty, to show where the gold score stops following the RM
    runs = {"ppo": {"ptx_coef": 0.0}, "ppo_ptx": {}}
    if cfg.oracle_run:
        runs["ppo_oracle"] = {"ptx_coef": 0.0, "reward_source": "gold"}
    if cfg.weak_kl_coef > 0:
        runs["ppo_weak_kl"] = {"ptx_coef": 0.0, "kl_coef": cfg.weak_kl_coef, "steps": cfg.weak_kl_steps}
    return runs


def chain_configs(cfg: Config) -> Chain:
    """Each stage's config: its YAML file, then the paths the demo fills in, then the user's overrides. Field
    names and types are checked here, so a typo fails in seconds; files are not (earlier stages write them)."""
    def load(cls, path: str, overrides: dict):
        return load_config(cls, path, overrides, validate=False)

    run_dir = Path(cfg.run_dir)
    world = load(world_stage.Config, cfg.world_config, {"out_dir": str(run_dir / "world"), **cfg.world})
    world_dir = Path(world.out_dir)
    train_text, val_text = str(world_dir / "corpus" / "train.jsonl"), str(world_dir / "corpus" / "val.jsonl")
    held_out = str(world_dir / "prompts" / "eval.jsonl")
    tok = load(tokenizer.Config, cfg.tokenizer_config,
               {"corpus": [train_text], "out_dir": str(run_dir / "tokenizer"), **cfg.tokenizer})
    pre = load(pretrain.Config, cfg.pretrain_config, {"corpus": [train_text], "val_corpus": [val_text],
                                                      "tokenizer": tok.out_dir, "out_dir": str(run_dir / "pretrain"),
                                                      **cfg.pretrain})
    # SFT scores its epochs on the held-out prompts after the ones the report scores
    sft_cfg = load(sft.Config, cfg.sft_config, {
        "model": str(Path(pre.out_dir) / "final"), "train_data": [str(world_dir / "demos" / "train.jsonl")],
        "val_data": [str(world_dir / "demos" / "val.jsonl")], "out_dir": str(run_dir / "sft"),
        "eval_prompts": held_out, "eval_skip": cfg.eval_prompts, "eval_max_prompts": cfg.select_prompts,
        "gold_world": str(world_dir), **cfg.sft})
    sft_dir = str(Path(sft_cfg.out_dir) / "best")
    rank_cfg = load(rank.Config, cfg.rank_config, {
        "model": sft_dir, "world": str(world_dir), "prompts": str(world_dir / "prompts" / "rl.jsonl"),
        "out_dir": str(run_dir / "comparisons"), **cfg.rank})
    comparisons = Path(rank_cfg.out_dir)
    rm_cfg = load(rm.Config, cfg.rm_config, {
        "model": sft_dir, "train_data": [str(comparisons / "train.jsonl")],
        "val_data": [str(comparisons / "val.jsonl")], "holdout_labelers": [f"sim-{rank_cfg.labelers - 1}"],
        "out_dir": str(run_dir / "rm"), "gold_world": str(world_dir), **cfg.rm})
    rm_dir = str(Path(rm_cfg.out_dir) / "final")
    ppo_cfgs = {name: load(ppo.Config, cfg.ppo_config, {
        "policy": sft_dir, "reward_model": rm_dir, "prompts": str(world_dir / "prompts" / "rl.jsonl"),
        "pretrain_data": [train_text], "out_dir": str(run_dir / name), "gold_world": str(world_dir),
        **cfg.ppo, **changes}) for name, changes in ppo_runs(cfg).items()}
    eval_cfgs = {name: load(evaluate.Config, cfg.eval_config, {
        "model": str(Path(ppo_cfg.out_dir) / "final"), "baseline": sft_dir, "prompts": held_out,
        "max_prompts": cfg.eval_prompts, "gold_world": str(world_dir), "reward_model": rm_dir,
        "ppl_corpus": [val_text], "out_dir": str(run_dir / "eval" / name),
        **({"best_of_n": cfg.best_of_n} if name == "ppo_ptx" else {}), **cfg.eval})
        for name, ppo_cfg in ppo_cfgs.items() if name != "ppo_weak_kl"}
    return Chain(world, tok, pre, sft_cfg, rank_cfg, rm_cfg, ppo_cfgs, eval_cfgs)


class Phases:
    """Announces each phase of a chain (`== name`) and keeps when it started, for the report's time table."""

    def __init__(self):
        self.starts: dict[str, float] = {}

    def start(self, name: str) -> None:
        print(f"\n== {name}", flush=True)
        self.starts[name] = time.time()

    def seconds(self) -> dict[str, float]:
        """Each phase's duration: until the next one started, the last one until now."""
        names, ends = list(self.starts), [*list(self.starts.values())[1:], time.time()]
        return {name: end - self.starts[name] for name, end in zip(names, ends)}


def short_phase_seconds(seconds: dict[str, float]) -> dict[str, float]:
    """{"rank: SFT samples ...": 20.0, "ppo_ptx (ptx_coef 1.0, ...)": 244.0, "report: ...": ...} -> {"rank": 20.0,
    "ppo_ptx": 244.0, "report": the report's phases summed}: report.json's keys stay the same across configs."""
    short: dict[str, float] = {}
    for name, value in seconds.items():
        key = name.split(":")[0].split(" (")[0]
        short[key] = round(short.get(key, 0.0) + value, 1)
    return short


def check_trained(chain: Chain) -> None:
    """Raise a ChatforgeError naming the first stage output the report needs and run_dir lacks."""
    needed = [(Path(chain.world.out_dir) / "world.json", "world"),
              (Path(chain.tokenizer.out_dir) / "tokenizer.json", "tokenizer")]
    needed += [(Path(getattr(chain, stage).out_dir) / "summary.json", stage)
               for stage in ("pretrain", "sft", "rank", "rm")]
    needed += [(Path(ppo_cfg.out_dir) / "final" / "config.json", name) for name, ppo_cfg in chain.ppo.items()]
    for path, stage in needed:
        if not path.is_file():
            raise ChatforgeError(f"{path}: missing, so the {stage} stage has not finished in this run folder; run the "
                                 "chain's stages first (examples/pipeline.sh), or drop report_only to run them all")


def validated(stage_cfg):
    """The stage's config after its own validate() (its input files exist by now)."""
    stage_cfg.validate()
    return stage_cfg


def run_chain(cfg: Config) -> Path:
    """Run every stage on the built-in world, then evaluate and write the report card (report_only: only the
    latter); return the report.md path."""
    start = time.time()
    set_threads(cfg.num_threads)
    chain = chain_configs(cfg)  # a typo in any stage's overrides fails now, before the world is written
    phases = Phases()
    if cfg.report_only:
        check_trained(chain)
    else:
        train(chain, phases)
    return report_card(cfg, chain, phases, start)


def train(chain: Chain, phases: Phases) -> None:
    """The stages, in order, each as its own command runs it (`chatforge world`, `chatforge tokenizer`, ...)."""
    stages = [("world", world_stage, chain.world), ("tokenizer", tokenizer, chain.tokenizer),
              ("pretrain", pretrain, chain.pretrain), ("sft", sft, chain.sft),
              ("rank: SFT samples ranked by simulated labelers", rank, chain.rank), ("rm", rm, chain.rm)]
    stages += [(f"{name} (ptx_coef {ppo_cfg.ptx_coef}, kl_coef {ppo_cfg.kl_coef})", ppo, ppo_cfg)
               for name, ppo_cfg in chain.ppo.items()]
    for name, stage, stage_cfg in stages:
        phases.start(name)
        stage.run(validated(stage_cfg))


def report_card(cfg: Config, chain: Chain, phases: Phases, start: float) -> Path:
    """Evaluate the chain's models and write run_dir/report.{json,md}; return the report.md path."""
    run_dir = Path(cfg.run_dir)
    world_dir = Path(chain.world.out_dir)
    pre_cfg, sft_cfg, rm_cfg = chain.pretrain, chain.sft, chain.rm
    base_dir, sft_dir = Path(pre_cfg.out_dir) / "final", Path(sft_cfg.out_dir) / "best"
    report = Report(run_dir, "chatforge demo: report card")
    gold = GoldJudge(world_dir)
    tok = load_tokenizer(chain.tokenizer.out_dir)
    greedy = SamplingParams(max_new_tokens=48, do_sample=False)

    phases.start("report: the base model's facts and few-shot answers")
    unigram = unigram_loss(tok, pre_cfg.corpus, pre_cfg.val_corpus, pre_cfg.val_tokens)
    base_summary = json.loads((Path(pre_cfg.out_dir) / "summary.json").read_text())
    base = load_causal_lm(base_dir)
    facts = fact_accuracy(base, tok, load_clozes(world_dir / "eval" / "facts.jsonl"))
    eval_prompts = [r["prompt"] for r in read_jsonl(world_dir / "prompts" / "eval.jsonl")][:cfg.eval_prompts]
    base_answers = fewshot_answers(base, tok, eval_prompts, few_shot_examples(world_dir), greedy)
    judged = {"base": gold.judgements(eval_prompts, base_answers)}  # greedy answers, by model
    base_scores = gold_scores(judged["base"])
    print(f"base: fact accuracy {facts['accuracy']:.1%}, gold score {mean(base_scores):.3f} (few-shot)")

    phases.start("report: SFT's answers")
    sft_answers = chat_answers(load_causal_lm(sft_dir), tok, eval_prompts, greedy).texts
    judged["sft"] = gold.judgements(eval_prompts, sft_answers)
    sft_scores = gold_scores(judged["sft"])
    print(f"sft: gold score {mean(sft_scores):.3f} (base {mean(base_scores):.3f})")
    sft_summary = json.loads((Path(sft_cfg.out_dir) / "summary.json").read_text())
    labeling = json.loads((Path(chain.rank.out_dir) / "summary.json").read_text())
    rm_summary = json.loads((Path(rm_cfg.out_dir) / "summary.json").read_text())

    phases.start("report: PPO policies against SFT on held-out prompts")
    evals, greedy_scores = {}, {"base": base_scores, "sft": sft_scores}
    for name, run_eval_cfg in chain.eval.items():
        evals[name] = json.loads(evaluate.run(validated(run_eval_cfg)).read_text())
        answers = chat_answers(load_causal_lm(run_eval_cfg.model), tok, eval_prompts, greedy).texts
        judged[name] = gold.judgements(eval_prompts, answers)
        greedy_scores[name] = gold_scores(judged[name])
    eval_cfg = chain.eval["ppo_ptx"]  # the eval settings every run shares (ppl tokens, bootstrap)
    base_ppl = heldout_perplexity(base, tok, [str(world_dir / "corpus" / "val.jsonl")], eval_cfg.ppl_tokens)
    ppo_runs = {name: Path(ppo_cfg.out_dir) for name, ppo_cfg in chain.ppo.items()}

    report.add("wall_seconds", time.time() - start,
               "the report alone, seconds (report_only)" if cfg.report_only else "the whole demo, seconds")
    report.add("unigram_loss", unigram, "held-out loss (nats/token) of the train corpus's unigram model")
    report.add("base_val_loss", base_summary["val_loss"], "held-out loss (nats/token) of the pretrained base model")
    report.add("base_val_ppl", base_summary["val_ppl"], "held-out perplexity of the base model")
    report.add("base_fact_accuracy", facts["accuracy"],
               f"share of the world's {facts['n']} fact prompts the base model completes correctly (greedy)")
    report.add("base_parameters", base_summary["parameters"], "parameters of the base model")
    report.add("pretrain_tokens", base_summary["tokens_seen"], "tokens the base model was trained on")
    report.add("base_gold_score", mean(base_scores),
               f"mean gold score (best 1.0) of the base model's few-shot answers to {len(eval_prompts)} held-out prompts")
    report.add("sft_gold_score", mean(sft_scores), "mean gold score of the SFT model's answers to the same prompts")
    report.add("sft_best_epoch", sft_summary["best_epoch"], f"SFT epoch kept (select_by: {sft_summary['selected_by']})")
    report.add("labeler_agreement", labeling["agreement"],
               "pairwise agreement of two independent simulated labelers on the comparison pools")
    report.add("comparisons", labeling["comparisons"], f"ranked comparisons (K = 2..{labeling['k']}) of SFT samples")
    val = rm_summary["val"]
    report.add("rm_val_accuracy", val["accuracy"], f"RM pairwise accuracy on {val['pairs']} held-out pairs")
    report.add("rm_holdout_labeler_accuracy", val["accuracy_by_labeler"].get(f"sim-{labeling['labelers'] - 1}"),
               "RM pairwise accuracy on the held-out labeler's comparisons")
    report.add("rm_gold_ceiling", val.get("gold_ceiling"),
               "pairwise accuracy the gold scorer itself reaches on the same held-out labels (ties half): the "
               "best any RM can do against noisy labels")
    report.add("rm_gold_agreement", val.get("gold_agreement"),
               "share of held-out pairs (gold ties excluded) the RM orders as the gold scorer does")
    report.add("rm_gold_agreement_correctness", val.get("gold_agreement_by_contrast", {}).get("correctness"),
               "the same on the pairs whose answers differ in correctness (right vs wrong fact or sum, refusal vs "
               "compliance), not only in form")
    ptx_eval, ppo_eval = evals["ppo_ptx"], evals["ppo"]
    report.add("ppo_gold_score", mean(greedy_scores["ppo"]), "mean gold score of plain PPO's greedy answers "
               "(same prompts and decoding as sft_gold_score)")
    report.add("ppo_ptx_gold_score", mean(greedy_scores["ppo_ptx"]), "the same for PPO-ptx")
    report.add("ppo_ptx_winrate_vs_sft", ptx_eval["winrate_gold"],
               f"share of held-out samples (T=1, {ptx_eval['samples_per_prompt']} per prompt) where the gold "
               "judge prefers PPO-ptx's answer to SFT's (ties half)")
    report.add("ppo_winrate_vs_sft", ppo_eval["winrate_gold"], "the same for plain PPO")
    if "ppo_oracle" in evals:
        report.add("oracle_winrate_vs_sft", evals["ppo_oracle"]["winrate_gold"], "the same for plain PPO trained "
                   "against the gold judge instead of the RM: what a perfect RM would give")
    report.add("ppo_ptx_winrate_vs_sft_greedy", win_rate(greedy_scores["ppo_ptx"], sft_scores),
               "gold win rate of PPO-ptx's greedy answers over SFT's greedy answers (ties half)")
    report.add("ppo_ptx_winrate_vs_sft_rm", ptx_eval["winrate_rm"], "win rate of PPO-ptx over SFT judged by the RM")
    report.add("sft_sampled_gold_score", ptx_eval["baseline"]["gold_score"], "mean gold score of SFT samples (T=1)")
    report.add("ppo_sampled_gold_score", ppo_eval["model"]["gold_score"], "mean gold score of plain PPO samples (T=1)")
    report.add("ppo_ptx_sampled_gold_score", ptx_eval["model"]["gold_score"], "mean gold score of PPO-ptx samples (T=1)")
    if "best_of_n" in ptx_eval:
        report.add("bon_gold_score", ptx_eval["best_of_n"]["gold_score"],
                   f"mean gold score of best-of-{cfg.best_of_n} SFT samples (T=1), the RM picking")
    report.add("base_ppl", base_ppl, "perplexity of the base model on held-out pretraining text")
    report.add("sft_ppl", ptx_eval["baseline"]["ppl"], "the same for SFT")
    report.add("ppo_ppl", ppo_eval["model"]["ppl"], "the same for plain PPO")
    report.add("ppo_ptx_ppl", ptx_eval["model"]["ppl"], "the same for PPO-ptx (the alignment tax is the rise over SFT)")
    report.add("ppo_kl", ppo_eval["model"]["kl_to_reference"], "KL(plain PPO || SFT) per response, nats, on its samples")
    report.add("ppo_ptx_kl", ptx_eval["model"]["kl_to_reference"], "KL(PPO-ptx || SFT) per response, nats")
    report.add("ppo_ptx_rm_reward", ptx_eval["model"]["reward_mean"], "mean RM reward of PPO-ptx samples "
               f"(SFT samples: {ptx_eval['baseline']['reward_mean']:.3f})")
    if "ppo_weak_kl" in ppo_runs:
        shape = overoptimization(read_metrics(ppo_runs["ppo_weak_kl"]))
        report.add("weak_kl_gold_peak_step", shape["peak_step"], f"plain PPO with beta {cfg.weak_kl_coef}: the step "
                   "where its rollouts' gold score (10-step mean) peaked")
        report.add("weak_kl_gold_peak", shape["gold_peak"], "that peak gold score")
        report.add("weak_kl_gold_end", shape["gold_end"], "its gold score at the end (below the peak: over-optimization)")
        report.add("weak_kl_reward_end", shape["reward_end"], f"its RM reward at the end (at the peak: "
                   f"{shape['reward_peak']:.3f})")
    report.add("versions", versions(), "python, chatforge and the packages that move the numbers (constraints.txt)")
    report.add("machine", machine(), "the CPU, logical cores, torch threads, OS and GPU: numbers differ between CPUs")
    sampled = sampled_results(evals)
    add_dimension_numbers(report, judged, sampled)
    add_intervals(report, greedy_scores, evals, eval_cfg.ci_resamples, eval_cfg.seed)
    write_pretrain_section(report, Path(pre_cfg.out_dir), unigram)
    write_facts_section(report, facts, cfg.few_shot_prompts, eval_prompts, base_answers)
    write_sft_section(report, sft_summary, mean(base_scores))
    write_rm_section(report, rm_summary, labeling)
    write_ppo_section(report, ppo_runs, evals, {name: mean(scores) for name, scores in greedy_scores.items()})
    write_dimensions_section(report, judged, sampled,
                             greedy_intervals(greedy_scores, eval_cfg.ci_resamples, eval_cfg.seed))
    write_answers_section(report, eval_prompts, base_answers, base_scores, sft_answers, sft_scores)
    stage_seconds = phases.seconds()
    report.add("stage_seconds", short_phase_seconds(stage_seconds),
               "seconds per stage (the report's three phases summed; the table below has them apart)")
    report.add("peak_rss_mb", peak_rss_mb(), "the demo process's peak resident memory, MiB (every stage runs in it)")
    report.section("Time per stage", "| stage | seconds |\n|---|---|\n" + "\n".join(
        f"| {name} | {seconds:.0f} |" for name, seconds in stage_seconds.items()))
    json_path, md_path = report.save()

    print(f"\nunigram loss {unigram:.3f} | base val loss {base_summary['val_loss']:.3f} | base fact accuracy "
          f"{facts['accuracy']:.1%} | gold score base {mean(base_scores):.3f} -> SFT {mean(sft_scores):.3f} | "
          f"labelers agree {labeling['agreement']:.3f}, RM val accuracy {val['accuracy']:.3f} | PPO-ptx gold "
          f"{mean(greedy_scores['ppo_ptx']):.3f}, win rate vs SFT {ptx_eval['winrate_gold']:.3f} | ppl SFT "
          f"{ptx_eval['baseline']['ppl']:.2f}, PPO {ppo_eval['model']['ppl']:.2f}, PPO-ptx {ptx_eval['model']['ppl']:.2f} | "
          f"{time.time() - start:.0f} s")
    print(f"report card: {md_path}\nscoreboard:  {json_path}\nmodels:      {base_dir}, {sft_dir}, "
          f"{Path(rm_cfg.out_dir) / 'final'}, " + ", ".join(run_eval_cfg.model for run_eval_cfg in chain.eval.values()))
    return md_path
