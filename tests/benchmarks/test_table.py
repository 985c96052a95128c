"""benchmarks/_table.py: the markdown table every benchmark prints and the --json file it writes."""

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

from _table import Report, add_json_arg, cell_value  # noqa: E402


def test_cell_value_reads_printed_numbers():
    assert cell_value("1,234") == 1234.0
    assert cell_value("0.72x") == 0.72
    assert cell_value("45%") == 0.45
    assert cell_value("1.5e-3") == 0.0015
    assert cell_value("1.12M") == "1.12M"
    assert cell_value("ours") == "ours"
    assert cell_value(3) == 3


def test_report_prints_the_table_and_writes_json(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=4)
    add_json_arg(parser)
    args = parser.parse_args(["--json", str(tmp_path / "out.json")])
    report = Report("demo_bench", args)
    report.table(["run", "s / step", "TRL / ours"], [["ours", "0.500", "2.00x"], ["TRL", "1.000", "1.00x"]])
    report.put(step_speedup=2.0)
    report.write()
    printed = capsys.readouterr().out
    assert "| run | s / step | TRL / ours |\n|---|---|---|\n| ours | 0.500 | 2.00x |" in printed
    data = json.loads((tmp_path / "out.json").read_text())
    assert data["benchmark"] == "demo_bench" and data["settings"] == {"steps": 4}
    assert data["tables"]["table"][0] == {"run": "ours", "s / step": 0.5, "TRL / ours": 2.0}
    assert data["step_speedup"] == 2.0


def test_report_without_json_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    report = Report("demo_bench", argparse.Namespace(json=""))
    report.put(x=1)
    report.write()
    assert list(tmp_path.iterdir()) == []
