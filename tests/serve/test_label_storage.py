"""What the labeling app keeps on disk holds: private files, a signing key a database copy cannot give
away, labels written with a full sync, exports that always replace every file (atomically),
assignments that expire back to the pool, token resets that keep roles, paths that cannot overflow."""

import os
import sqlite3
import types
from datetime import timedelta

import pytest
from itsdangerous import URLSafeTimedSerializer
from sqlalchemy import select, update
from starlette.testclient import TestClient

from chatforge.cli import main
from chatforge.serve.label import export as export_module
from chatforge.serve.label import store
from chatforge.serve.label.app import COOKIE, create_app
from chatforge.serve.label.db import Assignment, Label, Labeler, open_db
from chatforge.serve.label.export import export_labels
from chatforge.serve.label.load import form_nonce, sign_in
from labdb import small_lab


def signed_in(app, name, token):
    client = TestClient(app)
    assert sign_in(client, name, token).status_code == 303
    return client


def rank_form(page_text, ranks=(1, 2, 3, 4)):
    return {"nonce": form_nonce(page_text), "action": "rank", **{f"rank_{p}": str(r) for p, r in enumerate(ranks)}}


def test_database_wal_and_key_files_are_created_private(tmp_path):
    old_umask = os.umask(0o022)  # the usual umask, which leaves new files world-readable
    try:
        db = str(tmp_path / "label.db")
        tokens = small_lab(db)
        app = create_app(db)
        ann = signed_in(app, "ann", tokens["ann"])
        page = ann.get("/next")
        assert ann.post(page.url.path, data=rank_form(page.text), follow_redirects=False).status_code == 303
        modes = {suffix: oct(os.stat(db + suffix).st_mode & 0o777) for suffix in ("", "-wal", "-shm", ".key")}
    finally:
        os.umask(old_umask)
    assert modes == {"": "0o600", "-wal": "0o600", "-shm": "0o600", ".key": "0o600"}


def test_a_copy_of_the_database_alone_cannot_sign_an_admin_cookie(tmp_path):
    db = str(tmp_path / "label.db")
    tokens = small_lab(db)
    app = create_app(db)
    assert signed_in(app, "boss", tokens["boss"]).get("/admin").status_code == 200
    stolen = str(tmp_path / "stolen.db")  # what a reader of the file or a backup has
    with sqlite3.connect(db) as source, sqlite3.connect(stolen) as target:
        source.backup(target)
    with sqlite3.connect(stolen) as copy:
        boss_id, epoch = copy.execute("SELECT id, session_epoch FROM labelers WHERE name='boss'").fetchone()
        tables = [row[0] for row in copy.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        candidates = {value for table in tables for row in copy.execute(f'SELECT * FROM "{table}"')
                      for value in row if isinstance(value, str)}
    assert candidates
    for key in candidates:  # every text in the database tried as the signing key
        forged = URLSafeTimedSerializer(key, salt="chatforge-label-session").dumps({"id": boss_id, "epoch": epoch})
        response = TestClient(app, cookies={COOKIE: forged}).get("/admin", follow_redirects=False)
        assert response.status_code == 303 and response.headers["location"] == "/login"


def test_label_writes_wait_for_a_full_sync(tmp_path):
    db = str(tmp_path / "label.db")
    small_lab(db)
    with create_app(db).state.engine.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL: survives a power cut
    engine, _ = open_db(db)
    with engine.connect() as connection:  # the CLI's own connections too
        assert connection.exec_driver_sql("PRAGMA synchronous").scalar() == 2


def demonstration_lab(tmp_path):
    """ann has written a demonstration; returns make_session."""
    db = str(tmp_path / "label.db")
    _, make_session = open_db(db)
    with make_session() as session:
        store.add_labeler(session, "ann")
        store.add_job(session, "demos", "demonstration", [("Name a colour.", []), ("Name a fruit.", [])])
        ann = session.scalar(select(Labeler).where(Labeler.name == "ann"))
        store.save_label(session, ann, store.next_item(session, ann), "demonstration", demonstration="Blue.")
    return make_session


def test_export_replaces_every_file_so_held_out_labels_leave_training(tmp_path):
    make_session = demonstration_lab(tmp_path)
    out = tmp_path / "out"
    with make_session() as session:
        export_labels(session, out)
    assert "Blue." in (out / "demonstrations.jsonl").read_text()
    with make_session() as session:
        session.execute(update(Labeler).where(Labeler.name == "ann").values(held_out=True))
        session.commit()
        summary = export_labels(session, out)
    assert (out / "demonstrations.jsonl").read_text() == ""  # written empty, not left as it was
    assert "Blue." in (out / "demonstrations_heldout.jsonl").read_text()
    assert {name: info["records"] for name, info in summary["files"].items()} == {
        "comparisons": 0, "comparisons_heldout": 0, "demonstrations": 0, "demonstrations_heldout": 1}
    assert sorted(path.name for path in out.iterdir()) == [
        "comparisons.jsonl", "comparisons_heldout.jsonl", "demonstrations.jsonl", "demonstrations_heldout.jsonl",
        "export.json"]


def test_an_export_that_fails_midway_leaves_the_previous_files_whole(tmp_path, monkeypatch):
    make_session = demonstration_lab(tmp_path)
    out = tmp_path / "out"
    with make_session() as session:
        export_labels(session, out)
        ann = session.scalar(select(Labeler).where(Labeler.name == "ann"))
        store.save_label(session, ann, store.next_item(session, ann), "demonstration", demonstration="Apple.")
    before = {path.name: path.read_bytes() for path in out.iterdir()}
    calls = []

    def dumps_then_fail(record, **kwargs):  # the disk fills up, the process dies: here, the 2nd record
        calls.append(1)
        if len(calls) == 2:
            raise OSError("no space left on device")
        return export_module.json.dumps(record, **kwargs)

    monkeypatch.setattr(export_module, "json", types.SimpleNamespace(dumps=dumps_then_fail))
    with make_session() as session, pytest.raises(OSError):
        export_labels(session, out)
    assert {path.name: path.read_bytes() for path in out.iterdir()} == before  # no half file, no temp file


def test_add_labeler_reset_gives_a_new_token_and_keeps_admin_and_held_out(tmp_path, capsys):
    db = str(tmp_path / "label.db")
    assert main(["label", "add-labeler", f"db={db}", "name=boss", "admin=true", "held_out=true"]) == 0
    old_token = capsys.readouterr().out.strip().splitlines()[-1]
    assert main(["label", "add-labeler", f"db={db}", "name=boss", "reset=true"]) == 0
    new_token = capsys.readouterr().out.strip().splitlines()[-1]
    _, make_session = open_db(db)
    with make_session() as session:
        boss = session.scalar(select(Labeler).where(Labeler.name == "boss"))
        assert (boss.is_admin, boss.held_out) == (True, True)
    app = create_app(db)
    assert sign_in(TestClient(app), "boss", old_token).status_code == 401
    assert signed_in(app, "boss", new_token).get("/admin").status_code == 200
    assert main(["label", "add-labeler", f"db={db}", "name=boss", "reset=true", "admin=false"]) == 0  # said so
    with make_session() as session:
        assert session.scalar(select(Labeler.is_admin).where(Labeler.name == "boss")) is False


def test_path_integers_beyond_64_bits_are_refused_without_a_traceback(tmp_path):
    db = str(tmp_path / "label.db")
    tokens = small_lab(db)
    app = create_app(db)
    boss = TestClient(app, raise_server_exceptions=False)
    sign_in(boss, "boss", tokens["boss"])
    for number in (2**70, 2**63, -1, 0):
        for method, path in (("GET", f"/items/{number}"), ("POST", f"/items/{number}"),
                             ("GET", f"/labels/{number}"), ("POST", f"/admin/labelers/{number}/held-out")):
            response = boss.request(method, path, data={"nonce": "x"})
            assert response.status_code in (400, 404), (method, path, response.status_code)
            assert "Traceback" not in response.text and "Overflow" not in response.text


def backdate_assignments(make_session, minutes: float):
    with make_session() as session:
        for assignment in session.scalars(select(Assignment)):
            assignment.created_at -= timedelta(minutes=minutes)
        session.commit()


def test_an_abandoned_assignment_goes_back_to_the_pool_and_a_late_submit_is_refused(tmp_path):
    db = str(tmp_path / "label.db")
    tokens = small_lab(db, labelers_per_item=1, items=2)
    _, make_session = open_db(db)
    app = create_app(db)  # assignments expire after 30 minutes by default
    ann, bob = signed_in(app, "ann", tokens["ann"]), signed_in(app, "bob", tokens["bob"])
    page = ann.get("/next")
    item_path = page.url.path
    backdate_assignments(make_session, minutes=31)  # ann left 31 minutes ago
    late = ann.post(item_path, data=rank_form(page.text), follow_redirects=False)
    assert late.status_code == 410 and "back to the pool" in late.text
    taken = bob.get("/next")
    assert taken.url.path == item_path  # the first item again, not the second
    assert bob.post(item_path, data=rank_form(taken.text), follow_redirects=False).status_code == 303
    assert ann.post(item_path, data=rank_form(page.text), follow_redirects=False).status_code in (404, 410)
    with make_session() as session:
        rows = session.execute(select(Label.item_id, Labeler.name).join(Labeler)).all()
    assert [name for _, name in rows] == ["bob"]  # one label for the one slot: no duplicate
    assert ann.get("/next").url.path != item_path  # ann moves on to the second item


def test_expired_assignments_are_released_once_the_item_is_labeled_they_stay(tmp_path):
    db = str(tmp_path / "label.db")
    tokens = small_lab(db, labelers_per_item=1, items=1)
    _, make_session = open_db(db)
    app = create_app(db, assignment_minutes=1.0)
    ann, bob = signed_in(app, "ann", tokens["ann"]), signed_in(app, "bob", tokens["bob"])
    page = ann.get("/next")
    assert ann.post(page.url.path, data=rank_form(page.text), follow_redirects=False).status_code == 303
    backdate_assignments(make_session, minutes=5)  # a labeled item is done however old its assignment
    assert "Nothing left to label" in bob.get("/next").text
    again = ann.get(page.url.path)  # ann may still change her label
    assert again.status_code == 200 and "Your label: ranking" in again.text


def test_serve_refuses_a_key_file_others_can_read(tmp_path):
    db = str(tmp_path / "label.db")
    small_lab(db)
    create_app(db)
    os.chmod(db + ".key", 0o644)
    with pytest.raises(Exception, match="chmod 600"):
        create_app(db)
