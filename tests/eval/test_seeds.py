import math

import pytest

from chatforge.eval.seeds import aggregate_seeds, cell, numeric_values, sample_std, seeds_table

REPORTS = {
    0: {"win": 0.7, "win_ci95": [0.66, 0.74], "rate": 0.1, "steps": 50, "note": "text", "flag": True,
        "missing": None},
    1: {"win": 0.6, "win_ci95": [0.55, 0.65], "rate": None, "steps": 50},
    2: {"win": 0.8, "win_ci95": [0.75, 0.85], "rate": 0.3, "steps": 50, "only_here": 2.0},
}


def test_only_numbers_and_intervals_are_kept():
    assert numeric_values(REPORTS[0]) == {"win": 0.7, "win_ci95": [0.66, 0.74], "rate": 0.1, "steps": 50}
    assert numeric_values({"nan": math.nan, "empty": [], "mixed": [1.0, None]}) == {}


def test_mean_std_min_max_over_the_seeds_that_have_the_number():
    aggregate = aggregate_seeds(REPORTS)
    assert aggregate["seeds"] == [0, 1, 2]
    assert aggregate["per_seed"][1] == {"win": 0.6, "win_ci95": [0.55, 0.65], "steps": 50}
    assert aggregate["mean"]["win"] == pytest.approx(0.7)
    assert aggregate["std"]["win"] == pytest.approx(0.1)  # deviations -0.1, 0, 0.1: sqrt(0.02 / 2)
    assert (aggregate["min"]["win"], aggregate["max"]["win"]) == (0.6, 0.8)
    assert aggregate["mean"]["rate"] == pytest.approx(0.2)  # seed 1 has no rate: two seeds count
    assert aggregate["std"]["steps"] == 0.0
    assert aggregate["mean"]["only_here"] == 2.0 and aggregate["std"]["only_here"] is None
    assert "win_ci95" not in aggregate["mean"]  # intervals stay per seed


def test_sample_std_by_hand():
    assert sample_std([1.0, 3.0]) == pytest.approx(math.sqrt(2.0))
    assert sample_std([5.0]) is None


def test_the_table_has_a_column_per_seed_then_mean_and_spread():
    table = seeds_table(aggregate_seeds(REPORTS), ["win", "win_ci95", "rate", "absent"])
    lines = table.splitlines()
    assert lines[0] == "| key | seed 0 | seed 1 | seed 2 | mean | std | min .. max |"
    assert lines[2] == "| `win` | 0.7 | 0.6 | 0.8 | 0.7 | 0.1 | 0.6 .. 0.8 |"
    assert lines[3] == "| `win_ci95` | [0.66, 0.74] | [0.55, 0.65] | [0.75, 0.85] | - | - | - |"
    assert lines[4] == "| `rate` | 0.1 | - | 0.3 | 0.2 | 0.1414 | 0.1 .. 0.3 |"
    assert lines[5] == "| `absent` | - | - | - | - | - | - |"
    assert cell(None) == "-" and cell(True) == "-"
