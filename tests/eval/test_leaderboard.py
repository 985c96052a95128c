"""The leaderboard's rows: per-seed results from eval.json / samples.jsonl, pooled over seeds by hand."""

import json

import pytest

from chatforge.eval import leaderboard


def eval_report(model_gold: float, kl: float, ppl: float, hallucination: float) -> dict:
    numbers = {"gold_score": model_gold, "kl_to_reference": kl, "ppl": ppl,
               "dimensions": {"failure_rates": {"hallucination": {"rate": hallucination, "n": 4}}}}
    return {"samples_per_prompt": 2, "model": numbers, "baseline": dict(numbers, kl_to_reference=0.0)}


def samples(model: list[float], baseline: list[float]) -> list[dict]:
    return [{"model_gold": m, "baseline_gold": b} for m, b in zip(model, baseline)]


def test_seed_result_counts_wins_ties_half_and_reads_the_eval_numbers():
    result = leaderboard.seed_result(eval_report(0.7, 1.5, 2.0, 0.25), samples([1, 0.5, 0, 1], [0, 0.5, 1, 0.5]),
                                     greedy=[1.0, 0.0], sft_greedy=[0.5, 0.0], seconds=12.0, policy_samples=64)
    assert result["wins"] == [1.0, 0.5, 0.0, 1.0]
    assert result["greedy_wins"] == [1.0, 0.5]
    assert result["gold_score_greedy"] == 0.5
    assert (result["kl"], result["ppl"], result["failure_rates"]) == (1.5, 2.0, {"hallucination": 0.25})


def test_rows_pool_the_seeds_and_average_the_rest():
    seed0 = leaderboard.seed_result(eval_report(0.6, 1.0, 2.0, 0.5), samples([1, 1, 0, 1], [0, 0, 0, 1]),
                                    [1.0, 1.0], [0.0, 1.0], 10.0, 64)
    seed1 = leaderboard.seed_result(eval_report(0.8, 2.0, 3.0, 0.0), samples([0, 0, 1, 1], [1, 1, 1, 1]),
                                    [0.0, 1.0], [0.0, 1.0], 20.0, 64)
    row = leaderboard.leaderboard_row("grpo", {1: seed1, 0: seed0}, resamples=200)
    # seed 0 wins 1, 1, tie, tie = 3/4; seed 1: 0, 0, tie, tie = 1/4; pooled 8 pairs: 4/8
    assert row["winrate_vs_sft"] == pytest.approx(0.5)
    assert row["winrate_vs_sft_by_seed"] == [0.75, 0.25]
    # greedy: seed 0 win, tie; seed 1 tie, tie -> 2.5 / 4
    assert row["winrate_vs_sft_greedy"] == pytest.approx(0.625)
    low, high = row["winrate_vs_sft_ci95"]
    assert 0.0 <= low <= 0.5 <= high <= 1.0
    assert (row["gold_score"], row["kl"], row["ppl"], row["seconds"]) == (pytest.approx(0.7), 1.5, 2.5, 15.0)
    assert row["failure_rates"] == {"hallucination": 0.25}
    assert row["seeds"] == [0, 1]


def test_best_of_n_has_no_greedy_numbers_and_the_tables_show_dashes(tmp_path):
    bon = leaderboard.seed_result(eval_report(0.6, 1.0, 2.0, 0.5) | {"best_of_n": {"gold_score": 0.9}},
                                  [{"best_of_n_gold": 1, "baseline_gold": 0}] * 4, None, [0.0], 0.0, 0, "best_of_n")
    row = leaderboard.leaderboard_row("best_of_n", {0: bon}, resamples=50)
    assert row["winrate_vs_sft"] == 1.0 and row["winrate_vs_sft_greedy"] is None and row["kl"] is None
    json_path, md_path = leaderboard.write(tmp_path, [row], {"seeds": [0]}, "# board")
    assert json.loads(json_path.read_text())["rows"][0]["method"] == "best_of_n"
    assert "| best_of_n | 1.000 [1.000, 1.000] | - - |" in md_path.read_text()
