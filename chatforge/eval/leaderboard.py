"""The leaderboard of `chatforge compare`: each method's per-seed results -> one row per method.

A method's result for one seed (written by chatforge/compare.py) holds its training seconds, the policy
samples it drew, and from `chatforge eval` against SFT: the T=1 samples' gold scores of both models
(`wins` of the method over SFT, prompt-major, `samples_per_prompt` a prompt), the greedy answers' gold
scores of both, KL to SFT, held-out perplexity and per-dimension failure rates.

Across seeds the win rates pool every seed's comparisons (each seed answers the same prompts; a
bootstrap draws (seed, prompt) units, so a prompt's samples stay together), and the other numbers are
means over seeds, with their min and max.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from chatforge.eval.bootstrap import mean_interval, wins
from chatforge.eval.compare import mean

ROW_KEYS = ("method", "winrate_vs_sft", "winrate_vs_sft_ci95", "winrate_vs_sft_greedy", "winrate_vs_sft_greedy_ci95",
            "gold_score", "gold_score_greedy", "kl", "ppl", "seconds", "policy_samples", "seeds")


def seed_result(eval_report: dict, samples: list[dict], greedy: list[float], sft_greedy: list[float],
                seconds: float, policy_samples: int, side: str = "model") -> dict:
    """One method's numbers on one seed, from eval.json / samples.jsonl of `chatforge eval` against SFT.

    side is the eval report's entry that holds the method: "model", or "best_of_n" for the best-of-n
    baseline (its picked answer stands for every sample of the prompt) and "baseline" for SFT itself.
    """
    numbers = eval_report[side]
    return {"wins": wins([s[f"{side}_gold"] for s in samples], [s["baseline_gold"] for s in samples]),
            "samples_per_prompt": eval_report["samples_per_prompt"],
            "greedy_wins": wins(greedy, sft_greedy) if greedy else None,
            "gold_score": numbers["gold_score"], "gold_score_greedy": mean(greedy) if greedy else None,
            "kl": numbers.get("kl_to_reference"), "ppl": numbers.get("ppl"),
            "failure_rates": {name: rate["rate"] for name, rate in
                              numbers.get("dimensions", {}).get("failure_rates", {}).items()},
            "seconds": seconds, "policy_samples": policy_samples}


def pooled_rate(per_seed: list[list[float]], n: int, resamples: int, seed: int) -> tuple[float, list | None]:
    """Mean of every seed's wins (ties half) and its paired 95% interval over (seed, prompt) units."""
    pooled = [w for seed_wins in per_seed for w in seed_wins]
    return mean(pooled), mean_interval(pooled, n, resamples, seed)


def spread(values: list) -> dict | None:
    """Mean, min and max of the numbers that exist (None when none does)."""
    values = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not values:
        return None
    return {"mean": mean(values), "min": min(values), "max": max(values)}


def leaderboard_row(method: str, results: dict[int, dict], resamples: int = 2000, seed: int = 0) -> dict:
    """The row of one method from its results by seed."""
    seeds = sorted(results)
    runs = [results[s] for s in seeds]
    n = runs[0]["samples_per_prompt"]
    rate, interval = pooled_rate([r["wins"] for r in runs], n, resamples, seed)
    row = {"method": method, "winrate_vs_sft": rate, "winrate_vs_sft_ci95": interval}
    if all(r["greedy_wins"] is not None for r in runs):
        rate, interval = pooled_rate([r["greedy_wins"] for r in runs], 1, resamples, seed)
        row.update(winrate_vs_sft_greedy=rate, winrate_vs_sft_greedy_ci95=interval)
    else:
        row.update(winrate_vs_sft_greedy=None, winrate_vs_sft_greedy_ci95=None)
    for key in ("gold_score", "gold_score_greedy", "kl", "ppl", "seconds"):
        values = spread([r[key] for r in runs])
        row[key] = values and values["mean"]
        if len(runs) > 1:
            row[f"{key}_by_seed"] = [r[key] for r in runs]
    row["winrate_vs_sft_by_seed"] = [mean(r["wins"]) for r in runs]
    row["policy_samples"] = runs[0]["policy_samples"]
    row["failure_rates"] = {name: (spread([r["failure_rates"].get(name) for r in runs]) or {}).get("mean")
                            for name in runs[0]["failure_rates"]}
    row["seeds"] = seeds
    return row


def shown(value, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, list):
        return "[" + ", ".join(shown(v, digits) for v in value) + "]"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def markdown(rows: list[dict], header: str) -> str:
    """leaderboard.md: the headline table, then the failure rates by dimension."""
    lines = [header, "",
             "| method | win rate vs SFT (T=1) [95%] | greedy [95%] | gold score (T=1) | gold (greedy) | KL to SFT "
             "| held-out ppl | train seconds | policy samples |",
             "|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row['method']} | {shown(row['winrate_vs_sft'])} {shown(row['winrate_vs_sft_ci95'])} "
                     f"| {shown(row['winrate_vs_sft_greedy'])} {shown(row['winrate_vs_sft_greedy_ci95'])} "
                     f"| {shown(row['gold_score'])} | {shown(row['gold_score_greedy'])} | {shown(row['kl'], 2)} "
                     f"| {shown(row['ppl'], 2)} | {shown(row['seconds'], 0)} | {row['policy_samples']} |")
    dimensions = [name for name in rows[0]["failure_rates"]] if rows else []
    if dimensions:
        lines += ["", "Failure rates of the T=1 samples by dimension (lower is better):", "",
                  "| method | " + " | ".join(name.replace("_", " ") for name in dimensions) + " |",
                  "|---|" + "---|" * len(dimensions)]
        lines += [f"| {row['method']} | " + " | ".join(shown(row["failure_rates"].get(name)) for name in dimensions)
                  + " |" for row in rows]
    if rows and len(rows[0]["seeds"]) > 1:
        lines += ["", "Win rate vs SFT (T=1) by seed:", "", "| method | " + " | ".join(
            f"seed {s}" for s in rows[0]["seeds"]) + " |", "|---|" + "---|" * len(rows[0]["seeds"])]
        lines += [f"| {row['method']} | " + " | ".join(shown(v) for v in row["winrate_vs_sft_by_seed"]) + " |"
                  for row in rows]
    return "\n".join(lines) + "\n"


def write(out_dir: Path, rows: list[dict], meta: dict, header: str) -> tuple[Path, Path]:
    """out_dir/leaderboard.json ({"rows": [...], and meta}) and leaderboard.md."""
    json_path, md_path = out_dir / "leaderboard.json", out_dir / "leaderboard.md"
    json_path.write_text(json.dumps({"rows": rows, **meta}, indent=1) + "\n")
    md_path.write_text(markdown(rows, header))
    return json_path, md_path
