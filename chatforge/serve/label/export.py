"""Labels -> the JSONL files the SFT and RM stages read (`chatforge.data.formats`).

    comparisons.jsonl            {"prompt", "responses": [best, ..., worst], "labeler", "flags"}
    comparisons_heldout.jsonl    the same, by held-out labelers: never train; evaluate the RM on them
    demonstrations.jsonl         {"prompt", "response", "labeler"}
    demonstrations_heldout.jsonl the same, by held-out labelers
    export.json                  counts, the held-out labelers, agreement

Skips ("unclear intent") are counted, not exported. Every ranking is one comparison, so an item ranked
by three labelers gives three. Every file is written every time, empty when it has no records, so a
file from an earlier export never survives (a labeler marked held out since leaves comparisons.jsonl);
each is written to a temporary file and renamed over the old one, so a failed export leaves whole files.
"""

from __future__ import annotations

import json
import os
import tempfile
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
        path = out_dir / f"{name}.jsonl"
        write_atomically(path, (json.dumps(record, ensure_ascii=False) + "\n" for record in records))
        written[name] = {"path": str(path), "records": len(records)}
    held_out = sorted(session.scalars(select(Labeler.name).where(Labeler.held_out)))
    summary = {"job": job or None, "labels": dict(counts), "files": written, "holdout_labelers": held_out,
               "agreement": label_agreement(session, job)}
    write_atomically(out_dir / "export.json", [json.dumps(summary, indent=1)])
    return summary


def write_atomically(path: Path, chunks) -> None:
    """Write the text `chunks` to a temporary file beside `path`, sync it, rename it over `path`; if writing
    fails, the temporary file is removed and `path` is left as it was."""
    handle = tempfile.NamedTemporaryFile("w", encoding="utf-8", dir=path.parent, prefix=f".{path.name}.",
                                         delete=False)
    try:
        with handle:
            for chunk in chunks:
                handle.write(chunk)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(handle.name, 0o644)  # as a plain open() would have made it (mkstemp makes 0600)
        os.replace(handle.name, path)
    except BaseException:
        os.unlink(handle.name)
        raise
