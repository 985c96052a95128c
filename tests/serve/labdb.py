"""Shared set-up of the labeling app's tests: a database signed into once per module, copied per test."""

import sqlite3

from starlette.testclient import TestClient

from chatforge.serve.label.app import COOKIE, create_app
from chatforge.serve.label.load import sign_in


def session_cookies(db: str, tokens: dict[str, str]) -> dict[str, str]:
    """Sign each person in to an app over `db` once: {name: session cookie}."""
    client = TestClient(create_app(db))
    return {name: sign_in(client, name, token).cookies[COOKIE] for name, token in tokens.items()}


def copy_db(template: str, db: str) -> str:
    """A copy of the SQLite file `template` at `db` (the sessions in it, so the cookies, stay valid)."""
    with sqlite3.connect(template) as source, sqlite3.connect(db) as target:
        source.backup(target)
    return db
