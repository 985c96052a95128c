"""The same run repeated with several seeds: each report.json's numbers side by side, their mean and spread.

A single run's interval says how much its number would move with other prompts; the spread across seeds
says how much it moves with another world, initialisation, data order and sampling. Both matter before
a difference between two settings is read as real.
"""

from __future__ import annotations

import math


def is_number(value) -> bool:
    """True for an int or finite float (not a bool, which JSON also reads as a number in Python)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def numeric_values(report: dict) -> dict:
    """The report's numbers and intervals (lists of numbers); text and nulls are left out."""
    return {key: value for key, value in report.items()
            if is_number(value) or (isinstance(value, list) and value and all(map(is_number, value)))}


def sample_std(values: list[float]) -> float | None:
    """Standard deviation with n - 1 in the denominator; None for fewer than two values."""
    if len(values) < 2:
        return None
    center = sum(values) / len(values)
    return math.sqrt(sum((v - center) ** 2 for v in values) / (len(values) - 1))


def aggregate_seeds(per_seed: dict[int, dict]) -> dict:
    """{"seeds", "per_seed": {seed: numbers}, "mean", "std", "min", "max"}; the last four {key: value} over the
    scalar keys, each over the seeds that have a number for it (intervals are kept per seed only)."""
    numbers = {seed: numeric_values(report) for seed, report in per_seed.items()}
    keys = list(dict.fromkeys(key for values in numbers.values() for key, v in values.items() if is_number(v)))
    columns = {key: [values[key] for values in numbers.values() if is_number(values.get(key))] for key in keys}
    return {"seeds": list(per_seed), "per_seed": numbers,
            "mean": {key: sum(values) / len(values) for key, values in columns.items()},
            "std": {key: sample_std(values) for key, values in columns.items()},
            "min": {key: min(values) for key, values in columns.items()},
            "max": {key: max(values) for key, values in columns.items()}}


def cell(value) -> str:
    """A table cell: 4 significant digits, intervals as [low, high], '-' for nothing."""
    if isinstance(value, list):
        return "[" + ", ".join(cell(item) for item in value) + "]"
    return f"{value:.4g}" if is_number(value) else "-"


def seeds_table(aggregate: dict, keys: list[str]) -> str:
    """Markdown: a row per key, a column per seed, then mean, standard deviation and range."""
    seeds = aggregate["seeds"]
    lines = ["| key | " + " | ".join(f"seed {seed}" for seed in seeds) + " | mean | std | min .. max |",
             "|---|" + "---|" * (len(seeds) + 3)]
    for key in keys:
        per_seed = [cell(aggregate["per_seed"][seed].get(key)) for seed in seeds]
        spread = (f"{cell(aggregate['min'][key])} .. {cell(aggregate['max'][key])}" if key in aggregate["min"]
                  else "-")
        lines.append(f"| `{key}` | " + " | ".join(per_seed) +
                     f" | {cell(aggregate['mean'].get(key))} | {cell(aggregate['std'].get(key))} | {spread} |")
    return "\n".join(lines)
