"""The report card: `report.json` (the scoreboard, flat key -> number) and `report.md` (for a person, with plots).

Stages add headline numbers, markdown sections and PNG plots; `save()` writes both files. Keys
already in an existing report.json are kept unless overwritten, so stages can be rerun one at a time.
"""

from __future__ import annotations

import json
import math
from pathlib import Path


class Report:
    """Accumulates numbers, sections and plots for one run folder."""

    def __init__(self, run_dir: str | Path, title: str = "chatforge report card"):
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.title = title
        self.numbers: dict[str, float | int | str | None] = {}
        self.descriptions: dict[str, str] = {}
        self.sections: list[tuple[str, str]] = []
        existing = self.run_dir / "report.json"
        if existing.exists():
            self.numbers.update(json.loads(existing.read_text()))

    def add(self, key: str, value, description: str = "") -> None:
        """A headline number (a report.json key) with a one-line meaning."""
        if isinstance(value, float) and not math.isfinite(value):
            value = None
        self.numbers[key] = round(value, 6) if isinstance(value, float) else value
        if description:
            self.descriptions[key] = description

    def section(self, heading: str, markdown: str) -> None:
        """A markdown section of report.md."""
        self.sections.append((heading, markdown))

    def plot(self, name: str, series: dict[str, tuple[list, list]], xlabel: str, ylabel: str,
             title: str) -> str:
        """Save a line plot as plots/NAME.png (one line per series: label -> (xs, ys)); return markdown for it."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        folder = self.run_dir / "plots"
        folder.mkdir(exist_ok=True)
        fig, ax = plt.subplots(figsize=(6, 3.5), dpi=110)
        for label, (xs, ys) in series.items():
            if xs:
                ax.plot(xs, ys, label=label, marker="o" if len(xs) < 20 else None, markersize=3)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.grid(alpha=0.3)
        if len(series) > 1:
            ax.legend()
        fig.tight_layout()
        fig.savefig(folder / f"{name}.png")
        plt.close(fig)
        return f"![{title}](plots/{name}.png)"

    def save(self) -> tuple[Path, Path]:
        """Write report.json and report.md; return their paths."""
        json_path = self.run_dir / "report.json"
        json_path.write_text(json.dumps(self.numbers, indent=1) + "\n")
        lines = [f"# {self.title}", "", "| key | value | meaning |", "|---|---|---|"]
        for key, value in self.numbers.items():
            shown = f"{value:.4g}" if isinstance(value, float) else str(value)
            lines.append(f"| `{key}` | {shown} | {self.descriptions.get(key, '')} |")
        for heading, markdown in self.sections:
            lines += ["", f"## {heading}", "", markdown.rstrip()]
        md_path = self.run_dir / "report.md"
        md_path.write_text("\n".join(lines) + "\n")
        return json_path, md_path
