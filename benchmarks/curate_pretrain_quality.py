"""Does curation help pretraining? The same tiny model, the same token budget, curated vs raw crawl.

The built-in world's crawl (pages, exact copies, near-duplicates, boilerplate / garbled / spam junk)
is curated by `chatforge curate` (the crawl alone: no reference text is mixed in) with a word budget;
the raw side is a random sample of the raw crawl with the same number of words. One tokenizer,
trained on neither (the reference corpus), serves both. Each side pretrains a 2-layer model for the
same number of steps (same tokens seen) at one CPU thread, and is measured by its loss on held-out
clean text of the world (crawl/heldout.jsonl: documents in neither corpus). Medians over seeds.

    .venv/bin/python benchmarks/curate_pretrain_quality.py [--seeds 0 1] [--steps 250] [--words 400000]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from chatforge.config import load_config  # noqa: E402
from chatforge.data.jsonl import write_jsonl  # noqa: E402
from chatforge.metrics import read_metrics  # noqa: E402
from chatforge.stages import curate, pretrain  # noqa: E402
from chatforge.stages import tokenizer as tokenizer_stage  # noqa: E402

from _table import Report, add_json_arg  # noqa: E402  (benchmarks/, the script's own folder)


# the `tiny` preset cut to 2 layers of width 96, so four runs fit in a few minutes at one CPU thread
MODEL = {"num_hidden_layers": 2, "hidden_size": 96, "intermediate_size": 256, "num_attention_heads": 4}


def raw_sample(crawl: Path, words: int, out: Path, seed: int = 0) -> int:
    """A random sample of the raw crawl's documents with `words` words (the last one may overshoot)."""
    docs = [json.loads(line)["text"] for line in open(crawl)]
    random.Random(seed).shuffle(docs)
    taken, total = [], 0
    for doc in docs:
        if total >= words:
            break
        taken.append(doc)
        total += len(doc.split())
    if total < words:
        sys.exit(f"the raw crawl holds only {total} words, fewer than --words {words}")
    write_jsonl(out, [{"text": doc} for doc in taken])
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pages", type=int, default=6000)
    parser.add_argument("--words", type=int, default=400_000, help="the word budget of both corpora")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    add_json_arg(parser)
    args = parser.parse_args()
    bench = Report("curate_pretrain_quality", args)
    root = Path(tempfile.mkdtemp(prefix="curate-quality-"))
    started = time.perf_counter()

    cfg = load_config(curate.Config, "configs/curate_world.yaml", {
        "output_dir": str(root / "curated"), "builtin_crawl.pages": args.pages, "builtin_crawl.reference_weight": 0.0,
        "token_budget": args.words})
    shards = curate.run(cfg)
    report = json.loads((root / "curated" / "curation_report.json").read_text())
    crawl_dir = root / "curated" / "crawl"
    raw_words = raw_sample(crawl_dir / "crawl.jsonl", args.words, root / "raw" / "raw.jsonl")
    tok = tokenizer_stage.run(tokenizer_stage.Config(corpus=[str(crawl_dir / "reference.jsonl")],
                                                     out_dir=str(root / "tok"), vocab_size=2048))
    corpora = {"curated": [str(shards)], "raw": [str(root / "raw" / "raw.jsonl")]}
    words = {"curated": report["mix_tokens"], "raw": raw_words}

    losses = {name: [] for name in corpora}
    for seed in args.seeds:
        for name, corpus in corpora.items():
            out = root / f"{name}-{seed}"
            pretrain.run(load_config(pretrain.Config, "configs/pretrain_tiny.yaml", {
                "corpus": corpus, "val_corpus": [str(crawl_dir / "heldout.jsonl")], "tokenizer": str(tok),
                "out_dir": str(out), "max_steps": args.steps, "model_overrides": MODEL, "seq_len": 128, "batch_size": 16, "warmup_steps": 20,
                "eval_every": 0, "save_every": 0, "val_tokens": 1 << 20, "seed": seed, "num_threads": 1,
                "tensorboard": False, "device": "cpu"}))
            evals = [m for m in read_metrics(out) if "val/loss" in m]
            losses[name].append(evals[-1]["val/loss"])
            print(f"  {name} seed {seed}: held-out loss {losses[name][-1]:.4f}", flush=True)

    curated, raw = statistics.median(losses["curated"]), statistics.median(losses["raw"])
    print(f"\npretraining on curated vs raw crawl: {MODEL}, {args.steps} steps x 16 x 128 tokens, "
          f"seeds {args.seeds}, 1 thread ({time.perf_counter() - started:.0f} s in all)")
    print(f"curation: near-dup P/R {report['near_dup_precision']:.3f}/{report['near_dup_recall']:.3f}, "
          f"quality AUC {report['quality_auc']:.3f}, junk removed {report['junk_removed_share']:.1%}, "
          f"crawl epochs in the curated mix {report['sources']['crawl']['epochs']:.2f}\n")
    bench.table(["corpus", "words", "held-out loss (median)", "per seed", "perplexity"],
                [[name, f"{words[name]:,}", f"{statistics.median(losses[name]):.4f}",
                  ", ".join(f"{x:.4f}" for x in losses[name]), f"{2.718281828 ** statistics.median(losses[name]):.2f}"]
                 for name in corpora])
    print(f"\ncurated / raw held-out loss: {curated / raw:.3f} (lower is better; perplexity ratio "
          f"{2.718281828 ** (curated - raw):.3f})")
    bench.put(loss_ratio_curated_vs_raw=curated / raw, curation=report)
    bench.write()


if __name__ == "__main__":
    main()
