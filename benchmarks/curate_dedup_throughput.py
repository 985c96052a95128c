"""Near-duplicate removal speed and memory: chatforge's curate stage against datatrove's MinHash dedup.

One corpus of generated documents (the built-in world's crawl: pages, exact copies, near-duplicates,
junk; >= 200k documents by default), written as two JSONL files. Each tool runs on the same files,
in a fresh process per run (so peak memory is its own), with 1 and 2 worker processes:

  ours       `chatforge curate` with the quality filter off: read, normalise, exact dedup, MinHash
             (datasketch, 5-word shingles, 128 permutations, 14 bands x 9 rows for threshold 0.7),
             LSH banding and clustering, write the kept documents as shards;
  datatrove  its four-stage MinHash pipeline (signatures, buckets, clusters, filter + JsonlWriter) with
             the same 5-word shingles and 14 x 9 banding, whitespace word splitting.

Printed: documents/s end to end (wall clock of the whole run), peak RSS of the run's processes, the
documents each removed, and the duplicates each caught against the known truth (cluster-count
precision/recall: a cluster of k documents should lose k - 1 of them, whichever is kept).
datatrove lives in the benchmark's own environment, never in chatforge's:
    bash benchmarks/setup_curate_env.sh
    benchmarks/.venv-curate/bin/python benchmarks/curate_dedup_throughput.py [--pages 160000] [--repeats 1]
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _table import Report, add_json_arg  # noqa: E402  (benchmarks/, the script's own folder)

SHINGLE, BANDS, ROWS, THRESHOLD, NUM_PERM = 5, 14, 9, 0.7, 128


def make_corpus(root: Path, pages: int) -> tuple[Path, Path]:
    """The crawl in two JSONL files under root/data (in crawl order) and its truth."""
    from chatforge.data.jsonl import write_jsonl
    from chatforge.world.crawl import CrawlConfig, render_crawl

    crawl = render_crawl(CrawlConfig(pages=pages, reference_docs=1, heldout_docs=1))
    data = root / "data"
    data.mkdir(parents=True)
    docs = crawl["crawl.jsonl"]
    half = len(docs) // 2
    for name, part in (("part-0.jsonl", docs[:half]), ("part-1.jsonl", docs[half:])):
        write_jsonl(data / name, [{"text": d["text"], "id": str(d["id"])} for d in part])
    truth = write_jsonl(root / "truth.jsonl", crawl["truth.jsonl"])
    return data, truth


def run_ours(data: Path, out: Path, workers: int):
    """Run the curate stage; return a function giving the kept ids (texts are matched back to ids,
    since documents carry no id through the stage)."""
    from chatforge.config import load_config
    from chatforge.stages import curate

    cfg = load_config(curate.Config, None, {
        "output_dir": str(out), "sources": [{"name": "crawl", "paths": [str(data)], "quality_filter": False}],
        "shingle_size": SHINGLE, "num_perm": NUM_PERM, "threshold": THRESHOLD, "workers": workers})
    curate.run(cfg)
    report = json.loads((out / "curation_report.json").read_text())
    assert report["near_dup"]["bands"] == BANDS and report["near_dup"]["rows"] == ROWS, report["near_dup"]

    def kept_ids() -> list[str]:
        kept = Counter(json.loads(line)["text"] for shard in report["shards"] for line in open(shard))
        ids = []
        for path in sorted(data.glob("*.jsonl")):
            for line in open(path):
                record = json.loads(line)
                if kept[record["text"]] > 0:
                    kept[record["text"]] -= 1
                    ids.append(record["id"])
        return ids
    return kept_ids


try:  # datatrove is only in the benchmark's environment
    from datatrove.utils.word_tokenizers import WordTokenizer
except ImportError:
    WordTokenizer = object


class WhitespaceTokenizer(WordTokenizer):
    """datatrove's WordTokenizer interface, splitting on whitespace (no NLTK data needed offline)."""

    def __init__(self):
        self.language = "en"

    def word_tokenize(self, text):
        return text.split()

    def sent_tokenize(self, text):
        return [text]

    def span_tokenize(self, text):
        raise NotImplementedError


def run_datatrove(data: Path, out: Path, workers: int):
    """Run datatrove's MinHash pipeline; return a function giving the kept ids."""
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.dedup import MinhashDedupBuckets, MinhashDedupCluster, MinhashDedupFilter, MinhashDedupSignature
    from datatrove.pipeline.dedup.minhash import MinhashConfig
    from datatrove.pipeline.readers import JsonlReader
    from datatrove.pipeline.writers import JsonlWriter
    tokenizer = WhitespaceTokenizer()
    config = MinhashConfig(n_grams=SHINGLE, num_buckets=BANDS, hashes_per_bucket=ROWS)
    tasks = 2  # one per input file; `workers` of them run at once
    common = dict(logging_dir=str(out / "logs"), skip_completed=False)
    read = lambda: JsonlReader(str(data), id_key="id")  # noqa: E731
    LocalPipelineExecutor(pipeline=[read(), MinhashDedupSignature(str(out / "sigs"), config=config, language=tokenizer)],
                          tasks=tasks, workers=workers, **common).run()
    LocalPipelineExecutor(pipeline=[MinhashDedupBuckets(str(out / "sigs"), str(out / "buckets"), config=config)],
                          tasks=BANDS, workers=workers, **common).run()
    LocalPipelineExecutor(pipeline=[MinhashDedupCluster(str(out / "buckets"), str(out / "remove"), config=config)],
                          tasks=1, **common).run()
    LocalPipelineExecutor(pipeline=[read(), MinhashDedupFilter(str(out / "remove")),
                                    JsonlWriter(str(out / "kept"), compression=None)],
                          tasks=tasks, workers=workers, **common).run()
    return lambda: [json.loads(line)["id"] for path in sorted((out / "kept").glob("*.jsonl")) for line in open(path)]


def one_run(tool: str, data: Path, out: Path, workers: int) -> dict:
    """Run one tool once in this process; wall seconds, peak RSS of this process and its children, kept ids."""
    start = time.perf_counter()
    kept_ids = (run_ours if tool == "ours" else run_datatrove)(data, out, workers)
    seconds = time.perf_counter() - start
    # the high-water mark of the run itself, before the benchmark's own matching of kept documents
    peak_kb = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
    return {"seconds": seconds, "peak_mb": peak_kb / 1024, "kept": kept_ids()}


def truth_scores(kept_ids: list[str], truth: Path) -> dict:
    """Cluster-count precision / recall of the removals."""
    records = [json.loads(line) for line in open(truth)]
    size = Counter(r["cluster"] for r in records)
    kept = Counter(records[int(i)]["cluster"] for i in kept_ids)
    removed = {c: size[c] - kept.get(c, 0) for c in size}
    right = sum(min(removed[c], size[c] - 1) for c in size)
    should = sum(k - 1 for k in size.values())
    total = sum(removed.values())
    return {"removed": total, "precision": right / total if total else 1.0, "recall": right / should if should else 1.0}


def index_bytes_per_doc(n: int = 20_000) -> tuple[float, float]:
    """Bytes per document of datasketch's in-memory MinHashLSH index (tracemalloc, random signatures)
    and of our band keys, for the banding above: why dedup.py bands with a sort instead."""
    import tracemalloc

    import numpy as np
    from datasketch import LeanMinHash, MinHashLSH

    signatures = np.random.default_rng(0).integers(0, 2**32, size=(n, NUM_PERM), dtype=np.uint64)
    sketches = [LeanMinHash(seed=1, hashvalues=row, scheme="legacy") for row in signatures]
    tracemalloc.start()
    index = MinHashLSH(threshold=THRESHOLD, num_perm=NUM_PERM)
    for key, sketch in enumerate(sketches):
        index.insert(key, sketch)
    held, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return held / n, float(index.b * 8)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pages", type=int, default=160_000, help="distinct pages (x1.25 documents with copies)")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--tools", nargs="+", default=["ours", "datatrove"])
    parser.add_argument("--root", type=Path, help="reuse the corpus a run left in this folder (made if missing)")
    parser.add_argument("--one", nargs=4, metavar=("TOOL", "DATA", "OUT", "WORKERS"), help=argparse.SUPPRESS)
    add_json_arg(parser)
    args = parser.parse_args()
    if args.one:
        tool, data, out, workers = args.one
        print("RESULT " + json.dumps(one_run(tool, Path(data), Path(out), int(workers))))
        return

    root = args.root or Path(tempfile.mkdtemp(prefix="curate-bench-"))
    started = time.perf_counter()
    if (root / "truth.jsonl").is_file():
        data, truth = root / "data", root / "truth.jsonl"
    else:
        data, truth = make_corpus(root, args.pages)
    n_docs = sum(1 for path in data.glob("*.jsonl") for _ in open(path))
    print(f"corpus: {n_docs:,} documents, {sum(p.stat().st_size for p in data.glob('*.jsonl')) / 1e6:.0f} MB "
          f"(ready in {time.perf_counter() - started:.0f} s) in {data}")
    rows = {}
    for workers in args.workers:
        for tool in args.tools:
            runs = []
            for repeat in range(args.repeats):
                out = root / f"{tool}-{workers}-{repeat}"
                shutil.rmtree(out, ignore_errors=True)
                proc = subprocess.run([sys.executable, __file__, "--one", tool, str(data), str(out), str(workers)],
                                      capture_output=True, text=True)
                line = next((l for l in proc.stdout.splitlines() if l.startswith("RESULT ")), None)
                if proc.returncode != 0 or line is None:
                    sys.exit(f"{tool} with {workers} worker(s) failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
                runs.append(json.loads(line[len("RESULT "):]))
            scores = truth_scores(runs[0]["kept"], truth)
            rows[tool, workers] = {"docs_per_s": statistics.median(n_docs / r["seconds"] for r in runs),
                                   "peak_mb": statistics.median(r["peak_mb"] for r in runs), **scores}
            print(f"  {tool:<9} workers={workers}: {rows[tool, workers]['docs_per_s']:,.0f} docs/s, "
                  f"peak {rows[tool, workers]['peak_mb']:,.0f} MB", flush=True)

    print(f"\nnear-duplicate removal on {n_docs:,} documents (median of {args.repeats} run(s); "
          f"5-word shingles, {BANDS}x{ROWS} bands)\n")
    report, table, speedup = Report("curate_dedup_throughput", args), [], {}
    for (tool, workers), row in rows.items():
        base = rows.get(("datatrove", workers))
        speed = f"{row['docs_per_s'] / base['docs_per_s']:.2f}x" if base and tool == "ours" else ""
        memory = f"{row['peak_mb'] / base['peak_mb']:.2f}x" if base and tool == "ours" else ""
        if speed:
            speedup[workers] = row["docs_per_s"] / base["docs_per_s"]
        table.append([workers, tool, f"{row['docs_per_s']:,.0f}", speed, f"{row['peak_mb']:,.0f}", memory,
                      f"{row['removed']:,}", f"{row['precision']:.3f}", f"{row['recall']:.3f}"])
    report.table(["workers", "tool", "docs/s", "ours / datatrove", "peak MB", "memory ours / datatrove", "removed",
                  "precision", "recall"], table)
    theirs, ours = index_bytes_per_doc()
    print(f"\nLSH state per document: datasketch MinHashLSH in-memory index {theirs:,.0f} bytes, "
          f"our band keys {ours:,.0f} bytes ({theirs / ours:.0f}x less)")
    report.put(speedup_vs_datatrove=speedup, index_bytes_per_doc={"datatrove": theirs, "ours": ours})
    report.write()


if __name__ == "__main__":
    main()
