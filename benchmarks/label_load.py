"""How does the labeling app hold up as labelers are added, under a flood of wrong sign-ins, and with
each commit synced to disk? Submissions/s and latency, 1 vs N labelers, flood off vs on, FULL vs NORMAL.

Each simulated labeler signs in as itself (the clock starts once all have), then loops: GET /next
(which assigns an item) + the item page, POST a random ranking of its K = 4 responses. The server is
`chatforge label serve` in its own process on loopback over a fresh SQLite file (in --dir, so on the
disk being measured); the clients are threads of this process. With --flood N, every setting runs
again with N threads of wrong sign-ins (half at real names, half at made-up ones) in a process of their
own, started when the labelers' clock starts. After each run the database is checked against the
acknowledged submissions (stored exactly once, none lost). Medians over --repeats runs.

    python benchmarks/label_load.py [--labelers 1,20] [--seconds 60] [--repeats 3] [--flood 8]
                                    [--synchronous FULL,NORMAL] [--dir /tmp]
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import tempfile
from pathlib import Path

from chatforge.serve.label.load import check_stored, flood_sign_ins, prepare_load_db, simulate_labelers
from chatforge.serve.label.server import serve_in_subprocess

from _table import Report, add_json_arg  # benchmarks/, the script's own folder


def one_run(labelers: int, seconds: float, folder: Path, flood: int, synchronous: str) -> dict:
    db = str(folder / f"load-{labelers}.db")
    credentials = prepare_load_db(db, labelers, items=max(6000, labelers * 300), k=4, labelers_per_item=2)
    spawn = multiprocessing.get_context("spawn")  # no fork of a process that runs client threads
    start, stop, results = spawn.Event(), spawn.Event(), spawn.Queue()
    with serve_in_subprocess(db, extra=(f"sqlite_synchronous={synchronous}",)) as url:
        flooder = None
        if flood:
            flooder = spawn.Process(target=flood_sign_ins, args=(url, [name for name, _ in credentials], flood,
                                                                  start, stop, results))
            flooder.start()
        result = simulate_labelers(url, credentials, seconds, on_start=start.set)
        stop.set()
        flood_counts = results.get(timeout=120) if flooder else {}
        if flooder:
            flooder.join(30)
    check = check_stored(db, result)
    lost = check["missing"] + check["unexpected"] + check["wrong_ranking"] + check["duplicates"]
    submit, page = result.percentiles(result.submit_latency_s), result.percentiles(result.page_latency_s)
    return {"per_s": check["acknowledged"] / result.seconds, "labels": check["acknowledged"], "lost": lost,
            "failures": len(result.failures), "flood_per_s": sum(flood_counts.values()) / result.seconds,
            "flood_429": flood_counts.get(429, 0), "flood_401": flood_counts.get(401, 0),
            **{f"submit_{k}": v for k, v in submit.items()}, **{f"page_{k}": v for k, v in page.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--labelers", default="1,20", help="comma-separated numbers of concurrent labelers")
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--flood", type=int, default=0, help="threads of wrong sign-ins beside the labelers "
                                                               "(each setting runs without, then with; 0 = off)")
    parser.add_argument("--synchronous", default="FULL", help="comma-separated SQLite synchronous settings")
    parser.add_argument("--dir", default=None, help="folder for the databases (default: the system temp folder)")
    add_json_arg(parser)
    args = parser.parse_args()
    report = Report("label_load", args)
    counts = [int(n) for n in args.labelers.split(",")]
    settings = [(sync, labelers, flood) for sync in args.synchronous.split(",") for labelers in counts
                for flood in ([0, args.flood] if args.flood else [0])]
    rows = {}
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        for setting in settings:
            runs = []
            for repeat in range(args.repeats):
                folder = Path(tmp) / "-".join(map(str, (*setting, repeat)))
                folder.mkdir()
                runs.append(one_run(setting[1], args.seconds, folder, setting[2], setting[0]))
            rows[setting] = {key: statistics.median(run[key] for run in runs) for key in runs[0]}
            rows[setting]["lost"] = sum(run["lost"] for run in runs)
            rows[setting]["failures"] = sum(run["failures"] for run in runs)
    print(f"\nlabeling app under load: {args.seconds:.0f} s per run, median of {args.repeats} run(s)\n")
    report.table(["synchronous", "labelers", "flood threads", "labels/s", "submit p50 ms", "submit p95 ms",
                  "page p50 ms", "page p95 ms", "labels (median)", "lost or duplicated", "failed requests",
                  "flood sign-ins/s (401 / 429)"],
                 [[sync, labelers, flood, f"{row['per_s']:.1f}", f"{row['submit_p50_ms']:.0f}",
                   f"{row['submit_p95_ms']:.0f}", f"{row['page_p50_ms']:.0f}", f"{row['page_p95_ms']:.0f}",
                   f"{row['labels']:.0f}", row["lost"], row["failures"],
                   f"{row['flood_per_s']:.0f} ({row['flood_401']:.0f} / {row['flood_429']:.0f})"]
                  for (sync, labelers, flood), row in rows.items()], align=["---"] + ["---:"] * 11)
    print()
    for sync, labelers, flood in settings:
        if flood:  # signed-in pages under the flood against without it (goal: within 2x)
            quiet, flooded = rows[(sync, labelers, 0)]["page_p50_ms"], rows[(sync, labelers, flood)]["page_p50_ms"]
            print(f"{sync}, {labelers} labelers: page p50 {quiet:.0f} ms without the flood, {flooded:.0f} ms with "
                  f"{flood} threads of wrong sign-ins: {flooded / quiet:.2f}x")
            report.put(**{f"flood_page_ratio_{sync}_{labelers}": flooded / quiet})
    syncs = args.synchronous.split(",")
    if "FULL" in syncs and "NORMAL" in syncs:
        for labelers in counts:
            full, normal = rows[("FULL", labelers, 0)], rows[("NORMAL", labelers, 0)]
            print(f"{labelers} labelers: synchronous=FULL {full['per_s']:.1f} labels/s, submit p50 "
                  f"{full['submit_p50_ms']:.0f} ms; NORMAL {normal['per_s']:.1f} labels/s, submit p50 "
                  f"{normal['submit_p50_ms']:.0f} ms: FULL gives {full['per_s'] / normal['per_s']:.2f}x the labels/s")
            report.put(**{f"full_vs_normal_{labelers}": full["per_s"] / normal["per_s"]})
    report.write()


if __name__ == "__main__":
    main()
