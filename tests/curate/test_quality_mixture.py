"""The quality classifier, the Pareto keep rule, the mixture plan and shards, scoring by hand."""

import random

import numpy as np
import pytest

from chatforge.curate.mixture import plan_mixture, write_mixture
from chatforge.curate.quality import QualityClassifier, Reservoir, pareto_keep, train_classifier
from chatforge.curate.scoring import near_dup_scores, quality_scores
from chatforge.data.jsonl import read_jsonl, write_jsonl
from chatforge.errors import ChatforgeError

WORDS = "the baker in trask sells bread to the miller who lives by the river with a dog".split()


def clean(rng):
    return " ".join(rng.choice(WORDS) for _ in range(30))


def junk(rng):
    return " ".join("".join(rng.choice("xqz#%$@0123") for _ in range(6)) for _ in range(20))


def test_classifier_separates_junk_and_round_trips(tmp_path):
    rng = random.Random(0)
    reference = [clean(rng) for _ in range(200)]
    crawl = [clean(rng) for _ in range(150)] + [junk(rng) for _ in range(50)]
    model = train_classifier(reference, crawl, n_features=2**12, seed=0)
    scores = model.score([clean(rng) for _ in range(20)] + [junk(rng) for _ in range(20)])
    assert scores[:20].min() > scores[20:].max()
    assert 0 < model.reference_mean_score < 1
    assert (model.calibrated(np.array([0.0, model.reference_mean_score, 1.0])) == [0.0, 1.0, 1.0]).all()
    loaded = QualityClassifier.load(model.save(tmp_path / "clf"))
    assert np.allclose(loaded.score(reference[:5]), model.score(reference[:5]))
    with pytest.raises(ChatforgeError, match="not a quality classifier folder"):
        QualityClassifier.load(tmp_path)


def test_pareto_rule_keeps_at_the_rate_worked_out_by_hand():
    rng = np.random.default_rng(0)
    assert pareto_keep(np.ones(1000), 9.0, rng).all()  # 1 - score = 0 < any draw
    # numpy's pareto is Lomax: P(X > x) = (1 + x) ** -alpha; score 0.5 -> 1.5 ** -9 = 0.026
    kept = pareto_keep(np.full(200_000, 0.5), 9.0, rng).mean()
    assert abs(kept - 1.5 ** -9) < 0.002


def test_reservoir_is_bounded_and_uniform():
    counts = np.zeros(10)
    for seed in range(300):
        sample = Reservoir(3, np.random.default_rng(seed))
        for i in range(10):
            sample.add(i)
        assert len(sample.items) == 3
        counts[sample.items] += 1
    assert counts.min() > 60 and counts.max() < 120  # each item ~ 300 * 3/10 = 90 times


def test_mixture_plan_by_hand():
    plans = {p.name: p for p in plan_mixture({"web": 0.6, "books": 0.4, "empty": 1.0},
                                             {"web": 10, "books": 2, "empty": 0},
                                             {"web": 1000, "books": 100, "empty": 0}, token_budget=500)}
    assert plans["web"].target_tokens == 300 and plans["web"].epochs == pytest.approx(0.3)
    assert plans["books"].target_tokens == 200 and plans["books"].epochs == pytest.approx(2.0)
    assert plans["empty"].target_tokens == 0 and plans["empty"].weight == 0
    once = {p.name: p for p in plan_mixture({"web": 0.6, "books": 0.4}, {"web": 10, "books": 2},
                                            {"web": 1000, "books": 100}, token_budget=0)}
    assert once["web"].epochs == 1.0 and once["web"].weight == pytest.approx(1000 / 1100)


def test_write_mixture_repeats_and_subsamples(tmp_path):
    files = {}
    for name, n in (("web", 200), ("books", 10)):
        files[name] = write_jsonl(tmp_path / f"{name}.jsonl",
                                  [{"text": f"{name} {i}", "source": name, "tokens": 10} for i in range(n)])
    plans = plan_mixture({"web": 0.5, "books": 0.5}, {"web": 200, "books": 10}, {"web": 2000, "books": 100}, 400)
    result = write_mixture(plans, files, tmp_path / "shards", shard_docs=7, shuffle_buffer=5, seed=0)
    assert result["sources"]["books"] == {"docs": 20, "tokens": 200}  # two whole epochs
    assert 10 <= result["sources"]["web"]["docs"] <= 30  # a tenth of 200, drawn at random
    lines = [r for shard in sorted((tmp_path / "shards").glob("train-*.jsonl")) for r in read_jsonl(shard)]
    assert len(lines) == 20 + result["sources"]["web"]["docs"]
    assert sum(r["text"] == "books 3" for r in lines) == 2
    assert len(result["shards"]) == -(-len(lines) // 7)


def test_truth_scores_by_hand():
    # documents at the near-dup step: clusters 0 0 1 1 2 ; the second 0 and the second 1 should go
    clusters = np.array([0, 0, 1, 1, 2])
    scores = near_dup_scores(clusters, removed=np.array([1, 4]), partner=np.array([0, 2]))
    assert scores["near_dup_precision"] == 0.5  # doc 4 (cluster 2) was matched to cluster 1: wrong
    assert scores["near_dup_recall"] == 0.5     # doc 3 was missed
    quality = quality_scores(np.array([0.9, 0.8, 0.1, 0.85]), np.array([False, False, True, True]),
                             np.array([True, True, False, True]))
    assert quality["quality_auc"] == 0.75 and quality["junk_removed_share"] == 0.5
    assert quality["clean_kept_share"] == 1.0
