"""The built-in end-to-end run: world -> tokenizer -> pretrain -> samples, on CPU in minutes.

Each stage reads its own YAML config (named below) and the demo fills in the paths that chain the
stages together under run_dir. The per-stage mappings (`world`, `tokenizer`, `pretrain`) override
fields of those configs, e.g. `chatforge demo pretrain.max_steps=50 world.train_docs=1000`.
Writes run_dir/report.json (the scoreboard) and run_dir/report.md (with plots).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

from chatforge.config import load_config, opt
from chatforge.eval.baselines import unigram_loss
from chatforge.eval.facts import fact_accuracy, load_clozes
from chatforge.eval.report import Report
from chatforge.metrics import read_metrics
from chatforge.models.io import load_causal_lm, load_tokenizer
from chatforge.runtime import set_threads
from chatforge.stages import pretrain, tokenizer
from chatforge.world import stage as world_stage


@dataclass
class Config:
    run_dir: str = opt("runs/demo", "folder for every stage's output and the report")
    world_config: str = opt("configs/world.yaml", "config of the built-in world stage")
    tokenizer_config: str = opt("configs/tokenizer.yaml", "config of the tokenizer stage")
    pretrain_config: str = opt("configs/pretrain_tiny.yaml", "config of the pretraining stage")
    world: dict = opt({}, "overrides of world config fields")
    tokenizer: dict = opt({}, "overrides of tokenizer config fields")
    pretrain: dict = opt({}, "overrides of pretraining config fields")
    few_shot_prompts: int = opt(4, "few-shot questions shown in the report as base-model samples")
    num_threads: int = opt(0, "CPU threads for torch (0 = torch's default)")


FEW_SHOT_HEADER = ("Question: What is 3 plus 4?\nAnswer: 3 plus 4 is 7.\n\n"
                   "Question: {q1}\nAnswer: {a1}\n\n")


def few_shot_samples(model, tok, world_dir: Path, count: int) -> list[dict]:
    """Greedy answers of the base model to held-out questions, prompted with two worked examples."""
    from chatforge.generation import SamplingParams, generate

    demos = [json.loads(line) for line in (world_dir / "demos" / "val.jsonl").read_text().splitlines()]
    demos = [d for d in demos if "prompt" in d and d.get("flaw") == "ideal"]
    prompts = [json.loads(line)["prompt"] for line in (world_dir / "prompts" / "eval.jsonl").read_text().splitlines()]
    if not demos or not prompts:
        return []
    header = FEW_SHOT_HEADER.format(q1=demos[0]["prompt"], a1=demos[0]["response"])
    texts = [header + f"Question: {p}\nAnswer:" for p in prompts[:count]]
    result = generate(model, tok, texts, SamplingParams(max_new_tokens=24, do_sample=False), batch_size=count)
    return [{"prompt": p, "completion": c.split("\n")[0].strip()} for p, c in zip(prompts, result.texts)]


def run(cfg: Config) -> Path:
    """Run every stage that exists on the built-in world and write the report card."""
    start = time.time()
    set_threads(cfg.num_threads)
    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    # configs are all read and validated before the first stage starts
    world_cfg = load_config(world_stage.Config, cfg.world_config, {"out_dir": str(run_dir / "world"), **cfg.world})
    world_dir = Path(world_cfg.out_dir)
    train, val = str(world_dir / "corpus" / "train.jsonl"), str(world_dir / "corpus" / "val.jsonl")
    tok_overrides = {"corpus": [train], "out_dir": str(run_dir / "tokenizer"), **cfg.tokenizer}
    pre_overrides = {"corpus": [train], "val_corpus": [val], "tokenizer": str(run_dir / "tokenizer"),
                     "out_dir": str(run_dir / "pretrain"), **cfg.pretrain}
    report = Report(run_dir, "chatforge demo: report card")

    print("== 1/4 world")
    world_stage.run(world_cfg)
    # the later stages' configs name files the world stage has just written
    tok_cfg = load_config(tokenizer.Config, cfg.tokenizer_config, tok_overrides)
    print("== 2/4 tokenizer")
    tokenizer.run(tok_cfg)
    pre_cfg = load_config(pretrain.Config, cfg.pretrain_config, pre_overrides)
    tok = load_tokenizer(tok_cfg.out_dir)
    unigram = unigram_loss(tok, pre_cfg.corpus, pre_cfg.val_corpus, pre_cfg.val_tokens)

    print("== 3/4 pretrain")
    pretrain_start = time.time()
    base_dir = pretrain.run(pre_cfg)
    pretrain_seconds = time.time() - pretrain_start
    summary = json.loads((Path(pre_cfg.out_dir) / "summary.json").read_text())

    print("== 4/4 samples from the base model")
    model = load_causal_lm(base_dir)
    facts = fact_accuracy(model, tok, load_clozes(world_dir / "eval" / "facts.jsonl"))
    samples = few_shot_samples(model, tok, world_dir, cfg.few_shot_prompts)

    report.add("wall_seconds", time.time() - start, "the whole demo, seconds")
    report.add("unigram_loss", unigram, "held-out loss (nats/token) of the train corpus's unigram model")
    report.add("base_val_loss", summary["val_loss"], "held-out loss (nats/token) of the pretrained base model")
    report.add("base_val_ppl", summary["val_ppl"], "held-out perplexity of the base model")
    report.add("base_fact_accuracy", facts["accuracy"],
               f"share of the world's {facts['n']} fact prompts the base model completes correctly (greedy)")
    report.add("base_parameters", summary["parameters"], "parameters of the base model")
    report.add("pretrain_tokens", summary["tokens_seen"], "tokens the base model was trained on")
    report.add("pretrain_seconds", pretrain_seconds, "pretraining time, seconds")
    write_pretrain_section(report, Path(pre_cfg.out_dir), unigram)
    write_samples_section(report, facts, samples)
    json_path, md_path = report.save()

    print(f"\nunigram loss {unigram:.3f} | base val loss {summary['val_loss']:.3f} "
          f"(ppl {summary['val_ppl']:.2f}) | base fact accuracy {facts['accuracy']:.1%} "
          f"| {time.time() - start:.0f} s")
    print(f"report card: {md_path}\nscoreboard:  {json_path}\nbase model:  {base_dir}")
    return md_path


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


def write_samples_section(report: Report, facts: dict, samples: list[dict]) -> None:
    rows = ["| fact prompt | answer | base model's greedy completion | correct |", "|---|---|---|---|"]
    for example in facts["examples"][:12]:
        completion = example["completion"].replace("\n", " ").replace("|", "/")
        rows.append(f"| {example['prompt']} | {example['answer']} | {completion} | "
                    f"{'yes' if example['correct'] else 'no'} |")
    text = "\n".join(rows)
    if samples:
        text += "\n\nFew-shot questions (two worked examples in the prompt), greedy:\n\n"
        text += "\n".join(f"- **{s['prompt']}** -> {s['completion']}" for s in samples)
    report.section("Base model samples", text)
