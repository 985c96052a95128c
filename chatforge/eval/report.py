"""The report card: `report.json` (the scoreboard, flat key -> number, or a list such as a [low, high] interval,
or a mapping of text such as the package versions)
and `report.md` (for a person, with plots).

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
        self.numbers: dict[str, float | int | str | list | dict | None] = {}
        self.descriptions: dict[str, str] = {}
        self.sections: list[tuple[str, str]] = []
        existing = self.run_dir / "report.json"
        if existing.exists():
            self.numbers.update(json.loads(existing.read_text()))

    def add(self, key: str, value, description: str = "") -> None:
        """A headline number (a report.json key) with a one-line meaning; a list (e.g. an interval) is kept as one."""
        self.numbers[key] = [clean(item) for item in value] if isinstance(value, (list, tuple)) else clean(value)
        if description:
            self.descriptions[key] = description

    def section(self, heading: str, markdown: str) -> None:
        """A markdown section of report.md."""
        self.sections.append((heading, markdown))

    def plot(self, name: str, series: dict[str, tuple[list, list]], xlabel: str, ylabel: str,
             title: str) -> str:
        """Save a line plot as plots/NAME.png (one line per series: label -> (xs, ys)); return markdown for it."""
        fig, ax = new_figure(6.0)
        for label, (xs, ys) in series.items():
            if xs:
                ax.plot(xs, ys, label=label, marker="o" if len(xs) < 20 else None, markersize=3)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.grid(alpha=0.3)
        if len(series) > 1:
            ax.legend()
        return self._save_figure(fig, name, title)

    def bar_plot(self, name: str, groups: list[str], series: dict[str, list], ylabel: str, title: str) -> str:
        """Save grouped bars as plots/NAME.png (per group, one bar per series: label -> a value per group,
        None for no bar); return markdown for it."""
        fig, ax = new_figure(max(6.0, 1.1 * len(groups)))
        width = 0.8 / max(len(series), 1)
        for k, (label, values) in enumerate(series.items()):
            offset = (k - (len(series) - 1) / 2) * width  # the series' bars side by side around each group
            bars = [(i + offset, value) for i, value in enumerate(values) if value is not None]
            ax.bar([x for x, _ in bars], [value for _, value in bars], width, label=label)
        ax.set_xticks(range(len(groups)))
        ax.set_xticklabels(groups, fontsize=8)
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.grid(alpha=0.3, axis="y")
        if len(series) > 1:
            ax.legend(fontsize=8)
        return self._save_figure(fig, name, title)

    def _save_figure(self, fig, name: str, title: str) -> str:
        """Write the figure to plots/NAME.png, close it, and return markdown that shows it."""
        import matplotlib.pyplot as plt

        folder = self.run_dir / "plots"
        folder.mkdir(exist_ok=True)
        fig.tight_layout()
        fig.savefig(folder / f"{name}.png")
        plt.close(fig)
        return f"![{title}](plots/{name}.png)"

    def save(self) -> tuple[Path, Path]:
        """Write report.json and report.md; return their paths."""
        numbers = {key: self.numbers[key] for key in intervals_beside(list(self.numbers))}
        json_path = self.run_dir / "report.json"
        json_path.write_text(json.dumps(numbers, indent=1) + "\n")
        lines = [f"# {self.title}", "", "| key | value | meaning |", "|---|---|---|"]
        for key, value in numbers.items():
            lines.append(f"| `{key}` | {shown(value)} | {self.descriptions.get(key, '')} |")
        for heading, markdown in self.sections:
            lines += ["", f"## {heading}", "", markdown.rstrip()]
        md_path = self.run_dir / "report.md"
        md_path.write_text("\n".join(lines) + "\n")
        return json_path, md_path


def intervals_beside(keys: list[str]) -> list[str]:
    """The keys in their order, except that each KEY_ci95 comes right after KEY when KEY is there."""
    ordered = []
    for key in keys:
        if not (key.endswith("_ci95") and key[:-len("_ci95")] in keys):
            ordered.append(key)
        if f"{key}_ci95" in keys:
            ordered.append(f"{key}_ci95")
    return ordered


def clean(value):
    """A report.json value: floats rounded to 6 places, nan / inf as None (valid JSON)."""
    if isinstance(value, float):
        return round(value, 6) if math.isfinite(value) else None
    return value


def shown(value) -> str:
    """A report.json value as report.md shows it: 4 significant digits, lists as [a, b], a mapping as 'k v, ...'."""
    if isinstance(value, dict):
        return ", ".join(f"{key} {shown(item)}" for key, item in value.items())
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(shown(item) for item in value) + "]"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def new_figure(width: float):
    """(figure, axes) of a report plot, 3.5 inches high, drawn without a display."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=(width, 3.5), dpi=110)
