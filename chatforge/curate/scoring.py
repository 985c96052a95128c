"""How well curation did, measured against a known truth (the built-in crawl's truth.jsonl).

Near-duplicates: among the documents that reach near-duplicate detection (exact copies are gone),
every document but the first of its true cluster should be removed. Recall is the share of those
that were; precision is the share of removed documents whose kept partner is in the same true
cluster (a stricter count than "was some duplicate"). Quality: ROC AUC of the classifier's score
as a detector of clean (not junk) documents, over the documents it scored.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from chatforge.errors import ChatforgeError


def read_truth(path: str | Path) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(cluster ids, junk flags, kinds) in document order from a truth.jsonl."""
    clusters, junk, kinds = [], [], []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            try:
                record = json.loads(line)
                clusters.append(int(record["cluster"]))
                junk.append(bool(record["junk"]))
                kinds.append(str(record.get("kind", "")))
            except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
                raise ChatforgeError(f"{path}:{number}: a truth record needs 'cluster' and 'junk' ({exc})") from None
    return np.array(clusters), np.array(junk), kinds


def near_dup_scores(cluster_of: np.ndarray, removed: np.ndarray, partner: np.ndarray) -> dict:
    """cluster_of: true cluster per document at the near-dup step, in stream order (-1 = not in the
    truth, e.g. another source); removed: indices removed; partner: the kept document of each removed one."""
    should_remove = np.zeros(len(cluster_of), dtype=bool)
    seen: set[int] = set()
    for i, cid in enumerate(cluster_of):
        if cid >= 0 and cid in seen:
            should_remove[i] = True
        seen.add(int(cid))
    same = (cluster_of[removed] == cluster_of[partner]) & (cluster_of[removed] >= 0)
    return {"near_dup_precision": float(same.mean()) if len(removed) else 1.0,
            "near_dup_recall": float(should_remove[removed].sum() / should_remove.sum()) if should_remove.any() else 1.0,
            "near_dup_true": int(should_remove.sum()), "near_dup_removed": int(len(removed))}


def quality_scores(scores: np.ndarray, junk: np.ndarray, kept: np.ndarray) -> dict:
    """ROC AUC of `scores` for clean vs junk, and what the keep rule did to each."""
    from sklearn.metrics import roc_auc_score

    result = {"quality_auc": float(roc_auc_score(~junk, scores)) if 0 < junk.sum() < len(junk) else float("nan")}
    result["junk_removed_share"] = float(1.0 - kept[junk].mean()) if junk.any() else float("nan")
    result["clean_kept_share"] = float(kept[~junk].mean()) if (~junk).any() else float("nan")
    return result
