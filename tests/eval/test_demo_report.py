import json

import pytest

from chatforge.eval.demo_report import (add_dimension_numbers, add_intervals, bars_held, bars_line,
                                        greedy_intervals, overoptimization, prompt_text, sampled_results, smoothed,
                                        write_dimensions_section, write_seeds_report)
from chatforge.eval.report import Report
from chatforge.world.gold import DIMENSIONS


def test_smoothed_is_a_trailing_mean():
    assert smoothed([1.0, 3.0, 5.0, 7.0], 2) == [1.0, 2.0, 4.0, 6.0]


def test_overoptimization_finds_where_gold_stops_following_reward():
    # reward rises all the way; gold rises for 10 steps, then falls
    metrics = [{"step": s, "rollout/reward": 0.1 * s, "rollout/gold_score": min(s, 10) - max(0, s - 10)}
               for s in range(1, 21)]
    shape = overoptimization(metrics, window=1)
    assert shape["peak_step"] == 10
    assert shape["gold_peak"] == 10 and shape["gold_end"] == 0
    assert shape["reward_end"] > shape["reward_peak"] > shape["reward_start"]


def judgement(kind, score, **failures):
    return {"kind": kind, "score": score, "failures": {"verbosity": False, **failures}}


# greedy answers to the same four prompts (fact, fact, harmful, benign)
GREEDY = {
    "base": [judgement("fact", 0.0, wrong_answer=True), judgement("fact", 0.5, wrong_answer=False, verbosity=True),
             judgement("harmful", -1.0, harmful_compliance=True), judgement("benign", 1.0, wrong_answer=False)],
    "sft": [judgement("fact", 1.0, wrong_answer=False), judgement("fact", 0.0, wrong_answer=True),
            judgement("harmful", 1.0, harmful_compliance=False), judgement("benign", 1.0, wrong_answer=False)],
    "ppo": [judgement("fact", 1.0, wrong_answer=False)] * 2 + [judgement("harmful", 1.0, harmful_compliance=False),
                                                              judgement("benign", 0.1, wrong_answer=False)],
    "ppo_ptx": [judgement("fact", 1.0, wrong_answer=False)] * 2 + [judgement("harmful", 1.0, harmful_compliance=False),
                                                                  judgement("benign", 1.0, wrong_answer=False)],
}


def eval_entry(gold, wrong_rate, by_kind=None):
    rates = {name: {"rate": None, "n": 0} for name in DIMENSIONS}
    rates.update(verbosity={"rate": 0.25, "n": 8}, wrong_answer={"rate": wrong_rate, "n": 6},
                 harmful_compliance={"rate": 0.0, "n": 2})
    return {"gold_score": gold, "gold_score_ci95": [gold - 0.1, gold + 0.1],
            "dimensions": {"failure_rates": rates, "gold_score_by_kind": by_kind or {"fact": {"score": gold, "n": 4}}}}


EVALS = {
    "ppo": {"model": eval_entry(0.8, 0.3), "baseline": eval_entry(0.6, 0.5), "winrate_gold": 0.6,
            "winrate_gold_ci95": [0.55, 0.65], "samples_per_prompt": 2, "prompts": 4},
    "ppo_ptx": {"model": eval_entry(0.9, 0.2), "baseline": eval_entry(0.6, 0.5), "best_of_n": eval_entry(0.85, 0.25),
                "winrate_gold": 0.7, "winrate_gold_ci95": [0.66, 0.74], "winrate_rm": 0.8,
                "winrate_rm_ci95": [0.75, 0.85], "samples_per_prompt": 2, "prompts": 4},
}


def test_dimension_numbers_of_greedy_and_sampled_answers(tmp_path):
    report = Report(tmp_path)
    add_dimension_numbers(report, GREEDY, sampled_results(EVALS))
    numbers = report.numbers
    assert numbers["base_wrong_answer_rate"] == pytest.approx(1 / 3)
    assert numbers["base_harmful_compliance_rate"] == 1.0 and numbers["sft_harmful_compliance_rate"] == 0.0
    assert numbers["base_verbosity_rate"] == 0.25
    for name in ("sft", "ppo_ptx"):  # the eight names the issue asks for: null where nothing was measured
        for dimension in ("hallucination", "harmful_compliance", "over_refusal", "constraint_violation"):
            assert f"{name}_{dimension}_rate" in numbers
    assert numbers["ppo_ptx_hallucination_rate"] is None
    assert numbers["sft_wrong_answer_rate_sampled"] == 0.5 and numbers["ppo_ptx_wrong_answer_rate_sampled"] == 0.2
    assert numbers["ppo_wrong_answer_rate_sampled"] == 0.3 and numbers["bon_wrong_answer_rate"] == 0.25
    assert "base_wrong_answer_rate_sampled" not in numbers  # the base model has no T=1 samples


def test_intervals_of_every_gold_score_and_win_rate(tmp_path):
    report = Report(tmp_path)
    scores = {name: [j["score"] for j in judgements] for name, judgements in GREEDY.items()}
    add_intervals(report, scores, EVALS, resamples=500, seed=0)
    numbers = report.numbers
    for name in ("base", "sft", "ppo", "ppo_ptx"):
        low, high = numbers[f"{name}_gold_score_ci95"]
        assert low <= sum(scores[name]) / 4 <= high
    # PPO-ptx's greedy answers never lose to SFT's and win one of four: every resample's win rate is 0.5 .. 1
    low, high = numbers["ppo_ptx_winrate_vs_sft_greedy_ci95"]
    assert 0.5 <= low <= 0.625 <= high <= 1.0
    assert numbers["ppo_ptx_winrate_vs_sft_ci95"] == [0.66, 0.74] and numbers["ppo_winrate_vs_sft_ci95"] == [0.55, 0.65]
    assert numbers["ppo_ptx_winrate_vs_sft_rm_ci95"] == [0.75, 0.85]
    assert numbers["sft_sampled_gold_score_ci95"] == pytest.approx([0.5, 0.7])
    assert numbers["bon_gold_score_ci95"] == pytest.approx([0.75, 0.95])
    assert "oracle_winrate_vs_sft_ci95" not in numbers  # no oracle run


def test_the_per_dimension_section_has_a_table_a_plot_and_a_kind_table(tmp_path):
    report = Report(tmp_path)
    scores = {name: [j["score"] for j in judgements] for name, judgements in GREEDY.items()}
    write_dimensions_section(report, GREEDY, sampled_results(EVALS), greedy_intervals(scores, 200, 0))
    heading, text = report.sections[0]
    assert heading == "Per-dimension evaluation"
    assert "| PPO-ptx | 1.000 [1.000, 1.000] | 0.900 [0.800, 1.000] |" in text
    assert "| best-of-n of SFT | - | 0.850 [0.750, 0.950] |" in text
    assert "0.333 / 0.500" in text  # SFT's wrong-answer rate, greedy / T=1
    assert "- / -" in text  # hallucination: applies to none of these prompts
    assert (tmp_path / "plots" / "failure_rates.png").exists()
    assert "| fact | 2 | 0.250 | 0.500 | 1.000 | 1.000 |" in text  # base, SFT, PPO, PPO-ptx greedy on the facts


def test_bars_of_the_issue():
    report = {"ppo_ptx_winrate_vs_sft": 0.71, "ppo_ptx_winrate_vs_sft_ci95": [0.66, 0.76],
              "ppo_ptx_winrate_vs_sft_greedy": 0.6, "ppo_ptx_gold_score": 0.95, "bon_gold_score": 0.9,
              "sft_hallucination_rate": 0.2, "ppo_ptx_hallucination_rate": 0.1,
              "sft_harmful_compliance_rate": 0.0, "ppo_ptx_harmful_compliance_rate": 0.0,
              "sft_over_refusal_rate": 0.10, "ppo_ptx_over_refusal_rate": 0.12,
              "sft_constraint_violation_rate": None, "ppo_ptx_constraint_violation_rate": None}
    held = dict(bars_held(report))
    assert list(held.values()) == [True, False, True, True, True, True, None]  # both 0 counts as lower
    assert dict(bars_held({**report, "ppo_ptx_winrate_vs_sft_ci95": [0.64, 0.76]}))[
        "T=1 win rate over SFT >= 0.70 with ci95 low >= 0.65"] is False
    assert list(dict(bars_held({**report, "ppo_ptx_over_refusal_rate": 0.13})).values())[5] is False
    assert all(held is None for _, held in bars_held({}))
    assert bars_line(3, report).startswith("- seed 3: 5 of 6 measured bars hold: ")


def test_seeds_report_has_seeds_json_and_a_table(tmp_path):
    per_seed = {0: {"ppo_ptx_winrate_vs_sft": 0.7, "ppo_ptx_winrate_vs_sft_ci95": [0.65, 0.75], "wall_seconds": 900},
                1: {"ppo_ptx_winrate_vs_sft": 0.6, "ppo_ptx_winrate_vs_sft_ci95": [0.55, 0.65], "wall_seconds": 1000}}
    json_path, md_path = write_seeds_report(tmp_path, per_seed)
    seeds = json.loads(json_path.read_text())
    assert seeds["seeds"] == [0, 1] and seeds["mean"]["ppo_ptx_winrate_vs_sft"] == pytest.approx(0.65)
    assert seeds["per_seed"]["1"]["wall_seconds"] == 1000
    text = md_path.read_text()
    assert "| `ppo_ptx_winrate_vs_sft` | 0.7 | 0.6 | 0.65 | 0.07071 | 0.6 .. 0.7 |" in text
    assert "| `ppo_ptx_winrate_vs_sft_ci95` | [0.65, 0.75] | [0.55, 0.65] | - | - | - |" in text
    assert "- seed 0: " in text and "- seed 1: " in text


def test_a_chat_prompt_is_shown_as_its_first_and_last_message():
    chat = [{"role": "user", "content": "What is Mira's job?"}, {"role": "assistant", "content": "Mira is a smith."},
            {"role": "user", "content": "Where does she live?"}]
    assert prompt_text(chat) == "What is Mira's job? ... Where does she live?"
    assert prompt_text(chat[:1]) == "What is Mira's job?" and prompt_text("Hi?") == "Hi?"
