"""Iterated RLHF (InstructGPT steps 2-3 repeated; Anthropic's online iteration): N rounds of

    sample K responses per prompt from the current policy -> rank them (simulated labelers of the
    built-in world) -> retrain the reward model on all comparisons so far (old + new) -> PPO from the
    current policy against the new RM -> gold-score the new policy on held-out prompts

Every round's RM starts from the reference (SFT) model and sees every comparison collected so far, so
later rounds fix the RM where the policy has moved (the responses it now writes). Every round's PPO keeps
the SFT model as the KL reference, so the total drift from SFT stays bounded across rounds.

    out_dir/round_N/comparisons/{train,val}.jsonl   this round's new rankings (samples of the round's start policy)
    out_dir/round_N/rm/, round_N/ppo/               the stages' own run folders (final/ = the models)
    out_dir/round_N/eval/eval.json                  the round's policy against the reference (`chatforge eval`)
    out_dir/iterate.json                            per round: comparisons, RM accuracy, gold score, win rate, KL

A finished round (its eval.json exists) is not redone, and PPO resumes from its checkpoints, so an
interrupted run continues where it stopped.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

from chatforge.config import load_config, opt, require_positive, save_config
from chatforge.data.formats import data_files, read_prompts
from chatforge.errors import ChatforgeError
from chatforge.generation import SamplingParams
from chatforge.models.io import check_model_dir, load_causal_lm, load_tokenizer
from chatforge.runtime import set_threads
from chatforge.stages import evaluate, ppo, rm
from chatforge.world.collect import label_pools, sample_pools
from chatforge.world.gold import GoldScorer


@dataclass
class Config:
    policy: str = opt("", "model the first round samples from and starts PPO from (the SFT model, or a PPO policy)")
    reference: str = opt("", "the SFT model: every RM starts from it and every PPO round keeps it as the KL "
                             "reference ('' = policy)")
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
    labelers: int = opt(5, "simulated labelers; the last one is held out (its labels never train)")
    labeler_agreement: float = opt(0.0, "agreement two simulated labelers reach (0 = the world's labeler.json)")
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
        for name in ("prompts", "eval_prompts"):
            if not Path(getattr(self, name)).is_file():
                raise ChatforgeError(f"{getattr(self, name)}: field '{name}': file does not exist")
        if not (Path(self.world) / "world.json").is_file():
            raise ChatforgeError(f"{self.world}: field 'world': no world.json; point it at a folder written by "
                                 "`chatforge world`")
        if self.comparisons or self.val_comparisons:
            data_files(self.comparisons + self.val_comparisons)
        require_positive(self, "iterate", ("rounds", "first_round", "comparison_prompts", "temperature"))
        if not 2 <= self.comparison_k <= 9:
            raise ChatforgeError(f"iterate: field 'comparison_k' must be 2..9, got {self.comparison_k}")
        if not 0 < self.val_share < 1:
            raise ChatforgeError(f"iterate: field 'val_share' must be in (0, 1), got {self.val_share}")


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def collect_comparisons(cfg: Config, policy_dir: str, round_dir: Path, round_no: int, scorer: GoldScorer,
                        agreement: float) -> dict:
    """Sample the round's policy on fresh prompts, rank by simulated labelers, write train/val; return stats."""
    prompts = [p for p, _ in read_prompts(cfg.prompts)]
    random.Random(cfg.seed * 1000 + round_no).shuffle(prompts)
    prompts = prompts[:cfg.comparison_prompts]
    policy, tokenizer = load_causal_lm(policy_dir), load_tokenizer(policy_dir)
    sampling = SamplingParams(max_new_tokens=48, do_sample=True, temperature=cfg.temperature,
                              seed=cfg.seed * 1000 + round_no)
    pools = sample_pools(policy, tokenizer, prompts, cfg.comparison_k, sampling)
    records, labeling = label_pools(scorer, pools, cfg.labelers, agreement, cfg.seed * 1000 + round_no)
    random.Random(round_no).shuffle(records)
    n_val = int(len(records) * cfg.val_share)
    write_jsonl(round_dir / "comparisons" / "train.jsonl", records[n_val:])
    write_jsonl(round_dir / "comparisons" / "val.jsonl", records[:n_val])
    return {"comparisons": len(records), "labeler_agreement": labeling["agreement"]}


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
    reference = cfg.reference or cfg.policy
    scorer = GoldScorer.from_dir(cfg.world)
    agreement = cfg.labeler_agreement or json.loads((Path(cfg.world) / "labeler.json").read_text())["agreement"]
    train_files, val_files = list(cfg.comparisons), list(cfg.val_comparisons)
    policy, rounds = cfg.policy, []
    for round_no in range(cfg.first_round, cfg.first_round + cfg.rounds):
        round_dir = out_dir / f"round_{round_no}"
        print(f"\n== iterate: round {round_no}, sampling {policy}", flush=True)
        stats_file = round_dir / "round.json"
        if not stats_file.is_file():
            stats = collect_comparisons(cfg, policy, round_dir, round_no, scorer, agreement)
            stats_file.write_text(json.dumps(stats, indent=1))
        stats = {"round": round_no, "start_policy": policy, **json.loads(stats_file.read_text())}
        train_files.append(str(round_dir / "comparisons" / "train.jsonl"))
        val_files.append(str(round_dir / "comparisons" / "val.jsonl"))

        rm_cfg = load_config(rm.Config, cfg.rm_config, {
            "model": reference, "train_data": train_files, "val_data": val_files,
            "holdout_labelers": [f"sim-{cfg.labelers - 1}"], "out_dir": str(round_dir / "rm"),
            "gold_world": cfg.world, **cfg.rm})
        rm_dir = Path(rm_cfg.out_dir) / "final"
        if not (Path(rm_cfg.out_dir) / "summary.json").is_file():
            rm_dir = rm.run(rm_cfg)
        val = json.loads((Path(rm_cfg.out_dir) / "summary.json").read_text())["val"]

        ppo_cfg = load_config(ppo.Config, cfg.ppo_config, {
            "policy": policy, "reference": reference, "reward_model": str(rm_dir), "prompts": cfg.prompts,
            "pretrain_data": cfg.pretrain_data, "out_dir": str(round_dir / "ppo"), "gold_world": cfg.world,
            "seed": cfg.seed + round_no, **cfg.ppo})
        policy = str(Path(ppo_cfg.out_dir) / "final")
        if not (Path(ppo_cfg.out_dir) / "summary.json").is_file():
            policy = str(ppo.run(ppo_cfg))

        eval_cfg = load_config(evaluate.Config, cfg.eval_config, {
            "model": policy, "baseline": reference, "prompts": cfg.eval_prompts, "gold_world": cfg.world,
            "reward_model": str(rm_dir), "out_dir": str(round_dir / "eval"), **cfg.eval})
        eval_file = Path(eval_cfg.out_dir) / "eval.json"
        if not eval_file.is_file():
            evaluate.run(eval_cfg)
        result = json.loads(eval_file.read_text())
        stats.update(policy=policy, rm_val_accuracy=val["accuracy"], rm_gold_agreement=val.get("gold_agreement"),
                     gold_score=result["model"]["gold_score"], reference_gold_score=result["baseline"]["gold_score"],
                     winrate_vs_reference=result["winrate_gold"], kl_to_reference=result["model"]["kl_to_reference"])
        rounds.append(stats)
        print(f"iterate: round {round_no}: {stats['comparisons']} new comparisons, RM val accuracy "
              f"{stats['rm_val_accuracy']:.3f}, gold score {stats['gold_score']:.3f} (reference "
              f"{stats['reference_gold_score']:.3f}), win rate vs reference {stats['winrate_vs_reference']:.3f}, "
              f"KL {stats['kl_to_reference']:.2f}", flush=True)
        (out_dir / "iterate.json").write_text(json.dumps({"rounds": rounds}, indent=1))
    print(f"iterate: done -> {policy}\n  per round: {out_dir / 'iterate.json'}")
    return Path(policy)
