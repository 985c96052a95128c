"""The built-in end-to-end run on CPU in minutes:

    world -> tokenizer -> pretrain -> base samples -> sft -> comparisons (SFT samples ranked by
    simulated labelers) -> rm -> gold scores of base and SFT answers

Each stage reads its own YAML config (named below) and the demo fills in the paths that chain the
stages together under run_dir. The per-stage mappings (`world`, `tokenizer`, `pretrain`, `sft`, `rm`)
override fields of those configs, e.g. `chatforge demo pretrain.max_steps=50 world.train_docs=1000`.
Writes run_dir/report.json (the scoreboard) and run_dir/report.md (with plots).
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path

from chatforge.config import load_config, opt
from chatforge.eval.answers import chat_answers, fewshot_answers
from chatforge.eval.baselines import unigram_loss
from chatforge.eval.facts import fact_accuracy, load_clozes
from chatforge.eval.report import Report
from chatforge.generation import SamplingParams
from chatforge.metrics import read_metrics
from chatforge.models.io import load_causal_lm, load_tokenizer
from chatforge.runtime import set_threads
from chatforge.stages import pretrain, rm, sft, tokenizer
from chatforge.world import stage as world_stage
from chatforge.world.collect import label_pools, sample_pools
from chatforge.world.gold import GoldScorer


@dataclass
class Config:
    run_dir: str = opt("runs/demo", "folder for every stage's output and the report")
    world_config: str = opt("configs/world.yaml", "config of the built-in world stage")
    tokenizer_config: str = opt("configs/tokenizer.yaml", "config of the tokenizer stage")
    pretrain_config: str = opt("configs/pretrain_tiny.yaml", "config of the pretraining stage")
    sft_config: str = opt("configs/sft_tiny.yaml", "config of the SFT stage")
    rm_config: str = opt("configs/rm_tiny.yaml", "config of the reward-model stage")
    world: dict = opt({}, "overrides of world config fields")
    tokenizer: dict = opt({}, "overrides of tokenizer config fields")
    pretrain: dict = opt({}, "overrides of pretraining config fields")
    sft: dict = opt({}, "overrides of SFT config fields")
    rm: dict = opt({}, "overrides of reward-model config fields")
    eval_prompts: int = opt(200, "held-out prompts the base and SFT answers are gold-scored on")
    select_prompts: int = opt(200, "other held-out prompts SFT picks its best epoch on")
    comparison_prompts: int = opt(1500, "RL prompts whose SFT samples are ranked for the reward model")
    comparison_k: int = opt(4, "samples per prompt (duplicates are dropped, so K is 2..this)")
    comparison_temperature: float = opt(1.0, "sampling temperature of the SFT samples")
    comparison_val_share: float = opt(0.15, "share of the comparisons held out for RM accuracy")
    labelers: int = opt(5, "simulated labelers; the last one is held out (its labels never train)")
    few_shot_prompts: int = opt(4, "few-shot questions shown in the report as base-model samples")
    num_threads: int = opt(0, "CPU threads for torch (0 = torch's default)")


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def few_shot_examples(world_dir: Path) -> list[tuple[str, str]]:
    """Two ideal single-turn demonstrations, the worked examples of the base model's few-shot prompt."""
    demos = [d for d in read_jsonl(world_dir / "demos" / "val.jsonl") if "prompt" in d and d.get("flaw") == "ideal"]
    return [("What is 3 plus 4?", "3 plus 4 is 7.")] + [(d["prompt"], d["response"]) for d in demos[:1]]


def run(cfg: Config) -> Path:
    """Run every stage that exists on the built-in world and write the report card."""
    start = time.time()
    set_threads(cfg.num_threads)
    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    world_cfg = load_config(world_stage.Config, cfg.world_config, {"out_dir": str(run_dir / "world"), **cfg.world})
    # every stage's fields and types are checked now, so a typo fails in seconds, not after pretraining
    for stage_cls, path, overrides in ((tokenizer.Config, cfg.tokenizer_config, cfg.tokenizer),
                                       (pretrain.Config, cfg.pretrain_config, cfg.pretrain),
                                       (sft.Config, cfg.sft_config, cfg.sft), (rm.Config, cfg.rm_config, cfg.rm)):
        load_config(stage_cls, path, overrides, validate=False)
    world_dir = Path(world_cfg.out_dir)
    corpus = world_dir / "corpus"
    report = Report(run_dir, "chatforge demo: report card")
    timings = {}

    def stage(name: str):
        print(f"\n== {name}", flush=True)
        timings[name] = time.time()

    stage("world")
    world_stage.run(world_cfg)
    scorer = GoldScorer.from_dir(world_dir)
    # later stages' configs name files the world stage has just written, so they load now
    tok_cfg = load_config(tokenizer.Config, cfg.tokenizer_config,
                          {"corpus": [str(corpus / "train.jsonl")], "out_dir": str(run_dir / "tokenizer"),
                           **cfg.tokenizer})
    stage("tokenizer")
    tokenizer.run(tok_cfg)
    tok = load_tokenizer(tok_cfg.out_dir)

    pre_cfg = load_config(pretrain.Config, cfg.pretrain_config,
                          {"corpus": [str(corpus / "train.jsonl")], "val_corpus": [str(corpus / "val.jsonl")],
                           "tokenizer": tok_cfg.out_dir, "out_dir": str(run_dir / "pretrain"), **cfg.pretrain})
    stage("pretrain")
    unigram = unigram_loss(tok, pre_cfg.corpus, pre_cfg.val_corpus, pre_cfg.val_tokens)
    base_dir = pretrain.run(pre_cfg)
    base_summary = json.loads((Path(pre_cfg.out_dir) / "summary.json").read_text())

    stage("base model: facts and answers")
    base = load_causal_lm(base_dir)
    facts = fact_accuracy(base, tok, load_clozes(world_dir / "eval" / "facts.jsonl"))
    held_out = [r["prompt"] for r in read_jsonl(world_dir / "prompts" / "eval.jsonl")]
    eval_prompts = held_out[:cfg.eval_prompts]
    select_file = write_jsonl(run_dir / "prompts" / "sft_select.jsonl",
                              [{"prompt": p} for p in held_out[cfg.eval_prompts:cfg.eval_prompts + cfg.select_prompts]])
    greedy = SamplingParams(max_new_tokens=48, do_sample=False)
    base_answers = fewshot_answers(base, tok, eval_prompts, few_shot_examples(world_dir), greedy)
    base_scores = scorer.score_batch(eval_prompts, base_answers)
    print(f"base: fact accuracy {facts['accuracy']:.1%}, gold score {mean(base_scores):.3f} (few-shot)")

    sft_cfg = load_config(sft.Config, cfg.sft_config,
                          {"model": str(base_dir), "train_data": [str(world_dir / "demos" / "train.jsonl")],
                           "val_data": [str(world_dir / "demos" / "val.jsonl")], "out_dir": str(run_dir / "sft"),
                           "eval_prompts": str(select_file), "gold_world": str(world_dir), **cfg.sft})
    stage("sft")
    sft_dir = sft.run(sft_cfg)
    sft_model = load_causal_lm(sft_dir)
    sft_answers = chat_answers(sft_model, tok, eval_prompts, greedy).texts
    sft_scores = scorer.score_batch(eval_prompts, sft_answers)
    print(f"sft: gold score {mean(sft_scores):.3f} (base {mean(base_scores):.3f})")

    stage("comparisons: SFT samples ranked by simulated labelers")
    rl_prompts = [r["prompt"] for r in read_jsonl(world_dir / "prompts" / "rl.jsonl")][:cfg.comparison_prompts]
    sampling = SamplingParams(max_new_tokens=48, do_sample=True, temperature=cfg.comparison_temperature, seed=0)
    pools = sample_pools(sft_model, tok, rl_prompts, cfg.comparison_k, sampling)
    records, labeling = label_pools(scorer, pools, cfg.labelers, world_cfg.labeler_agreement, world_cfg.seed)
    random.Random(0).shuffle(records)
    n_val = int(len(records) * cfg.comparison_val_share)
    train_file = write_jsonl(run_dir / "comparisons" / "train.jsonl", records[n_val:])
    val_file = write_jsonl(run_dir / "comparisons" / "val.jsonl", records[:n_val])
    print(f"comparisons: {len(records)} pools of 2..{cfg.comparison_k} distinct samples; two independent "
          f"labelers agree {labeling['agreement']:.3f} (target {labeling['agreement_target']}, "
          f"at most {labeling['agreement_ceiling']:.3f} on these pools)")

    rm_cfg = load_config(rm.Config, cfg.rm_config,
                         {"model": str(sft_dir), "train_data": [str(train_file)], "val_data": [str(val_file)],
                          "holdout_labelers": [f"sim-{cfg.labelers - 1}"], "out_dir": str(run_dir / "rm"),
                          "gold_world": str(world_dir), **cfg.rm})
    stage("rm")
    rm.run(rm_cfg)
    rm_summary = json.loads((Path(rm_cfg.out_dir) / "summary.json").read_text())
    sft_summary = json.loads((Path(sft_cfg.out_dir) / "summary.json").read_text())

    report.add("wall_seconds", time.time() - start, "the whole demo, seconds")
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
    report.add("sft_best_epoch", sft_summary["best_epoch"], "SFT epoch chosen by the gold score of its answers")
    report.add("labeler_agreement", labeling["agreement"],
               "pairwise agreement of two independent simulated labelers on the comparison pools")
    report.add("comparisons", len(records), f"ranked comparisons (K = 2..{cfg.comparison_k}) of SFT samples")
    val = rm_summary["val"]
    report.add("rm_val_accuracy", val["accuracy"], f"RM pairwise accuracy on {val['pairs']} held-out pairs")
    report.add("rm_holdout_labeler_accuracy", val["accuracy_by_labeler"].get(f"sim-{cfg.labelers - 1}"),
               "RM pairwise accuracy on the held-out labeler's comparisons")
    report.add("rm_gold_agreement", val.get("gold_agreement"),
               "share of held-out pairs (gold ties excluded) the RM orders as the gold scorer does")
    stage_names = list(timings)
    durations = {name: (timings[stage_names[i + 1]] if i + 1 < len(stage_names) else time.time()) - timings[name]
                 for i, name in enumerate(stage_names)}
    write_pretrain_section(report, Path(pre_cfg.out_dir), unigram)
    write_facts_section(report, facts, cfg.few_shot_prompts, eval_prompts, base_answers)
    write_sft_section(report, sft_summary, mean(base_scores))
    write_rm_section(report, rm_summary, labeling)
    write_answers_section(report, eval_prompts, base_answers, base_scores, sft_answers, sft_scores)
    report.section("Time per stage", "| stage | seconds |\n|---|---|\n" + "\n".join(
        f"| {name} | {seconds:.0f} |" for name, seconds in durations.items()))
    json_path, md_path = report.save()

    print(f"\nunigram loss {unigram:.3f} | base val loss {base_summary['val_loss']:.3f} | base fact accuracy "
          f"{facts['accuracy']:.1%} | gold score base {mean(base_scores):.3f} -> SFT {mean(sft_scores):.3f} | "
          f"labelers agree {labeling['agreement']:.3f}, RM val accuracy {val['accuracy']:.3f} | "
          f"{time.time() - start:.0f} s")
    print(f"report card: {md_path}\nscoreboard:  {json_path}\nmodels:      {base_dir}, {sft_dir}, "
          f"{Path(rm_cfg.out_dir) / 'final'}")
    return md_path


def mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def write_pretrain_section(report: Report, pretrain_dir: Path, unigram: float) -> None:
    metrics = read_metrics(pretrain_dir)
    train = [(m["step"], m["train/loss"]) for m in metrics if "train/loss" in m]
    val = [(m["step"], m["val/loss"]) for m in metrics if "val/loss" in m]
    steps = [s for s, _ in train]
    series = {"train loss": ([s for s, _ in train], [v for _, v in train]),
              "val loss": ([s for s, _ in val], [v for _, v in val]),
              "unigram baseline": ([min(steps, default=0), max(steps, default=1)], [unigram, unigram])}
    image = report.plot("pretrain_loss", series, "step", "loss (nats/token)", "Pretraining loss")
    rates = [m["train/tokens_per_s"] for m in metrics if "train/tokens_per_s" in m]
    rate = sorted(rates)[len(rates) // 2] if rates else math.nan
    report.section("Pretraining", f"{image}\n\nMedian throughput: {rate:,.0f} tokens/s.")


def write_facts_section(report: Report, facts: dict, count: int, prompts: list, answers: list[str]) -> None:
    rows = ["| fact prompt | answer | base model's greedy completion | correct |", "|---|---|---|---|"]
    for example in facts["examples"][:12]:
        completion = example["completion"].replace("\n", " ").replace("|", "/")
        rows.append(f"| {example['prompt']} | {example['answer']} | {completion} | "
                    f"{'yes' if example['correct'] else 'no'} |")
    text = "\n".join(rows)
    text += "\n\nFew-shot questions (two worked examples in the prompt), greedy:\n\n"
    text += "\n".join(f"- **{p}** -> {a}" for p, a in zip(prompts[:count], answers[:count]))
    report.section("Base model samples", text)


def write_sft_section(report: Report, summary: dict, base_score: float) -> None:
    epochs = summary["epochs"]
    xs = [e["epoch"] for e in epochs]
    image = report.plot("sft_epochs", {"gold score of answers": (xs, [e.get("score") for e in epochs]),
                                       "val loss": (xs, [e.get("val_loss") for e in epochs]),
                                       "base model's gold score": (xs, [base_score] * len(xs))},
                        "epoch", "value", "SFT: answer score and validation loss per epoch")
    report.section("SFT", f"{image}\n\nBest epoch by the gold score of greedy answers: {summary['best_epoch']} "
                          "(chosen on held-out prompts other than the ones scored above).")


def write_rm_section(report: Report, summary: dict, labeling: dict) -> None:
    val = summary["val"]
    rows = ["| slice | pairwise accuracy |", "|---|---|", f"| all held-out | {val['accuracy']:.3f} |"]
    rows += [f"| K = {k} | {acc:.3f} |" for k, acc in val["accuracy_by_k"].items()]
    rows += [f"| labeler {name} | {acc:.3f} |" for name, acc in val["accuracy_by_labeler"].items()]
    text = "\n".join(rows)
    text += (f"\n\nTwo independent simulated labelers agree on {labeling['agreement']:.3f} of pairs "
             f"(noise {labeling['noise']:.3f}; ties in the gold score cap agreement at "
             f"{labeling['agreement_ceiling']:.3f} on these pools). RM rewards on held-out responses: mean "
             f"{val['reward_mean']:+.3f}, std {val['reward_std']:.3f}; bias {summary['reward_bias']:+.3f}.")
    if "gold_agreement" in val:
        text += f" The RM orders {val['gold_agreement']:.3f} of gold-distinguishable pairs as the gold scorer does"
        text += " (by prompt kind: " + ", ".join(
            f"{kind} {share:.3f}" for kind, share in val.get("gold_agreement_by_kind", {}).items()) + ")."
    report.section("Reward model", text)


def write_answers_section(report: Report, prompts, base_answers, base_scores, sft_answers, sft_scores) -> None:
    def cell(text):
        return text.replace("\n", " ").replace("|", "/")[:90]

    rows = ["| prompt | base (few-shot) | gold | SFT | gold |", "|---|---|---|---|---|"]
    for i in range(min(10, len(prompts))):
        rows.append(f"| {cell(prompts[i])} | {cell(base_answers[i])} | {base_scores[i]:.2f} | "
                    f"{cell(sft_answers[i])} | {sft_scores[i]:.2f} |")
    report.section("Answers to held-out prompts (greedy)", "\n".join(rows))
