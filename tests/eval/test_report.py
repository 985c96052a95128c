import json
import math

from chatforge.eval.report import Report, intervals_beside


def test_a_list_value_such_as_an_interval_survives_into_report_json(tmp_path):
    report = Report(tmp_path)
    report.add("gold_score", 0.123456789, "mean gold score")
    report.add("gold_score_ci95", [0.1000004, 0.2], "95% interval")
    report.add("odd_ci95", (math.nan, 1.0))
    report.add("missing", math.inf)
    json_path, md_path = report.save()
    numbers = json.loads(json_path.read_text())
    assert numbers == {"gold_score": 0.123457, "gold_score_ci95": [0.1, 0.2], "odd_ci95": [None, 1.0],
                       "missing": None}
    assert "| `gold_score_ci95` | [0.1, 0.2] | 95% interval |" in md_path.read_text()
    assert Report(tmp_path).numbers["gold_score_ci95"] == [0.1, 0.2]  # a rerun keeps it


def test_bar_plot_writes_a_png_and_skips_missing_bars(tmp_path):
    report = Report(tmp_path)
    markdown = report.bar_plot("rates", ["hallucination", "verbosity"], {"SFT": [0.2, None], "PPO": [0.1, 0.3]},
                               "failure rate", "Failure rates")
    assert markdown == "![Failure rates](plots/rates.png)"
    assert (tmp_path / "plots" / "rates.png").stat().st_size > 0


def test_each_interval_is_saved_right_after_its_number(tmp_path):
    assert intervals_beside(["a", "b", "c", "a_ci95", "z_ci95"]) == ["a", "a_ci95", "b", "c", "z_ci95"]
    report = Report(tmp_path)
    for key, value in (("a", 0.5), ("b", 1.0), ("a_ci95", [0.4, 0.6])):
        report.add(key, value)
    json_path, _ = report.save()
    assert list(json.loads(json_path.read_text())) == ["a", "a_ci95", "b"]


def test_a_mapping_such_as_the_versions_is_one_line_of_report_md(tmp_path):
    report = Report(tmp_path)
    report.add("versions", {"python": "3.11.7", "torch": "2.13.0+cpu"}, "package versions")
    json_path, md_path = report.save()
    assert json.loads(json_path.read_text())["versions"] == {"python": "3.11.7", "torch": "2.13.0+cpu"}
    assert "| `versions` | python 3.11.7, torch 2.13.0+cpu | package versions |" in md_path.read_text()
