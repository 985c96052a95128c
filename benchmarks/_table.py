"""What every benchmark prints, kept for `--json FILE`: markdown tables, headline numbers and settings.

    report = Report("rl_step_vs_trl", args)          # args: the parsed command line (its --json is the file)
    report.table(["run", "s"], [["ours", "1.20"]])   # prints the markdown table, keeps its rows
    report.put(step_speedup=1.7)                     # a headline number, a top-level key of the JSON
    report.write()                                   # writes FILE when --json was given

The JSON: {"benchmark", "settings" (the command line's values), "tables" {name: [row by column]}, and the put
keys}. A cell that reads as a number ("1,234", "0.72x", "45%") is stored as that number, anything else as text.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

_NUMBER = re.compile(r"^[+-]?[\d,]*\.?\d+(?:e[+-]?\d+)?[x%]?$")


def add_json_arg(parser: argparse.ArgumentParser) -> None:
    """The shared --json FILE option."""
    parser.add_argument("--json", metavar="FILE", default="",
                        help="also write the tables, ratios and settings to FILE as JSON")


def cell_value(cell):
    """A printed cell as a number where it reads as one ('1,234' -> 1234, '0.72x' -> 0.72, '45%' -> 0.45)."""
    if not isinstance(cell, str):
        return cell
    text = cell.strip()
    if not _NUMBER.match(text):
        return text
    number = float(text.rstrip("x%").replace(",", ""))
    return number / 100 if text.endswith("%") else number


class Report:
    """A benchmark's printed tables and headline numbers, written as JSON by `write` when --json was given."""

    def __init__(self, benchmark: str, args: argparse.Namespace):
        self.path = getattr(args, "json", "")
        self.data = {"benchmark": benchmark, "settings": {k: v for k, v in vars(args).items() if k != "json"},
                     "tables": {}}

    def table(self, header: list[str], rows: list[list], name: str = "table", align: list[str] | None = None) -> None:
        """Print a markdown table (align: '---' or '---:' per column) and keep its rows by column name."""
        print("| " + " | ".join(header) + " |")
        print("|" + "|".join(align or ["---"] * len(header)) + "|")
        for row in rows:
            print("| " + " | ".join(str(cell) for cell in row) + " |")
        self.data["tables"][name] = [{col: cell_value(cell) for col, cell in zip(header, row)} for row in rows]

    def put(self, **numbers) -> None:
        """Headline numbers (ratios, fractions) as top-level keys of the JSON."""
        self.data.update(numbers)

    def write(self) -> None:
        """Write the JSON file if --json named one."""
        if self.path:
            Path(self.path).write_text(json.dumps(self.data, indent=1, default=str) + "\n")
            print(f"\nwrote {self.path}")
