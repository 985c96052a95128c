"""JSON Lines files: one JSON object per line, UTF-8."""

from __future__ import annotations

import json
from pathlib import Path


def read_jsonl(path: str | Path) -> list[dict]:
    """Every record of a JSONL file, skipping blank lines (no validation: data/formats.py checks user files)."""
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


def write_jsonl(path: str | Path, records) -> Path:
    """Write one JSON object per line (UTF-8, non-ASCII kept as is), creating the parent folder; return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    return path
