"""The labeling app on PostgreSQL: set CHATFORGE_LABEL_PG_URL to an empty database's SQLAlchemy URL
(e.g. postgresql+psycopg://user:pass@127.0.0.1/labeltest, psycopg installed); its tables are dropped
and made anew. Without it these tests are skipped: CI has no PostgreSQL server."""

import os

import pytest
from starlette.testclient import TestClient

from chatforge.data.formats import read_comparisons
from chatforge.serve.label import store
from chatforge.serve.label.app import create_app
from chatforge.serve.label.db import Base, open_db
from chatforge.serve.label.export import export_labels
from chatforge.serve.label.load import check_stored, form_nonce, prepare_load_db, sign_in, simulate_labelers
from chatforge.serve.label.server import serve_in_subprocess

URL = os.environ.get("CHATFORGE_LABEL_PG_URL", "")
pytestmark = pytest.mark.skipif(not URL, reason="set CHATFORGE_LABEL_PG_URL to run the PostgreSQL tests")


@pytest.fixture
def empty_db(monkeypatch):
    # a database URL has no folder for the key file: the key comes from the environment (the server
    # subprocess inherits it)
    monkeypatch.setenv("CHATFORGE_LABEL_SECRET", "a-test-signing-key-of-at-least-32-characters")
    engine, make_session = open_db(URL)
    Base.metadata.drop_all(engine)
    Base.metadata.create_all(engine)
    yield make_session
    engine.dispose()


def test_rank_replay_privacy_and_export_on_postgres(empty_db, tmp_path):
    with empty_db() as session:
        tokens = {name: store.add_labeler(session, name) for name in ("ann", "bob")}
        store.add_job(session, "pg", "ranking", [("q", ["a", "b", "c", "d"])], k=4)
    app = create_app(URL)
    ann, bob = TestClient(app), TestClient(app)
    sign_in(ann, "ann", tokens["ann"])
    sign_in(bob, "bob", tokens["bob"])
    page = ann.get("/next")
    item = page.url.path
    form = {"nonce": form_nonce(page.text), "action": "rank", "rank_0": "2", "rank_1": "1", "rank_2": "4",
            "rank_3": "3"}
    assert ann.post(item, data=form, follow_redirects=False).status_code == 303
    assert ann.post(item, data=form, follow_redirects=False).status_code == 403
    assert bob.get(item).status_code == 404
    with empty_db() as session:
        summary = export_labels(session, tmp_path)
    comparisons, _ = read_comparisons(summary["files"]["comparisons"]["path"])
    assert comparisons[0].responses == ["b", "a", "d", "c"]


def test_concurrent_labelers_on_postgres(empty_db):
    credentials = prepare_load_db(URL, labelers=10, items=1000)
    with serve_in_subprocess(URL) as url:
        result = simulate_labelers(url, credentials, seconds=10)
    check = check_stored(URL, result)
    assert result.failures == [] and check["acknowledged"] > 0 and check["stored"] == check["acknowledged"]
    assert (check["missing"], check["unexpected"], check["wrong_ranking"], check["duplicates"]) == (0, 0, 0, 0)
