"""The curate stage end to end on a small built-in crawl, and on bad input."""

import json

import numpy as np
import pytest

from chatforge.config import load_config
from chatforge.data.corpus import iter_documents
from chatforge.errors import ChatforgeError
from chatforge.stages import curate
from chatforge.world.crawl import CrawlConfig, render_crawl

SMALL = {"builtin_crawl": {"enabled": True, "pages": 700, "reference_docs": 400, "heldout_docs": 20},
         "threshold": 0.6, "quality_features": 2**16}


@pytest.fixture(scope="module")
def curated(tmp_path_factory):
    out = tmp_path_factory.mktemp("curated")
    cfg = load_config(curate.Config, "configs/curate_world.yaml", {**SMALL, "output_dir": str(out)})
    shards = curate.run(cfg)
    return out, shards, json.loads((out / "curation_report.json").read_text())


def test_crawl_truth_lines_up_and_is_deterministic():
    a, b = render_crawl(CrawlConfig(pages=200, reference_docs=50, heldout_docs=10)), \
        render_crawl(CrawlConfig(pages=200, reference_docs=50, heldout_docs=10))
    assert a == b
    kinds = [t["kind"] for t in a["truth.jsonl"]]
    assert len(a["crawl.jsonl"]) == len(a["truth.jsonl"]) == 200 + 20 + 30
    assert kinds.count("exact_dup") == 20 and kinds.count("near_dup") == 30
    assert all(t["junk"] == (t["kind"] in ("boilerplate", "garbled", "spam")) for t in a["truth.jsonl"]
               if t["kind"] not in ("exact_dup",))
    crawl_docs = {d for r in a["crawl.jsonl"] for d in r["text"].split("\n\n")}
    assert not crawl_docs & {d for r in a["reference.jsonl"] for d in r["text"].split("\n\n")}
    assert not crawl_docs & {r["text"] for r in a["heldout.jsonl"]}


def test_curation_finds_the_known_duplicates_and_junk(curated):
    out, shards, report = curated
    for key in ("near_dup_precision", "near_dup_recall", "quality_auc", "docs_in", "docs_out"):
        assert key in report
    assert report["near_dup_precision"] >= 0.9 and report["near_dup_recall"] >= 0.9
    assert report["quality_auc"] >= 0.95
    assert report["exact_dup_recall"] == 1.0
    assert report["docs_in"] == 700 + 70 + 105 + 400  # crawl + its copies + the reference as a source
    assert report["docs_out"] == sum(s["docs_kept"] for s in report["sources"].values()) < report["docs_in"]
    assert len(report["near_dup"]["examples"]) == 5
    assert (out / "quality_classifier" / "coef.npy").is_file() and (out / "curation_summary.md").is_file()
    # the pretrain stage's reader takes the shards folder as it is
    docs = list(iter_documents([str(shards)]))
    assert len(docs) == report["mix_docs"] and sum(len(d.split()) for d in docs) == report["mix_tokens"]


def test_saved_classifier_is_reused_with_a_token_budget(curated, tmp_path):
    out, _, first = curated
    cfg = load_config(curate.Config, "configs/curate_world.yaml", {
        **SMALL, "output_dir": str(tmp_path), "quality_model": str(out / "quality_classifier"),
        "token_budget": 100_000})
    curate.run(cfg)
    report = json.loads((tmp_path / "curation_report.json").read_text())
    assert report["quality"]["loaded_from"] == str(out / "quality_classifier")
    assert report["quality_auc"] == pytest.approx(first["quality_auc"])
    reference = report["sources"]["reference"]
    assert reference["weight"] == pytest.approx(0.2) and reference["epochs"] == pytest.approx(
        20_000 / reference["tokens_kept"])
    assert abs(report["mix_tokens"] - 100_000) < 5_000


def write(path, lines: list[bytes]):
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def test_bad_input_fails_clearly_or_is_counted(tmp_path):
    good = [json.dumps({"text": f"document number {i} about the baker of trask"}).encode() for i in range(30)]
    (tmp_path / "data").mkdir()
    bad = write(tmp_path / "data" / "bad.jsonl", good[:10] + [b'{"text": "caf\xe9 latin-1"}', b'{"body": "wrong field"}',
                                                     b"not json"] + good[10:])
    (tmp_path / "data" / "broken.parquet").write_bytes(b"PAR1 this is not parquet")
    wrong = write(tmp_path / "wrong.jsonl", [b'{"body": "a document under another field"}'])
    base = {"output_dir": str(tmp_path / "out"), "sources": [{"name": "web", "paths": [str(tmp_path / "data")],
                                                               "quality_filter": False}]}
    with pytest.raises(ChatforgeError, match=rf"{bad}:11: not valid UTF-8"):
        curate.run(load_config(curate.Config, None, base))
    with pytest.raises(ChatforgeError, match=rf"{wrong}:1: field 'text' is missing \(found \['body'\]\); set text_field"):
        curate.run(load_config(curate.Config, None, {**base, "sources": [
            {"name": "web", "paths": [str(wrong)], "quality_filter": False}]}))
    curate.run(load_config(curate.Config, None, {**base, "bad_records": "skip"}))
    report = json.loads((tmp_path / "out" / "curation_report.json").read_text())
    assert report["bad_records"] == 4 and report["docs_in"] == 30
    assert any("broken.parquet" in m for m in report["bad_record_examples"])
    assert any(":12: field 'text' is missing" in m for m in report["bad_record_examples"])


def test_config_errors_name_the_field(tmp_path):
    with pytest.raises(ChatforgeError, match="field 'sources' is empty"):
        curate.Config(output_dir=tmp_path).validate()
    web = write(tmp_path / "web.jsonl", [b'{"text": "a"}'])
    with pytest.raises(ChatforgeError, match="field 'reference' is empty"):
        curate.Config(sources=[curate.Source("web", [str(web)])], output_dir=tmp_path).validate()
    with pytest.raises(ChatforgeError, match=r"web.txt: corpus file or folder does not exist"):
        curate.Config(sources=[curate.Source("web", [str(tmp_path / "web.txt")])], output_dir=tmp_path).validate()
    with pytest.raises(ChatforgeError, match="field 'threshold'"):
        load_config(curate.Config, "configs/curate_world.yaml", {"threshold": 1.5})


def test_txt_parquet_and_jsonl_sources_with_their_own_fields(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    story = "the miller of {} grinds wheat every morning and sells flour to the baker by the bridge"
    (tmp_path / "pages.txt").write_text(f"{story.format('trask')}\n\n{story.format('mirrow')}\n\n\n{story.format('elsby')}\n")
    pq.write_table(pa.table({"text": [story.format("halvik"), story.format("trask")]}), tmp_path / "more.parquet")
    write(tmp_path / "books.jsonl", [json.dumps({"body": story.format("MIRROW") + "!"}).encode(),
                                     json.dumps({"body": "a book about owls and the long winter in the hills"}).encode()])
    curate.run(load_config(curate.Config, None, {
        "output_dir": str(tmp_path / "out"), "threshold": 0.5,
        "sources": [{"name": "web", "paths": [str(tmp_path / "pages.txt"), str(tmp_path / "more.parquet")],
                     "quality_filter": False},
                    {"name": "books", "paths": [str(tmp_path / "books.jsonl")], "text_field": "body",
                     "quality_filter": False}]}))
    report = json.loads((tmp_path / "out" / "curation_report.json").read_text())
    assert report["sources"]["web"]["docs_in"] == 5 and report["sources"]["books"]["docs_in"] == 2
    # "trask" twice in web; the books' mirrow copy differs only in case and punctuation: the earlier source wins
    assert report["sources"]["web"]["exact_dups"] == 1 and report["sources"]["books"]["exact_dups"] == 1
    assert report["docs_out"] == 5 - 1 + 2 - 1 - report["near_dups"]
