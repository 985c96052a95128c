"""The labeling app's flows through its HTTP interface (Starlette's test client), the export read back by
the SFT / RM readers, agreement numbers worked out by hand, and the `chatforge label` CLI."""

import json
import re

import pytest
from starlette.testclient import TestClient

from chatforge.cli import main
from chatforge.data.jsonl import write_jsonl
from chatforge.data.formats import read_comparisons, read_demonstrations
from chatforge.serve.label import store
from chatforge.serve.label.agreement import agreement_table
from chatforge.serve.label.app import COOKIE, create_app
from chatforge.serve.label.db import Label, open_db
from chatforge.serve.label.export import export_labels
from chatforge.serve.label.load import form_nonce, sign_in
from labdb import copy_db, session_cookies

PROMPTS = ["What is 2 plus 3?", [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi?"}]]


@pytest.fixture(scope="module")
def signed_in_db(tmp_path_factory):
    """A database with an admin, labelers ann and bob, held-out hal and a K=4 ranking job (every item for
    3 labelers), and each one's session cookie; copies of the file keep the cookies valid."""
    db = str(tmp_path_factory.mktemp("lab") / "label.db")
    engine, make_session = open_db(db)
    with make_session() as session:
        tokens = {"admin": store.add_labeler(session, "admin", admin=True),
                  "ann": store.add_labeler(session, "ann"), "bob": store.add_labeler(session, "bob"),
                  "hal": store.add_labeler(session, "hal", held_out=True)}
        store.add_job(session, "rank", "ranking", [(p, [f"answer {i}{c}" for c in "ABCD"]) for i, p in enumerate(PROMPTS)],
                      labelers_per_item=3, k=4)
    cookies = session_cookies(db, tokens)
    engine.dispose()
    return db, cookies


@pytest.fixture
def lab(signed_in_db, tmp_path):
    """A fresh copy of the signed-in database: (db, make_session, cookies)."""
    template, cookies = signed_in_db
    db = copy_db(template, str(tmp_path / "label.db"))
    return db, open_db(db)[1], dict(cookies)


def client_for(db, name, cookies):
    return TestClient(create_app(db), cookies={COOKIE: cookies[name]})


def rank(client, ranks: dict, **extra):
    """Take the next item and post ranks {position: rank}; returns (item id, response)."""
    page = client.get("/next")
    assert page.status_code == 200 and "rank_0" in page.text
    item_id = int(page.url.path.rsplit("/", 1)[1])
    form = {"nonce": form_nonce(page.text), "action": "rank", **{f"rank_{p}": str(r) for p, r in ranks.items()}, **extra}
    return item_id, client.post(f"/items/{item_id}", data=form, follow_redirects=False)


def test_ranking_is_stored_best_first_and_exported_in_that_order(lab, tmp_path):
    db, make_session, cookies = lab
    ann = client_for(db, "ann", cookies)
    item_id, posted = rank(ann, {0: 3, 1: 1, 2: 4, 3: 2}, untruthful="on")
    assert posted.status_code == 303 and posted.headers["location"] == "/next"
    with make_session() as session:
        label = session.query(Label).one()
        assert (label.item_id, label.kind, label.ranking, label.untruthful, label.harmful) == (item_id, "ranking",
                                                                                             [1, 3, 0, 2], True, False)
        summary = export_labels(session, tmp_path / "out")
    comparisons, stats = read_comparisons(summary["files"]["comparisons"]["path"])
    assert stats.kept == 1
    assert comparisons[0].responses == ["answer 0B", "answer 0D", "answer 0A", "answer 0C"]
    assert comparisons[0].labeler == "ann" and comparisons[0].prompt == [{"role": "user", "content": PROMPTS[0]}]
    record = json.loads((tmp_path / "out" / "comparisons.jsonl").read_text())
    assert record["flags"] == ["untruthful"]


def test_resubmitting_replaces_the_label_and_skip_keeps_flags(lab):
    db, make_session, cookies = lab
    bob = client_for(db, "bob", cookies)
    item_id, _ = rank(bob, {0: 1, 1: 2, 2: 3, 3: 4})
    page = bob.get(f"/items/{item_id}")
    assert "Your label: ranking" in page.text and "selected" in page.text
    skipped = bob.post(f"/items/{item_id}", data={"nonce": form_nonce(page.text), "action": "skip", "harmful": "on"},
                       follow_redirects=False)
    assert skipped.status_code == 303
    with make_session() as session:
        labels = session.query(Label).all()
    assert [(lab.kind, lab.ranking, lab.harmful) for lab in labels] == [("skip", None, True)]
    assert bob.get("/next").url.path == f"/items/{item_id + 1}"  # the skipped item is done; the next one comes


def test_items_go_to_labelers_per_item_labelers_then_run_out(lab, tmp_path):
    db, make_session, cookies = lab
    with make_session() as session:
        token = store.add_labeler(session, "dan")
    for name in ("ann", "bob", "hal"):
        client = client_for(db, name, cookies)
        for _ in PROMPTS:
            assert rank(client, {0: 1, 1: 2, 2: 3, 3: 4})[1].status_code == 303
        assert "Nothing left to label" in client.get("/next").text
    dan = TestClient(create_app(db))
    assert sign_in(dan, "dan", token).status_code == 303
    assert "Nothing left to label" in dan.get("/next").text  # each item already went to 3 labelers
    with make_session() as session:
        summary = export_labels(session, tmp_path / "out")
    assert summary["files"]["comparisons"]["records"] == 4 and summary["files"]["comparisons_heldout"]["records"] == 2
    held_out, _ = read_comparisons(summary["files"]["comparisons_heldout"]["path"])
    assert {c.labeler for c in held_out} == {"hal"} and summary["holdout_labelers"] == ["hal"]
    assert summary["agreement"]["overall"] == {"agreement": 1.0, "pairs": 36}  # 2 items x 3 labeler pairs x 6


def test_demonstration_job_exports_for_sft(lab, tmp_path):
    db, make_session, cookies = lab
    with make_session() as session:
        store.add_job(session, "demos", "demonstration", [("Name a colour.", [])])
    ann = client_for(db, "ann", cookies)
    for _ in PROMPTS:  # the ranking job's items come first
        rank(ann, {0: 1, 1: 2, 2: 3, 3: 4})
    page = ann.get("/next")
    assert 'name="demonstration"' in page.text and "rank_0" not in page.text
    item_id = int(page.url.path.rsplit("/", 1)[1])
    empty = ann.post(f"/items/{item_id}", data={"nonce": form_nonce(page.text), "action": "demonstration",
                                                 "demonstration": "   "})
    assert empty.status_code == 400 and "write the response" in empty.text
    posted = ann.post(f"/items/{item_id}", data={"nonce": form_nonce(empty.text), "action": "demonstration",
                                                  "demonstration": "Blue."}, follow_redirects=False)
    assert posted.status_code == 303
    with make_session() as session:
        summary = export_labels(session, tmp_path / "out", job="demos")
    demos, _ = read_demonstrations(summary["files"]["demonstrations"]["path"])
    assert [(d.prompt, d.response) for d in demos] == [([{"role": "user", "content": "Name a colour."}], "Blue.")]
    assert summary["files"]["comparisons"]["records"] == 0  # job=demos leaves the rankings out


def test_admin_page_shows_progress_agreement_and_counts_and_holds_out(lab):
    db, make_session, cookies = lab
    rank(client_for(db, "ann", cookies), {0: 1, 1: 2, 2: 3, 3: 4})
    rank(client_for(db, "bob", cookies), {0: 2, 1: 1, 2: 3, 3: 4})  # one of 6 pairs flipped: 5/6 agree
    admin = client_for(db, "admin", cookies)
    page = admin.get("/admin")
    assert page.status_code == 200
    assert "83.3% (6 pairs)" in page.text
    progress = re.sub(r"\s+", "", page.text[page.text.index('id="progress"'):page.text.index("<h2>Agreement")])
    assert "<td>rank</td><td>ranking</td><td>4</td><td>2</td><td>3</td><td>1</td><td>2/6</td><td>33%</td>" in progress
    with make_session() as session:
        bob_id = next(row["labeler"].id for row in store.labeler_counts(session) if row["labeler"].name == "bob")
    marker = f'action="/admin/labelers/{bob_id}/held-out">'
    nonce = form_nonce(page.text[page.text.index(marker):])
    held = admin.post(f"/admin/labelers/{bob_id}/held-out", data={"nonce": nonce, "held_out": "1"},
                      follow_redirects=False)
    assert held.status_code == 303
    page = admin.get("/admin")
    assert "held-out vs training</th><td>83.3% (6 pairs)" in page.text
    added = admin.post("/admin/labelers", data={"nonce": form_nonce(page.text[page.text.index("Add a labeler"):]),
                                                "name": "eve"})
    token = added.text.split('class="token">')[1].split("<")[0]
    assert sign_in(TestClient(create_app(db)), "eve", token).status_code == 303


def test_agreement_table_by_hand():
    rankings = {1: {"a": [0, 1, 2], "b": [0, 2, 1], "h": [2, 1, 0]},  # a-b 2/3, a-h 0/3, b-h 1/3
                2: {"a": [0, 1], "b": [0, 1]}}                        # a-b 1/1
    table = agreement_table(rankings, held_out={"h"})
    assert table["overall"] == {"agreement": pytest.approx(4 / 10), "pairs": 10}
    assert table["training"] == {"agreement": pytest.approx(3 / 4), "pairs": 4}
    assert table["held_out_vs_training"] == {"agreement": pytest.approx(1 / 6), "pairs": 6}
    assert table["per_labeler"]["a"] == {"agreement": pytest.approx(3 / 7), "pairs": 7}
    assert table["per_labeler"]["h"] == {"agreement": pytest.approx(1 / 6), "pairs": 6}


@pytest.fixture
def random_checkpoint(toy_tokenizer_dir, tmp_path):
    """A random 1-layer Llama with the toy tokenizer (which has a chat template): its samples differ."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from chatforge.models.presets import llama_config

    tokenizer = AutoTokenizer.from_pretrained(toy_tokenizer_dir)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(llama_config(
        "tiny", len(tokenizer), 128, tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id,
        num_hidden_layers=1, hidden_size=32, intermediate_size=64, num_attention_heads=2))
    model.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    return tmp_path / "model"


def test_cli_create_job_samples_k_responses_from_a_checkpoint(random_checkpoint, tmp_path, capsys):
    base = random_checkpoint
    prompts = tmp_path / "prompts.jsonl"
    write_jsonl(prompts, [{"prompt": f"Who lives in town {i}?"} for i in range(4)])
    db = str(tmp_path / "cli.db")
    assert main(["label"]) == 0 and "create-job" in capsys.readouterr().out
    assert main(["label", "serve", "--help"]) == 0 and "max_body_bytes" in capsys.readouterr().out
    assert main(["label", "nope"]) == 2
    assert main(["label", "create-job", f"db={db}", "name=r1", f"prompts={prompts}", "k=10"]) == 2
    assert "field 'model' is empty" in capsys.readouterr().err
    assert main(["label", "add-labeler", f"db={db}", "name=ann"]) == 0
    token = capsys.readouterr().out.strip().splitlines()[-1]
    assert main(["label", "create-job", "--db", db, "name=r1", f"model={base}", f"prompts={prompts}", "k=4",
                 "max_new_tokens=8", "labelers_per_item=2", "num_threads=1"]) == 0
    _, make_session = open_db(db)
    with make_session() as session:
        job = store.progress(session)[0]["job"]
        assert (job.k, job.labelers_per_item, job.source["model"]) == (4, 2, str(base))
        sizes = [len(item.responses) for item in job.items]
    assert sizes and all(2 <= size <= 4 for size in sizes)  # duplicates dropped, prompts with < 2 skipped
    client = TestClient(create_app(db))
    sign_in(client, "ann", token)
    assert client.get("/next").text.count('<div class="response"') == sizes[0]
    assert main(["label", "export", f"db={db}", f"out_dir={tmp_path / 'out'}"]) == 0
    assert "no rankings or demonstrations to export yet" in capsys.readouterr().out
