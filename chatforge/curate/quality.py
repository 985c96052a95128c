"""The quality filter: a classifier of reference text (positive) against the raw crawl (negative).

As in GPT-3 (Brown et al. 2020, appendix A): hashed word n-gram features and logistic regression
(scikit-learn's HashingVectorizer and LogisticRegression), then a document is kept when a Pareto
draw exceeds 1 - score, so some low-scoring text stays and the crawl's variety is not lost.

The crawl is not all bad: its good documents are in the negative class too, so even a perfect
classifier scores a reference-like crawl document near P(reference) of the training mix, not 1.
Trained on positives against unlabeled data, P(positive | x) = c * P(good | x), with c the mean
score of held-out positives (Elkan & Noto 2008); `calibrated()` divides by c (capped at 1), so the
Pareto rule keeps reference-like text as GPT-3 meant it to. calibration="none" uses the raw score.

Saved as a folder of plain data, never a pickle: classifier.json (the vectoriser's settings, the
intercept, how it was trained) and coef.npy (one weight per hashed feature).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from chatforge.errors import ChatforgeError


@dataclass
class QualityClassifier:
    """Hashed n-gram logistic regression; `score(texts)` is P(reference-like) per text."""

    n_features: int
    ngram_max: int
    coef: np.ndarray  # (n_features,) float32
    intercept: float
    reference_mean_score: float = 1.0  # c: the mean score of held-out reference documents
    trained_on: dict = field(default_factory=dict)

    def _vectorizer(self):
        from sklearn.feature_extraction.text import HashingVectorizer

        # alternate_sign=False: colliding n-grams add up instead of cancelling; l2 norm: length does not score
        return HashingVectorizer(n_features=self.n_features, ngram_range=(1, self.ngram_max), alternate_sign=False,
                                 norm="l2", lowercase=True)

    def score(self, texts: list[str]) -> np.ndarray:
        """P(reference-like) for each text, in [0, 1]."""
        logits = self._vectorizer().transform(texts) @ self.coef + self.intercept
        return 1.0 / (1.0 + np.exp(-logits))

    def calibrated(self, scores: np.ndarray) -> np.ndarray:
        """Scores divided by the held-out reference's mean score, capped at 1: an estimate of P(good)."""
        return np.minimum(1.0, scores / max(self.reference_mean_score, 1e-6))

    def save(self, folder: Path) -> Path:
        """Write classifier.json and coef.npy into `folder`; return it."""
        folder.mkdir(parents=True, exist_ok=True)
        np.save(folder / "coef.npy", self.coef.astype(np.float32))
        meta = {k: v for k, v in asdict(self).items() if k != "coef"}
        (folder / "classifier.json").write_text(json.dumps(meta, indent=1) + "\n")
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> "QualityClassifier":
        """Read a folder written by `save` (no pickles are loaded)."""
        folder = Path(folder)
        meta_path, coef_path = folder / "classifier.json", folder / "coef.npy"
        if not meta_path.is_file() or not coef_path.is_file():
            raise ChatforgeError(f"{folder}: not a quality classifier folder (needs classifier.json and coef.npy); "
                                 "write one with a curate run, it saves quality_classifier/")
        meta = json.loads(meta_path.read_text())
        coef = np.load(coef_path, allow_pickle=False)
        if coef.shape != (meta["n_features"],):
            raise ChatforgeError(f"{coef_path}: has shape {coef.shape}, expected ({meta['n_features']},)")
        return cls(coef=coef, **meta)


def train_classifier(positive: list[str], negative: list[str], n_features: int = 2**18, ngram_max: int = 2,
                     regularization: float = 0.1, heldout_share: float = 0.1, seed: int = 0) -> QualityClassifier:
    """Fit logistic regression: `positive` (reference) = 1, `negative` (raw crawl) = 0; a held-out
    `heldout_share` of the positives measures c for `calibrated()`. `regularization` is sklearn's C."""
    from sklearn.linear_model import LogisticRegression

    if len(positive) < 2 or not negative:
        raise ChatforgeError(f"quality classifier: needs at least 2 reference and 1 crawl documents, got "
                             f"{len(positive)} reference and {len(negative)} crawl documents")
    n_heldout = max(1, round(len(positive) * heldout_share))
    train_positive, heldout = positive[n_heldout:], positive[:n_heldout]
    model = QualityClassifier(n_features, ngram_max, np.zeros(n_features, dtype=np.float32), 0.0)
    features = model._vectorizer().transform(train_positive + negative)
    labels = np.array([1] * len(train_positive) + [0] * len(negative))
    # class_weight="balanced": the two samples may differ in size; the score should not depend on that.
    # A small C: the crawl's own documents are negatives, and a loose fit would learn them by heart.
    fit = LogisticRegression(C=regularization, max_iter=1000, class_weight="balanced",
                             random_state=seed).fit(features, labels)
    model.coef = fit.coef_[0].astype(np.float32)
    model.intercept = float(fit.intercept_[0])
    model.reference_mean_score = float(model.score(heldout).mean())
    model.trained_on = {"reference_docs": len(train_positive), "crawl_docs": len(negative),
                        "heldout_reference_docs": n_heldout, "regularization": regularization}
    return model


def pareto_keep(scores: np.ndarray, alpha: float, rng: np.random.Generator) -> np.ndarray:
    """GPT-3's rule: keep a document when np.random.pareto(alpha) > 1 - score (alpha = 9 there)."""
    return rng.pareto(alpha, size=len(scores)) > 1.0 - scores


class Reservoir:
    """A uniform sample of at most `size` items from a stream of unknown length (Algorithm R)."""

    def __init__(self, size: int, rng: np.random.Generator):
        self.size, self.rng, self.items, self.seen = size, rng, [], 0

    def add(self, item) -> None:
        self.seen += 1
        if len(self.items) < self.size:
            self.items.append(item)
        else:
            slot = int(self.rng.integers(self.seen))
            if slot < self.size:
                self.items[slot] = item
