"""Labels -> the JSONL files the SFT and RM stages read (`chatforge.data.formats`).

    comparisons.jsonl            {"prompt", "responses": [best, ..., worst], "labeler", "flags"}
    comparisons_heldout.jsonl    the same, by held-out labelers: never train; evaluate the RM on them
    demonstrations.jsonl         {"prompt", "response", "labeler"}
    demonstrations_heldout.jsonl the same, by held-out labelers
    export.json                  counts, the held-out labelers, agreement

Skips ("unclear intent") are counted, not exported. Every ranking is one comparison, so an item ranked
by three labelers gives three. A file with no records is not written (the readers refuse empty input).
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

from chatforge.serve.label.agreement import label_agreement
from chatforge.serve.label.db import Item, Job, Label, Labeler


def export_labels(session: Session, out_dir: str | Path, job: str = "") -> dict:
    """Write the export files for every job (or the job named `job`); returns the summary (export.json)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    query = (select(Label).join(Label.item).join(Item.job).order_by(Label.item_id, Label.id)
             .options(selectinload(Label.item).selectinload(Item.responses), selectinload(Label.labeler)))
    if job:
        query = query.where(Job.name == job)
    files: dict[str, list[dict]] = {name: [] for name in ("comparisons", "comparisons_heldout", "demonstrations",
                                                          "demonstrations_heldout")}
    counts = Counter()
    for label in session.scalars(query):
        counts[label.kind] += 1
        suffix = "_heldout" if label.labeler.held_out else ""
        if label.kind == "ranking":
            texts = {response.position: response.text for response in label.item.responses}
            flags = [name for name in ("harmful", "untruthful") if getattr(label, name)]
            files["comparisons" + suffix].append({"prompt": label.item.prompt,
                                                  "responses": [texts[i] for i in label.ranking],
                                                  "labeler": label.labeler.name, "flags": flags})
        elif label.kind == "demonstration":
            files["demonstrations" + suffix].append({"prompt": label.item.prompt, "response": label.demonstration,
                                                     "labeler": label.labeler.name})
    written = {}
    for name, records in files.items():
        if records:
            path = out_dir / f"{name}.jsonl"
            with path.open("w", encoding="utf-8") as handle:
                for record in records:
                    handle.write(json.dumps(record, ensure_ascii=False) + "\n")
            written[name] = {"path": str(path), "records": len(records)}
    held_out = sorted(session.scalars(select(Labeler.name).where(Labeler.held_out)))
    summary = {"job": job or None, "labels": dict(counts), "files": written, "holdout_labelers": held_out,
               "agreement": label_agreement(session, job)}
    (out_dir / "export.json").write_text(json.dumps(summary, indent=1))
    return summary
