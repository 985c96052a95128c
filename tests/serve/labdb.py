"""Shared set-up of the labeling app's tests: a database signed into once per module, copied per test."""

import shutil
import sqlite3
from pathlib import Path

from starlette.testclient import TestClient

from chatforge.serve.label import store
from chatforge.serve.label.app import COOKIE, create_app
from chatforge.serve.label.db import open_db
from chatforge.serve.label.load import sign_in


def session_cookies(db: str, tokens: dict[str, str]) -> dict[str, str]:
    """Sign each person in to an app over `db` once: {name: session cookie}."""
    client = TestClient(create_app(db))
    return {name: sign_in(client, name, token).cookies[COOKIE] for name, token in tokens.items()}


def copy_db(template: str, db: str) -> str:
    """A copy of the SQLite file `template` at `db`, with its signing key file beside it, so the cookies
    signed for the template stay valid."""
    with sqlite3.connect(template) as source, sqlite3.connect(db) as target:
        source.backup(target)
    if Path(template + ".key").is_file():
        shutil.copy(template + ".key", db + ".key")
    return db


def small_lab(db: str, labelers_per_item: int = 1, items: int = 3) -> dict[str, str]:
    """ann, bob (labelers) and boss (admin), one K=4 ranking job of `items` prompts; returns their tokens."""
    engine, make_session = open_db(db)
    with make_session() as session:
        tokens = {name: store.add_labeler(session, name, admin=name == "boss") for name in ("ann", "bob", "boss")}
        store.add_job(session, "rank", "ranking", [(f"prompt {i}", [f"r{i}{c}" for c in "ABCD"]) for i in range(items)],
                      labelers_per_item=labelers_per_item, k=4)
    engine.dispose()
    return tokens
