"""Iterated RLHF (InstructGPT steps 2-3 repeated; Anthropic's online iteration): N rounds of

    sample K responses per prompt from the current policy -> rank them (the built-in world's simulated
    labelers, or a labeling job's export) -> retrain the reward model on every comparison so far (old +
    new) -> PPO from the current policy against the new RM -> gold-score the new policy on held-out prompts

Every round's RM starts from the reference (SFT) model and sees every comparison collected so far, so
later rounds fix the RM where the policy has moved (the responses it now writes). Every round's PPO keeps
the SFT model as the KL reference, so the total drift from SFT stays bounded across rounds; it starts
from the current policy, or (ppo_from = reference) afresh from SFT against the new RM, as Anthropic
retrained its online policies.

Before the first round the start policy is evaluated the same way (same judge, prompts, decoding and
seed), so "round N against round N-1" is a like-for-like comparison; with first_round = 2 and the
demo's PPO-ptx policy as `policy`, its row is the demo's one round of RLHF. Each round's gold score
comes with its standard error over prompts and its gain over the row before, paired by prompt. With
`control`, each round also runs its PPO a second time from the same start policy, same steps and seed,
but against the previous round's RM: what more PPO would have given without new rankings.

    out_dir/round_N/comparisons/{train,val}.jsonl   this round's new rankings (samples of the round's start policy)
    out_dir/round_N/rm/, round_N/ppo/               the stages' own run folders (final/ = the models)
    out_dir/round_N/eval/                           the round's policy against the reference (`chatforge eval`)
    out_dir/round_N/control_ppo/, control_eval/     the control run (control=true)
    out_dir/start/eval/                             the start policy, evaluated the same way
    out_dir/iterate.json                            per round: comparisons, RM accuracy, gold score +- SE, gain, KL
    out_dir/report.md, report.json, plots/          the same as a report card

A finished step of a round (its output file exists) is not redone, and PPO resumes from its
checkpoints, so an interrupted run continues where it stopped.
"""

from __future__ import annotations

import json
import math
import random
import statistics
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from chatforge.config import load_config, opt, require_above_zero, require_positive, save_config
from chatforge.data.formats import data_files, read_comparisons, read_prompts
from chatforge.data.jsonl import read_jsonl, write_jsonl
from chatforge.errors import ChatforgeError
from chatforge.eval.answers import sample_pools
from chatforge.eval.compare import mean
from chatforge.eval.report import Report
from chatforge.generation import SamplingParams
from chatforge.models.io import check_model_dir, load_causal_lm
from chatforge.models.reward import check_reward_model_dir
from chatforge.models.templates import load_chat_tokenizer
from chatforge.runtime import set_threads
from chatforge.stages import evaluate, ppo, rm
from chatforge.world.gold import GoldScorer
from chatforge.world.labeler import label_pools, read_labeler_file


@dataclass
class Config:
    policy: str = opt("", "model the first round samples from and starts PPO from (the SFT model, or a PPO policy)")
    reference: str = opt("", "the SFT model: every RM starts from it and every PPO round keeps it as the KL "
                             "reference ('' = policy)")
    reward_model: str = opt("", "the RM `policy` was trained against (a PPO policy as start): the first round's "
                                "control run continues with it")
    prompts: str = opt("", 'JSONL of {"prompt": ...} RL prompts: PPO trains on them and comparisons are drawn from them')
    eval_prompts: str = opt("", "held-out prompts each round's policy is gold-scored on (JSONL)")
    world: str = opt("", "built-in world folder: its simulated labelers rank the samples, its gold scorer judges")
    pretrain_data: list[str] = opt([], "pretraining text for PPO-ptx (the PPO config's ptx_coef > 0)")
    comparisons: list[str] = opt([], "earlier comparison files (e.g. the first RM's train.jsonl): kept in every round")
    val_comparisons: list[str] = opt([], "earlier held-out comparisons, added to every round's validation set")
    rounds: int = opt(2, "rounds of sample -> rank -> RM -> PPO")
    first_round: int = opt(1, "number of the first round (e.g. 2 when round 1 is an earlier PPO run)")
    comparison_prompts: int = opt(1500, "prompts whose samples are ranked in each round")
    comparison_k: int = opt(4, "samples per prompt (duplicates dropped, so K is 2..this)")
    temperature: float = opt(1.0, "sampling temperature of the samples that are ranked")
    val_share: float = opt(0.15, "share of each round's new comparisons held out for RM accuracy")
    rankings_from: str = opt("simulated", "who ranks: 'simulated' (the world's labelers) or an exported comparisons "
                                          "file a labeling job writes, '{round}' standing for the round number")
    wait_minutes: float = opt(0.0, "with a labeling job: how long to wait for its export file before failing")
    labelers: int = opt(5, "simulated labelers; the last one is held out (its labels never train)")
    labeler_agreement: float = opt(0.0, "0 = the simulated labelers keep the world's labeler.json noise every round "
                                        "(the same people); else their noise is calibrated so two of them agree "
                                        "this often on each round's pools")
    ppo_from: Literal["policy", "reference"] = opt(
        "policy", "each round's PPO starts from the current policy, or afresh from the reference (SFT) against the "
                  "new RM; either way the next round ranks samples of the round's PPO policy")
    control: bool = opt(False, "also run each round's PPO against the previous round's RM (no new rankings)")
    rm_config: str = opt("configs/rm_tiny.yaml", "config of every round's reward model")
    ppo_config: str = opt("configs/ppo_tiny.yaml", "config of every round's PPO")
    eval_config: str = opt("configs/eval.yaml", "config of the per-round comparison with the reference")
    rm: dict = opt({}, "overrides of reward-model config fields")
    ppo: dict = opt({}, "overrides of PPO config fields")
    eval: dict = opt({}, "overrides of eval config fields")
    out_dir: str = opt("runs/iterate", "run folder")
    seed: int = opt(0, "seed of prompt choice and sampling")
    num_threads: int = opt(0, "CPU threads for torch (0 = torch's default)")

    def validate(self):
        """Check everything that can be checked before a model is loaded."""
        for name in ("policy", "prompts", "eval_prompts", "world"):
            if not getattr(self, name):
                raise ChatforgeError(f"iterate: field '{name}' is empty")
        check_model_dir(self.policy)
        if self.reference:
            check_model_dir(self.reference)
        if self.reward_model:
            check_reward_model_dir(self.reward_model, "reward_model")
        for name in ("prompts", "eval_prompts"):
            if not Path(getattr(self, name)).is_file():
                raise ChatforgeError(f"{getattr(self, name)}: field '{name}': file does not exist")
        if not (Path(self.world) / "world.json").is_file():
            raise ChatforgeError(f"{self.world}: field 'world': no world.json; point it at a folder written by "
                                 "`chatforge world`")
        if self.comparisons or self.val_comparisons:
            data_files(self.comparisons + self.val_comparisons)
        require_positive(self, "iterate", ("rounds", "first_round", "comparison_prompts"))
        require_above_zero(self, "iterate", ("temperature",))
        if not 2 <= self.comparison_k <= 9:
            raise ChatforgeError(f"iterate: field 'comparison_k' must be 2..9, got {self.comparison_k}")
        if not 0 < self.val_share < 1:
            raise ChatforgeError(f"iterate: field 'val_share' must be in (0, 1), got {self.val_share}")
        if self.labeler_agreement and not 0.5 < self.labeler_agreement <= 1:
            raise ChatforgeError(f"iterate: field 'labeler_agreement' must be 0 or in (0.5, 1], "
                                 f"got {self.labeler_agreement}")
        if self.rankings_from != "simulated" and not self.rankings_from.endswith(".jsonl"):
            raise ChatforgeError(f"iterate: field 'rankings_from' must be 'simulated' or a .jsonl export file "
                                 f"(e.g. runs/label/round_{{round}}.jsonl), got {self.rankings_from!r}")


def wait_for_export(path: Path, minutes: float, poll_seconds: float = 10.0) -> Path:
    """Return `path` once it holds comparisons, polling for up to `minutes`; fail saying what was expected.

    `label export` writes every file, empty when nothing is ranked yet: an empty file is still waited for."""
    deadline = time.time() + minutes * 60
    while not (path.is_file() and path.stat().st_size > 0):
        if time.time() >= deadline:
            raise ChatforgeError(f"{path}: field 'rankings_from': no export holding comparisons after waiting "
                                 f"{minutes:g} minutes; export the labeling job's comparisons there (or raise "
                                 "wait_minutes) and rerun")
        time.sleep(min(poll_seconds, max(deadline - time.time(), 0.0)))
    return path


def collect_comparisons(cfg: Config, policy_dir: str, round_dir: Path, round_no: int, scorer: GoldScorer,
                        max_new_tokens: int) -> dict:
    """Have samples of the round's policy ranked, write them as train/val; return the stats."""
    seed = cfg.seed * 1000 + round_no
    if cfg.rankings_from == "simulated":
        prompts = [p for p, _ in read_prompts(cfg.prompts)]
        random.Random(seed).shuffle(prompts)
        prompts = prompts[:cfg.comparison_prompts]
        policy, tokenizer = load_causal_lm(policy_dir), load_chat_tokenizer(policy_dir)
        sampling = SamplingParams(max_new_tokens=max_new_tokens, do_sample=True, temperature=cfg.temperature,
                                  seed=seed)
        pools = sample_pools(policy, tokenizer, prompts, cfg.comparison_k, sampling)
        panel = read_labeler_file(cfg.world)  # the world's labelers: their noise (unless recalibrated) and leanings
        noise = None if cfg.labeler_agreement else panel["noise"]
        records, labeling = label_pools(scorer, pools, cfg.labelers, cfg.labeler_agreement or 0.73, seed, noise,
                                        panel["leanings"])
        stats = {"prompts_sampled": len(prompts), "pools": len(pools),
                 "mean_pool_size": mean(len(r) for _, r in pools), "labeler_noise": labeling["noise"],
                 "labeler_agreement": labeling["agreement"]}
    else:
        # the labeling job samples the policy itself (`chatforge label create-job model=...`)
        export = Path(cfg.rankings_from.format(round=round_no))
        if not export.is_file():
            print(f"iterate: round {round_no} waits up to {cfg.wait_minutes:g} min for {export}: rank samples of "
                  f"{policy_dir}, e.g. `chatforge label create-job db=DB name=round{round_no} model={policy_dir} "
                  f"prompts={cfg.prompts} k={cfg.comparison_k}`, then `chatforge label export db=DB "
                  f"out_dir={export.parent}`", flush=True)
        comparisons, _ = read_comparisons(wait_for_export(export, cfg.wait_minutes))
        records = [{"prompt": c.prompt, "responses": c.responses, **({"labeler": c.labeler} if c.labeler else {})}
                   for c in comparisons]
        stats = {"export": str(export)}
    random.Random(round_no).shuffle(records)
    n_val = int(len(records) * cfg.val_share)
    write_jsonl(round_dir / "comparisons" / "train.jsonl", records[n_val:])
    write_jsonl(round_dir / "comparisons" / "val.jsonl", records[:n_val])
    return {"comparisons": len(records), **stats}


def standard_error(values) -> float:
    """Standard error of the mean (nan for fewer than two values)."""
    values = list(values)
    return statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else math.nan


def gold_by_prompt(eval_dir: Path) -> dict[int, float]:
    """Mean gold score of the model's samples of each prompt (by its position), from `chatforge eval`'s samples.jsonl."""
    scores = defaultdict(list)
    position = -1
    for sample in read_jsonl(eval_dir / "samples.jsonl"):
        position += sample["sample"] == 0  # prompt-major: sample 0 starts the next prompt
        scores[position].append(sample["model_gold"])
    return {prompt: mean(values) for prompt, values in scores.items()}


def paired_gain(after: dict, before: dict) -> tuple[float, float]:
    """Mean per-prompt gold gain of `after` over `before` on their shared prompts, and its standard error."""
    gains = [after[prompt] - before[prompt] for prompt in after if prompt in before]
    return mean(gains), standard_error(gains)


def evaluate_policy(cfg: Config, policy: str, reference: str, rm_dir: str, eval_dir: Path) -> tuple[dict, dict]:
    """(numbers, gold score by prompt) of `policy` against the reference, by `chatforge eval` (run once)."""
    eval_cfg = load_config(evaluate.Config, cfg.eval_config, {
        "model": policy, "baseline": reference, "prompts": cfg.eval_prompts, "gold_world": cfg.world,
        "reward_model": rm_dir, "out_dir": str(eval_dir), **cfg.eval})
    if not (eval_dir / "eval.json").is_file():
        evaluate.run(eval_cfg)
    result = json.loads((eval_dir / "eval.json").read_text())
    by_prompt = gold_by_prompt(eval_dir)
    numbers = {"gold_score": result["model"]["gold_score"], "gold_se": standard_error(by_prompt.values()),
               "reference_gold_score": result["baseline"]["gold_score"],
               "winrate_vs_reference": result["winrate_gold"], "kl_to_reference": result["model"]["kl_to_reference"],
               "ppl": result["model"]["ppl"]}
    return numbers, by_prompt


def run_ppo(cfg: Config, policy: str, reference: str, rm_dir: str, out_dir: Path, seed: int) -> str:
    """PPO from `policy` against `rm_dir` with `reference` as the KL reference (run once); the policy folder."""
    ppo_cfg = load_config(ppo.Config, cfg.ppo_config, {
        "policy": policy, "reference": reference, "reward_model": rm_dir, "prompts": cfg.prompts,
        "pretrain_data": cfg.pretrain_data, "out_dir": str(out_dir), "gold_world": cfg.world, "seed": seed,
        **cfg.ppo})
    if not (out_dir / "summary.json").is_file():
        ppo.run(ppo_cfg)
    return str(out_dir / "final")


def shown(value, digits: int = 3) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def write_report(out_dir: Path, rows: list[dict]) -> Path:
    """report.json / report.md with a row per round and a plot of the gold score per round."""
    report = Report(out_dir, "chatforge iterate: gold score per round of RLHF")
    for row in rows:
        name = f"round_{row['round']}"
        report.add(f"{name}_gold_score", row["gold_score"], f"mean gold score of {name}'s policy, T=1 samples of "
                   "the held-out prompts")
        report.add(f"{name}_gold_se", row["gold_se"], "its standard error over prompts")
        if "gold_gain" in row:
            report.add(f"{name}_gold_gain", row["gold_gain"], "gain over the round before, paired by prompt")
            report.add(f"{name}_gold_gain_se", row["gold_gain_se"], "its standard error over prompts")
        report.add(f"{name}_winrate_vs_reference", row["winrate_vs_reference"], "gold win rate against the reference")
        report.add(f"{name}_kl", row["kl_to_reference"], "KL to the reference per response, nats")
        if row.get("rm_val_accuracy") is not None:
            report.add(f"{name}_rm_val_accuracy", row["rm_val_accuracy"], "the round's RM on all held-out comparisons")
        if row.get("control_gold_score") is not None:
            report.add(f"{name}_control_gold_score", row["control_gold_score"],
                       "the same PPO against the previous round's RM (no new rankings)")
    header = ("| round | new comparisons (pools / prompts) | labeler agreement | RM val acc | RM gold agreement | "
              "gold score +- SE | gain over previous +- SE | win rate vs reference | KL | control gold (gain over it) |")
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    for row in rows:
        pools = str(row.get("comparisons", "-"))
        if "pools" in row:  # simulated labelers: prompts with 2+ distinct samples / prompts sampled
            pools += f" ({row['pools']} / {row['prompts_sampled']})"
        gain = f"{shown(row.get('gold_gain'))} +- {shown(row.get('gold_gain_se'))}" if "gold_gain" in row else "-"
        control = (f"{shown(row['control_gold_score'])} ({shown(row['control_gain'])} +- "
                   f"{shown(row['control_gain_se'])})" if row.get("control_gold_score") is not None else "-")
        lines.append(f"| {row['round']} | {pools} | {shown(row.get('labeler_agreement'))} | "
                     f"{shown(row.get('rm_val_accuracy'))} | {shown(row.get('rm_gold_agreement'))} | "
                     f"{shown(row['gold_score'])} +- {shown(row['gold_se'])} | {gain} | "
                     f"{shown(row['winrate_vs_reference'])} | {shown(row['kl_to_reference'], 2)} | {control} |")
    rounds = [row["round"] for row in rows]
    image = report.plot("gold_per_round", {"gold score": (rounds, [row["gold_score"] for row in rows]),
                                           "win rate vs reference": (rounds, [row["winrate_vs_reference"]
                                                                              for row in rows])},
                        "round", "held-out score", "Iterated RLHF: gold score per round")
    report.section("Rounds", "\n".join(lines) + f"\n\nRow {rows[0]['round']} is the start policy. Gold scores are "
                   "means over T=1 samples of the held-out prompts (the same prompts, decoding and seed in every "
                   "row); SE is the standard error over prompts, gains are paired by prompt.\n\n" + image)
    return report.save()[1]


def run(cfg: Config) -> Path:
    """Run the rounds; return the last round's policy folder."""
    set_threads(cfg.num_threads)
    out_dir = Path(cfg.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out_dir / "config.yaml")
    # every stage's fields are checked now, so a typo fails before the first round samples anything
    for stage_cls, path, overrides in ((rm.Config, cfg.rm_config, cfg.rm), (ppo.Config, cfg.ppo_config, cfg.ppo),
                                       (evaluate.Config, cfg.eval_config, cfg.eval)):
        load_config(stage_cls, path, overrides, validate=False)
    rm_format = load_config(rm.Config, cfg.rm_config, cfg.rm, validate=False).format
    if rm_format not in ("auto", "chatforge"):  # the rounds write K-wise rankings, a chatforge shape
        raise ChatforgeError(f"iterate: field 'rm.format': the rounds' comparisons are chatforge rankings, which "
                             f"format={rm_format} does not read; use auto (it reads earlier comparisons of any shape)")
    max_new_tokens = load_config(ppo.Config, cfg.ppo_config, cfg.ppo, validate=False).max_new_tokens
    if cfg.num_threads:  # the stages set their own threads; they get iterate's unless told otherwise
        threads = {"num_threads": cfg.num_threads}
        cfg.rm, cfg.ppo, cfg.eval = ({**threads, **overrides} for overrides in (cfg.rm, cfg.ppo, cfg.eval))
    reference = cfg.reference or cfg.policy
    scorer = GoldScorer.from_dir(cfg.world)
    train_files, val_files = list(cfg.comparisons), list(cfg.val_comparisons)

    print(f"\n== iterate: evaluating the start policy {cfg.policy}", flush=True)
    start, before = evaluate_policy(cfg, cfg.policy, reference, cfg.reward_model, out_dir / "start" / "eval")
    rows = [{"round": cfg.first_round - 1, "policy": cfg.policy, **start}]
    policy, previous_rm = cfg.policy, cfg.reward_model
    for round_no in range(cfg.first_round, cfg.first_round + cfg.rounds):
        round_dir = out_dir / f"round_{round_no}"
        print(f"\n== iterate: round {round_no}, sampling {policy}", flush=True)
        stats_file = round_dir / "round.json"
        if not stats_file.is_file():
            stats = collect_comparisons(cfg, policy, round_dir, round_no, scorer, max_new_tokens)
            stats_file.write_text(json.dumps(stats, indent=1))
        row = {"round": round_no, "start_policy": policy, **json.loads(stats_file.read_text())}
        train_files.append(str(round_dir / "comparisons" / "train.jsonl"))
        val_files.append(str(round_dir / "comparisons" / "val.jsonl"))
        if "export" in row and (Path(row["export"]).parent / "comparisons_heldout.jsonl").is_file():
            # `chatforge label export` keeps held-out labelers' rankings apart: they only evaluate
            val_files.append(str(Path(row["export"]).parent / "comparisons_heldout.jsonl"))

        rm_cfg = load_config(rm.Config, cfg.rm_config, {
            "model": reference, "train_data": train_files, "val_data": val_files,
            "holdout_labelers": [f"sim-{cfg.labelers - 1}"] if cfg.rankings_from == "simulated" else [],
            "out_dir": str(round_dir / "rm"), "gold_world": cfg.world, **cfg.rm})
        if not (Path(rm_cfg.out_dir) / "summary.json").is_file():
            rm.run(rm_cfg)
        rm_dir = str(Path(rm_cfg.out_dir) / "final")
        val = json.loads((Path(rm_cfg.out_dir) / "summary.json").read_text())["val"]

        ppo_start = policy if cfg.ppo_from == "policy" else reference
        new_policy = run_ppo(cfg, ppo_start, reference, rm_dir, round_dir / "ppo", cfg.seed + round_no)
        numbers, by_prompt = evaluate_policy(cfg, new_policy, reference, rm_dir, round_dir / "eval")
        gain, gain_se = paired_gain(by_prompt, before)
        row.update(policy=new_policy, ppo_start=ppo_start, rm_val_accuracy=val["accuracy"],
                   rm_gold_agreement=val.get("gold_agreement"), **numbers, gold_gain=gain, gold_gain_se=gain_se)
        rows.append(row)
        (out_dir / "iterate.json").write_text(json.dumps({"rounds": rows}, indent=1))
        if cfg.control and previous_rm:
            # the same PPO (start, steps, seed) against the RM the start policy already had: the gain
            # over it is what this round's new rankings added beyond more optimisation
            control_policy = run_ppo(cfg, ppo_start, reference, previous_rm, round_dir / "control_ppo",
                                     cfg.seed + round_no)
            control, control_by_prompt = evaluate_policy(cfg, control_policy, reference, rm_dir,
                                                         round_dir / "control_eval")
            control_gain, control_gain_se = paired_gain(by_prompt, control_by_prompt)
            row.update(control_gold_score=control["gold_score"], control_kl=control["kl_to_reference"],
                       control_gain=control_gain, control_gain_se=control_gain_se)
        print(f"iterate: round {round_no}: {row['comparisons']} new comparisons, RM val accuracy "
              f"{row['rm_val_accuracy']:.3f}, gold score {row['gold_score']:.3f} +- {row['gold_se']:.3f} "
              f"(gain {gain:+.3f} +- {gain_se:.3f}; reference {row['reference_gold_score']:.3f}), win rate vs "
              f"reference {row['winrate_vs_reference']:.3f}, KL {row['kl_to_reference']:.2f}"
              + (f", control gold {row['control_gold_score']:.3f}" if "control_gold_score" in row else ""),
              flush=True)
        (out_dir / "iterate.json").write_text(json.dumps({"rounds": rows}, indent=1))
        report_md = write_report(out_dir, rows)
        policy, previous_rm, before = new_policy, rm_dir, by_prompt
    print(f"iterate: done -> {policy}\n  per round: {out_dir / 'iterate.json'}\n  report:    {report_md}")
    return Path(policy)
