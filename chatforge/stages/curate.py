"""Stage 0: curate raw documents into a clean, deduplicated, weighted pretraining corpus (GPT-3's way).

1. ingest every source (txt / jsonl / parquet, streaming); bad records stop the run with FILE:LINE,
   or with bad_records=skip are skipped and counted;
2. exact duplicates: a hash of the normalised text (case, spacing, punctuation do not count);
3. near-duplicates: MinHash over word shingles (datasketch), LSH banding, one document kept per
   cluster (the first; sources listed earlier win), signatures computed by `workers` processes;
4. quality: a hashed n-gram logistic regression of the reference corpus (positive) against the raw
   crawl (negative), saved and reusable; a document of a filtered source is kept when a Pareto draw
   exceeds 1 - score (the score first divided by the held-out reference's mean score, since the
   crawl's good documents are negatives too; score_calibration=none keeps GPT-3's raw score);
5. mixture: each source's share of a token budget, repeated or subsampled to fit (epochs).

OUTPUT_DIR/
  shards/train-NNNNN.jsonl    {"text", "source"}: what `chatforge pretrain corpus=[OUTPUT_DIR/shards]` reads
  curation_report.json        every count, the mixture table, timings, near-duplicate examples, and with a
                              truth file: near_dup_precision, near_dup_recall, quality_auc, ...
  curation_summary.md         the same for a person
  quality_classifier/         the classifier (plain JSON + .npy), reusable with quality_model=DIR
  crawl/                      the built-in world's crawl and its truth, when builtin_crawl.enabled
"""

from __future__ import annotations

import json
import resource
import shutil
import sys
import time
from array import array
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from tqdm import tqdm

from chatforge.config import opt, save_config
from chatforge.curate.dedup import MinHashParams, cluster, signature_stream
from chatforge.curate.mixture import plan_mixture, write_mixture
from chatforge.curate.quality import QualityClassifier, Reservoir, pareto_keep, train_classifier
from chatforge.curate.scoring import near_dup_scores, quality_scores, read_truth
from chatforge.curate.text import jaccard, normalize, shingles
from chatforge.data.corpus import corpus_files, iter_documents
from chatforge.errors import ChatforgeError
from chatforge.world.crawl import CrawlConfig, write_crawl


@dataclass
class Source:
    name: str = opt("", "a short name for the source, used in the report and the shards' 'source' field")
    paths: list[str] = opt([], "files or folders of .jsonl / .txt / .parquet")
    weight: float = opt(1.0, "its share of the token budget (normalised over the sources)")
    quality_filter: bool = opt(True, "run the quality filter on it (false for trusted text: books, the reference)")
    text_field: str = opt("text", "JSONL/parquet field holding a document's text")


@dataclass
class Config:
    output_dir: Path = opt(Path("runs/curate"), "folder for the shards, the report and the classifier")
    sources: list[Source] = opt([], "the sources to curate and mix, in priority order (a near-duplicate of an "
                                    "earlier source's document is dropped): [{name, paths, weight, quality_filter}]")
    reference: list[str] = opt([], "the trusted corpus the quality filter learns as 'good' (files or folders)")
    reference_text_field: str = opt("text", "JSONL/parquet field of the reference's text")
    truth: str = opt("", "truth.jsonl (cluster, junk per document) of one source, to score the curation against")
    truth_source: str = opt("", "which source the truth is about (default: the first filtered source)")
    builtin_crawl: CrawlConfig = opt(CrawlConfig(), "the built-in world's crawl; when enabled, empty sources / "
                                                    "reference / truth default to its files")
    bad_records: Literal["fail", "skip"] = opt("fail", "a bad record or unreadable file in a source: fail with "
                                                       "FILE:LINE, or skip it and count it in the report (the "
                                                       "trusted reference always fails loud)")
    shingle_size: int = opt(5, "words per shingle for near-duplicate detection")
    num_perm: int = opt(128, "MinHash permutations (more: a sharper threshold, slower)")
    threshold: float = opt(0.7, "Jaccard similarity above which two documents are near-duplicates")
    workers: int = opt(1, "processes computing MinHash signatures")
    chunk_docs: int = opt(512, "documents per chunk sent to a worker")
    quality_model: str = opt("", "a saved quality_classifier/ folder to reuse instead of training one")
    quality_train_docs: int = opt(20000, "documents per class sampled (reservoir) to train the classifier")
    quality_features: int = opt(2**18, "hashed n-gram features")
    quality_ngrams: int = opt(2, "longest word n-gram used as a feature")
    quality_regularization: float = opt(0.1, "the logistic regression's C (smaller: smoother, less memorising)")
    score_calibration: Literal["reference", "none"] = opt(
        "reference", "reference: divide scores by the held-out reference's mean score (capped at 1) before the keep "
                     "rule, since the crawl's good documents are negatives too; none: GPT-3's raw score")
    pareto_alpha: float = opt(9.0, "keep a document when numpy's pareto(alpha) > 1 - score (GPT-3: 9)")
    token_budget: int = opt(0, "tokens in the output mixture (0 = every curated document once)")
    tokenizer: str = opt("", "count tokens with this tokenizer folder (default: whitespace-separated words)")
    shard_docs: int = opt(50000, "documents per output shard")
    shuffle_buffer: int = opt(10000, "documents in the output shuffle buffer")
    examples: int = opt(5, "near-duplicate pairs shown in the report for a person to check")
    seed: int = opt(0, "seed of the classifier's sample, the Pareto draws and the mixture")
    keep_work: bool = opt(False, "keep OUTPUT_DIR/work/ (the intermediate files) after the run")

    def validate(self) -> None:
        """Check every field (and, unless the built-in crawl provides them, every input file)."""
        def fail(name: str, message: str):
            raise ChatforgeError(f"curate config: field '{name}' {message}")

        if self.builtin_crawl.enabled:
            self.builtin_crawl.validate()
        elif not self.sources:
            fail("sources", "is empty; give sources=[{name: web, paths: [DIR]}] or builtin_crawl.enabled=true")
        names = [s.name for s in self.sources]
        for i, source in enumerate(self.sources):
            if not source.name:
                fail(f"sources[{i}].name", "is empty; name each source")
            if not source.paths:
                fail(f"sources[{i}].paths", f"is empty for source '{source.name}'")
            if source.weight < 0:
                fail(f"sources[{i}].weight", f"must not be negative, got {source.weight}")
            corpus_files(source.paths)
        if len(set(names)) != len(names):
            fail("sources", f"has repeated names {names}")
        if self.sources and sum(s.weight for s in self.sources) <= 0:
            fail("sources", "weights must have a positive sum")
        needs_reference = any(s.quality_filter for s in self.sources) or (self.builtin_crawl.enabled and not self.sources)
        if needs_reference and not self.quality_model and not self.reference and not self.builtin_crawl.enabled:
            fail("reference", "is empty but a source is quality-filtered; give reference=[PATH] (trusted text), "
                              "quality_model=DIR, or quality_filter: false on the source")
        if self.reference:
            corpus_files(self.reference)
        if self.quality_model:
            QualityClassifier.load(self.quality_model)
        if self.truth and not Path(self.truth).is_file():
            fail("truth", f"names no file: {self.truth}")
        if self.truth_source and self.sources and self.truth_source not in names:
            fail("truth_source", f"'{self.truth_source}' is not one of the sources {names}")
        if not 0.0 < self.threshold < 1.0:
            fail("threshold", f"must be in (0, 1), got {self.threshold}")
        for name, low in (("shingle_size", 1), ("num_perm", 2), ("workers", 1), ("chunk_docs", 1),
                          ("quality_train_docs", 1), ("quality_features", 16), ("quality_ngrams", 1),
                          ("shard_docs", 1), ("shuffle_buffer", 1)):
            if getattr(self, name) < low:
                fail(name, f"must be at least {low}, got {getattr(self, name)}")
        if self.pareto_alpha <= 0 or self.quality_regularization <= 0:
            fail("pareto_alpha" if self.pareto_alpha <= 0 else "quality_regularization", "must be positive")
        if self.token_budget < 0 or self.examples < 0:
            fail("token_budget" if self.token_budget < 0 else "examples", "must not be negative")


def _with_builtin_crawl(cfg: Config) -> Config:
    """Render the built-in crawl and fill the inputs the config left empty with its files."""
    crawl = write_crawl(cfg.builtin_crawl, Path(cfg.output_dir) / "crawl")
    if not cfg.sources:
        cfg.sources = [Source("crawl", [str(crawl["crawl.jsonl"])], 1.0, True)]
        if cfg.builtin_crawl.reference_weight > 0:
            cfg.sources.append(Source("reference", [str(crawl["reference.jsonl"])],
                                      cfg.builtin_crawl.reference_weight, False))
        cfg.truth = cfg.truth or str(crawl["truth.jsonl"])
    cfg.reference = cfg.reference or [str(crawl["reference.jsonl"])]
    return cfg


def _token_counter(tokenizer_dir: str):
    if not tokenizer_dir:
        return "words", lambda texts: [len(t.split()) for t in texts]
    from chatforge.models.io import load_tokenizer

    tokenizer = load_tokenizer(tokenizer_dir)
    return "tokens", lambda texts: [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]


def _chunks(texts, size: int):
    chunk = []
    for text in texts:
        chunk.append(text)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def run(cfg: Config) -> Path:
    """Curate cfg.sources into OUTPUT_DIR/shards and write the report; return the shards folder."""
    cfg.validate()
    started = time.perf_counter()
    out = Path(cfg.output_dir)
    if cfg.builtin_crawl.enabled:
        cfg = _with_builtin_crawl(cfg)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")
    work = out / "work"
    work.mkdir(exist_ok=True)
    params = MinHashParams(cfg.shingle_size, cfg.num_perm, cfg.threshold)
    rng = np.random.default_rng(cfg.seed)
    filtered = [s.name for s in cfg.sources if s.quality_filter]
    truth_source = cfg.truth_source or (filtered[0] if filtered else cfg.sources[0].name)
    counts = {s.name: {"docs_in": 0, "bad_records": 0, "exact_dups": 0, "near_dups": 0, "quality_removed": 0,
                       "docs_kept": 0, "tokens_kept": 0} for s in cfg.sources}
    bad_examples: list[str] = []

    def counter(name: str):
        def on_bad(message: str) -> None:
            counts[name]["bad_records"] += 1
            if len(bad_examples) < 10:
                bad_examples.append(message)
        return on_bad if cfg.bad_records == "skip" else None

    # --- pass 1: read, exact duplicates, MinHash band keys; survivors spill to disk --------------------
    dedup_started = time.perf_counter()
    crawl_sample = Reservoir(cfg.quality_train_docs, rng)
    seen_exact: set[bytes] = set()
    # per document only its band keys and two positions are held (arrays, not lists of Python ints)
    band_keys, spill_source, spill_pos, truth_pos_exact = [], array("i"), array("q"), array("q")
    spill_path = work / "stage1.jsonl"
    # not chatforge.metrics.progress_bar: that module brings in torch, which curation never needs
    bar = tqdm(desc="curate: dedup", unit="doc", mininterval=0.5 if sys.stderr.isatty() else 30.0)
    with spill_path.open("w", encoding="utf-8") as spill:
        for source_index, source in enumerate(cfg.sources):
            texts = iter_documents(source.paths, source.text_field, on_bad=counter(source.name))
            position = 0
            for chunk, exact_keys, keys in signature_stream(_chunks(texts, cfg.chunk_docs), params, cfg.workers):
                fresh = []
                for row, (text, key) in enumerate(zip(chunk, exact_keys)):
                    if source.quality_filter:
                        crawl_sample.add(text)  # the raw crawl, duplicates and all, is the negative class
                    if key in seen_exact:
                        counts[source.name]["exact_dups"] += 1
                        if source.name == truth_source:
                            truth_pos_exact.append(position)
                    else:
                        seen_exact.add(key)
                        fresh.append(row)
                        spill.write(json.dumps({"text": text}, ensure_ascii=False) + "\n")
                        spill_source.append(source_index)
                        spill_pos.append(position)
                    position += 1
                band_keys.append(keys[fresh])
                counts[source.name]["docs_in"] += len(chunk)
                bar.update(len(chunk))
    bar.close()
    del seen_exact
    band_keys = np.concatenate(band_keys) if band_keys else np.zeros((0, params.banding[0]), dtype=np.uint64)
    spill_source, spill_pos = np.frombuffer(spill_source, dtype=np.int32), np.frombuffer(spill_pos, dtype=np.int64)
    clusters = cluster(band_keys)
    del band_keys
    dedup_seconds = time.perf_counter() - dedup_started
    removed = np.zeros(len(spill_source), dtype=bool)
    removed[clusters.removed] = True
    example_pairs = [(int(i), int(clusters.keeper[i])) for i in clusters.removed[: cfg.examples]]
    example_texts = {i: "" for pair in example_pairs for i in pair}

    # --- the quality classifier -----------------------------------------------------------------------
    classifier, quality_info = None, {}
    if filtered:
        if cfg.quality_model:
            classifier = QualityClassifier.load(cfg.quality_model)
            quality_info["loaded_from"] = cfg.quality_model
        else:
            reference_sample = Reservoir(cfg.quality_train_docs, rng)
            for text in iter_documents(cfg.reference, cfg.reference_text_field, on_bad=None):
                reference_sample.add(text)
            classifier = train_classifier(reference_sample.items, crawl_sample.items, cfg.quality_features,
                                          cfg.quality_ngrams, cfg.quality_regularization, seed=cfg.seed)
        quality_info.update(classifier.trained_on, saved_to=str(classifier.save(out / "quality_classifier")),
                            pareto_alpha=cfg.pareto_alpha, score_calibration=cfg.score_calibration,
                            reference_mean_score=classifier.reference_mean_score)

    # --- pass 2: drop near-duplicates, score and filter, count tokens; one kept file per source --------
    token_unit, count_tokens = _token_counter(cfg.tokenizer)
    truth_scores = np.full(len(spill_source), np.nan, dtype=np.float32)
    truth_kept = np.zeros(len(spill_source), dtype=bool)
    kept_files = {s.name: work / f"kept-{i}.jsonl" for i, s in enumerate(cfg.sources)}
    handles = {name: path.open("w", encoding="utf-8") for name, path in kept_files.items()}

    def flush(batch: list[tuple[int, str]]) -> None:
        names = [cfg.sources[spill_source[i]].name for i, _ in batch]
        texts = [text for _, text in batch]
        scores = np.full(len(batch), np.nan)
        scored = [j for j, name in enumerate(names) if name in filtered]
        keep = np.ones(len(batch), dtype=bool)
        if scored:
            scores[scored] = classifier.score([texts[j] for j in scored])
            keep_scores = classifier.calibrated(scores[scored]) if cfg.score_calibration == "reference" else scores[scored]
            keep[scored] = pareto_keep(keep_scores, cfg.pareto_alpha, rng)
        tokens = count_tokens(texts)
        for j, (i, text) in enumerate(batch):
            truth_scores[i], truth_kept[i] = scores[j], keep[j]
            if not keep[j]:
                counts[names[j]]["quality_removed"] += 1
                continue
            counts[names[j]]["docs_kept"] += 1
            counts[names[j]]["tokens_kept"] += tokens[j]
            handles[names[j]].write(json.dumps({"text": text, "source": names[j], "tokens": tokens[j]},
                                               ensure_ascii=False) + "\n")

    batch: list[tuple[int, str]] = []
    with spill_path.open(encoding="utf-8") as spill:
        for i, line in enumerate(spill):
            text = json.loads(line)["text"]
            if i in example_texts:
                example_texts[i] = text
            if removed[i]:
                counts[cfg.sources[spill_source[i]].name]["near_dups"] += 1
                continue
            batch.append((i, text))
            if len(batch) >= 2048:
                flush(batch)
                batch = []
    if batch:
        flush(batch)
    for handle in handles.values():
        handle.close()

    # --- the mixture ------------------------------------------------------------------------------------
    plans = plan_mixture({s.name: s.weight for s in cfg.sources}, {n: c["docs_kept"] for n, c in counts.items()},
                         {n: c["tokens_kept"] for n, c in counts.items()}, cfg.token_budget)
    if all(p.target_tokens == 0 for p in plans):
        raise ChatforgeError(f"curate: no document survived curation ({counts}); check the inputs and filters")
    written = write_mixture(plans, kept_files, out / "shards", cfg.shard_docs, cfg.shuffle_buffer, cfg.seed)

    report = {
        "docs_in": sum(c["docs_in"] for c in counts.values()),
        "docs_out": sum(c["docs_kept"] for c in counts.values()),
        "mix_docs": sum(w["docs"] for w in written["sources"].values()),
        "mix_tokens": sum(w["tokens"] for w in written["sources"].values()),
        "token_unit": token_unit,
        "exact_dups": sum(c["exact_dups"] for c in counts.values()),
        "near_dups": int(removed.sum()),
        "quality_removed": sum(c["quality_removed"] for c in counts.values()),
        "bad_records": sum(c["bad_records"] for c in counts.values()),
        "bad_record_examples": bad_examples,
        "sources": {p.name: {**counts[p.name], "weight": p.weight, "mix_tokens": written["sources"][p.name]["tokens"],
                             "mix_docs": written["sources"][p.name]["docs"], "epochs": p.epochs} for p in plans},
        "near_dup": {"shingle_size": cfg.shingle_size, "num_perm": cfg.num_perm, "threshold": cfg.threshold,
                     "bands": params.banding[0], "rows": params.banding[1], "examples": [
                         {"jaccard": round(jaccard(shingles(normalize(example_texts[a]), cfg.shingle_size),
                                                   shingles(normalize(example_texts[b]), cfg.shingle_size)), 3),
                          "kept": example_texts[b][:300], "removed": example_texts[a][:300]}
                         for a, b in example_pairs]},
        "quality": quality_info,
        "shards": [str(out / "shards" / name) for name in written["shards"]],
        "workers": cfg.workers,
        "dedup_seconds": round(dedup_seconds, 2),
        "dedup_docs_per_s": round(sum(c["docs_in"] for c in counts.values()) / max(dedup_seconds, 1e-9), 1),
        "peak_rss_mb": round(max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                                 resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss) / 1024, 1),
        "wall_seconds": 0.0,
    }
    if cfg.truth:
        report.update(_truth_scores(cfg.truth, truth_source, counts, cfg.sources, spill_source, spill_pos,
                                    clusters, truth_scores, truth_kept, truth_pos_exact))
    report["wall_seconds"] = round(time.perf_counter() - started, 2)
    (out / "curation_report.json").write_text(json.dumps(report, indent=1) + "\n")
    text = summary(report)
    (out / "curation_summary.md").write_text(text + "\n")
    print(text)
    if not cfg.keep_work:
        shutil.rmtree(work)
    return out / "shards"


def _truth_scores(truth_path, truth_source, counts, sources, spill_source, spill_pos, clusters, scores, kept,
                  exact_positions) -> dict:
    """Precision / recall / AUC of this run against the truth of `truth_source`."""
    cluster_ids, junk, kinds = read_truth(truth_path)
    if len(cluster_ids) != counts[truth_source]["docs_in"] or counts[truth_source]["bad_records"]:
        raise ChatforgeError(f"{truth_path}: has {len(cluster_ids)} records but source '{truth_source}' gave "
                             f"{counts[truth_source]['docs_in']} documents ({counts[truth_source]['bad_records']} "
                             "skipped); the truth must match the source line by line")
    source_index = [s.name for s in sources].index(truth_source)
    mine = spill_source == source_index
    # the true cluster of every document at the near-duplicate step; another source's documents have none
    cluster_of = np.where(mine, cluster_ids[np.where(mine, spill_pos, 0)], -1)
    removed = clusters.removed
    result = near_dup_scores(cluster_of, removed, clusters.keeper[removed])
    # a copy is caught when it or its original (whichever came second) was dropped as an exact duplicate
    original = {int(c): i for i, (c, kind) in enumerate(zip(cluster_ids, kinds)) if kind not in ("exact_dup", "near_dup")}
    dropped = set(int(p) for p in exact_positions)
    copies = [i for i, kind in enumerate(kinds) if kind == "exact_dup"]
    result["exact_dup_recall"] = float(np.mean([i in dropped or original[int(cluster_ids[i])] in dropped
                                                for i in copies])) if copies else float("nan")
    scored = mine & ~np.isnan(scores)
    result.update(quality_scores(scores[scored], junk[spill_pos[scored]], kept[scored]))
    return result


def summary(report: dict) -> str:
    """The report for a person: counts, the truth scores, GPT-3's mixture table."""
    unit = report["token_unit"]
    lines = [f"curate: {report['docs_in']:,} documents in -> {report['docs_out']:,} kept "
             f"({report['exact_dups']:,} exact duplicates, {report['near_dups']:,} near-duplicates, "
             f"{report['quality_removed']:,} by the quality filter, {report['bad_records']:,} bad records skipped)",
             f"  dedup {report['dedup_docs_per_s']:,.0f} docs/s with {report['workers']} worker(s), "
             f"peak memory {report['peak_rss_mb']:,.0f} MB, {report['wall_seconds']:.1f} s in all"]
    if "near_dup_precision" in report:
        lines.append(f"  against the truth: near-dup precision {report['near_dup_precision']:.3f} recall "
                     f"{report['near_dup_recall']:.3f}, exact-dup recall {report['exact_dup_recall']:.3f}, "
                     f"quality AUC {report['quality_auc']:.3f} (junk removed {report['junk_removed_share']:.1%}, "
                     f"clean kept {report['clean_kept_share']:.1%})")
    lines += ["", f"| source | docs kept | {unit} kept | weight in mix | {unit} in mix | epochs |", "|---|---|---|---|---|---|"]
    for name, row in report["sources"].items():
        lines.append(f"| {name} | {row['docs_kept']:,} | {row['tokens_kept']:,} | {row['weight']:.1%} | "
                     f"{row['mix_tokens']:,} | {row['epochs']:.2f} |")
    lines.append(f"\nshards: {len(report['shards'])} file(s) in {Path(report['shards'][0]).parent if report['shards'] else '-'}")
    for example in report["near_dup"]["examples"][:2]:
        lines.append(f"near-duplicate pair (Jaccard {example['jaccard']}):\n  kept:    {example['kept'][:120]!r}\n"
                     f"  removed: {example['removed'][:120]!r}")
    return "\n".join(lines)
