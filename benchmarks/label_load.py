"""How does the labeling app hold up as labelers are added? Submissions/s and latency, 1 vs N labelers.

Each simulated labeler signs in as itself (the clock starts once all have), then loops: GET /next
(which assigns an item) + the item page, POST a random ranking of its K = 4 responses. The server is
`chatforge label serve` in its own process on loopback over a fresh SQLite file; the clients are
threads of this process. After each run the database is checked against the acknowledged
submissions (stored exactly once, none lost). Medians over --repeats runs.

    python benchmarks/label_load.py [--labelers 1,20] [--seconds 60] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from chatforge.serve.label.load import check_stored, prepare_load_db, simulate_labelers
from chatforge.serve.label.server import serve_in_subprocess


def one_run(labelers: int, seconds: float, folder: Path) -> dict:
    db = str(folder / f"load-{labelers}.db")
    credentials = prepare_load_db(db, labelers, items=max(2000, labelers * 300), k=4, labelers_per_item=2)
    with serve_in_subprocess(db) as url:
        result = simulate_labelers(url, credentials, seconds)
    check = check_stored(db, result)
    lost = check["missing"] + check["unexpected"] + check["wrong_ranking"] + check["duplicates"]
    submit, page = result.percentiles(result.submit_latency_s), result.percentiles(result.page_latency_s)
    return {"per_s": check["acknowledged"] / result.seconds, "labels": check["acknowledged"], "lost": lost,
            "failures": len(result.failures), **{f"submit_{k}": v for k, v in submit.items()},
            **{f"page_{k}": v for k, v in page.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--labelers", default="1,20", help="comma-separated numbers of concurrent labelers")
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    counts = [int(n) for n in args.labelers.split(",")]
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for labelers in counts:
            runs = []
            for repeat in range(args.repeats):
                folder = Path(tmp) / f"{labelers}-{repeat}"
                folder.mkdir()
                runs.append(one_run(labelers, args.seconds, folder))
            rows[labelers] = {key: statistics.median(run[key] for run in runs) for key in runs[0]}
            rows[labelers]["lost"] = sum(run["lost"] for run in runs)
            rows[labelers]["failures"] = sum(run["failures"] for run in runs)
    base = rows[counts[0]]["per_s"]
    print(f"\nlabeling app under load: {args.seconds:.0f} s per run, median of {args.repeats} run(s)\n")
    print(f"| labelers | labels/s | vs {counts[0]} | submit p50 ms | submit p95 ms | page p50 ms | page p95 ms "
          "| labels (median) | lost or duplicated | failed requests |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for labelers, row in rows.items():
        print(f"| {labelers} | {row['per_s']:.1f} | {row['per_s'] / base:.2f}x | {row['submit_p50_ms']:.0f} | "
              f"{row['submit_p95_ms']:.0f} | {row['page_p50_ms']:.0f} | {row['page_p95_ms']:.0f} | "
              f"{row['labels']:.0f} | {row['lost']} | {row['failures']} |")


if __name__ == "__main__":
    main()
