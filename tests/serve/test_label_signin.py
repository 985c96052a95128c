"""Signing in under attack: floods of wrong tokens are throttled and never hold the database, anonymous
page views write nothing, the sign-in form is tied to the browser (login CSRF), cookies are Secure over
HTTPS, and pages that show tokens or labels are never cached."""

import hashlib
import sqlite3
import threading
import time

import pytest
from starlette.testclient import TestClient

from chatforge.serve.label.app import COOKIE, SIGN_IN_COOKIE, create_app
from chatforge.serve.label.load import form_nonce, sign_in
from chatforge.serve.label.throttle import SignInThrottle
from labdb import small_lab


@pytest.fixture
def lab(tmp_path):
    """(db, app, tokens) over a fresh database with ann, bob and the admin boss."""
    db = str(tmp_path / "label.db")
    tokens = small_lab(db)
    return db, create_app(db), tokens


@pytest.fixture
def scrypt_calls(monkeypatch):
    """Counts the password hashes computed from here on."""
    calls, real = [], hashlib.scrypt
    monkeypatch.setattr(hashlib, "scrypt", lambda *args, **kwargs: calls.append(1) or real(*args, **kwargs))
    return calls


def cookie_header(response, name: str) -> str:
    return next(value for value in response.headers.get_list("set-cookie") if value.startswith(name + "="))


def test_wrong_sign_ins_are_locked_out_per_account_then_per_client(lab, scrypt_calls):
    _, app, tokens = lab
    client = TestClient(app)
    for _ in range(5):  # the default: 5 failures per account in 15 minutes
        assert sign_in(client, "ann", "wrong").status_code == 401
    started = time.monotonic()
    locked = sign_in(client, "ann", tokens["ann"])  # even the right token waits now
    assert locked.status_code == 429 and 0 < int(locked.headers["retry-after"]) <= 900
    assert time.monotonic() - started >= 1.0  # answered a second late: a flood is held back
    assert "try again in" in locked.text and len(scrypt_calls) == 5  # a refused attempt costs no hash
    assert sign_in(TestClient(app, client=("10.0.0.9", 1)), "ann", tokens["ann"]).status_code == 429
    for i in range(15):  # other names from the same address: 20 failures per client
        assert sign_in(client, f"guess{i}", "wrong").status_code == 401
    assert sign_in(client, "bob", tokens["bob"]).status_code == 429
    assert sign_in(TestClient(app, client=("10.0.0.9", 1)), "bob", tokens["bob"]).status_code == 303
    app.state.signin_throttle.clock = lambda real=app.state.signin_throttle.clock: real() + 901
    assert sign_in(client, "ann", tokens["ann"]).status_code == 303  # the window passed


def test_a_flood_of_wrong_sign_ins_from_eight_threads_is_cut_off(lab, scrypt_calls):
    db, _, _ = lab
    app = create_app(db, signin_refusal_seconds=0.05)
    statuses, lock = [], threading.Lock()

    def flood(thread: int):
        client = TestClient(app)
        for attempt in range(10):
            status = sign_in(client, f"guess-{thread}-{attempt}", "wrong").status_code
            with lock:
                statuses.append(status)

    threads = [threading.Thread(target=flood, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(set(statuses)) == [401, 429]
    assert len(scrypt_calls) <= 20 + 8  # the per-client limit, plus attempts already past the check


def test_the_slow_hash_runs_outside_any_database_transaction(lab, monkeypatch):
    db, app, tokens = lab
    seen, real = [], hashlib.scrypt

    def probing_scrypt(*args, **kwargs):
        probe = sqlite3.connect(db, timeout=0, isolation_level=None)
        try:
            probe.execute("BEGIN IMMEDIATE")  # fails at once if the app holds SQLite's write lock
            probe.execute("ROLLBACK")
            seen.append(("write lock free", app.state.engine.pool.checkedout()))
        except sqlite3.OperationalError as exc:
            seen.append((str(exc), app.state.engine.pool.checkedout()))
        finally:
            probe.close()
        return real(*args, **kwargs)

    monkeypatch.setattr(hashlib, "scrypt", probing_scrypt)
    client = TestClient(app)
    assert sign_in(client, "ann", "wrong").status_code == 401
    assert sign_in(client, "ann", tokens["ann"]).status_code == 303
    assert seen == [("write lock free", 0)] * 2  # nor does it hold the pool's one connection


def test_anonymous_sign_in_page_views_write_nothing(lab):
    db, app, _ = lab

    def row_counts():
        with sqlite3.connect(db) as connection:
            tables = [row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type='table'")]
            return {table: connection.execute(f'SELECT count(*) FROM "{table}"').fetchone()[0] for table in tables}

    before = row_counts()
    for i in range(200):
        client = TestClient(app)  # a new visitor each time
        assert client.get("/login").status_code == 200 and client.get("/", follow_redirects=False).status_code == 303
    assert row_counts() == before


def test_the_sign_in_form_is_tied_to_the_browser_against_login_csrf(lab):
    _, app, tokens = lab
    attacker, victim = TestClient(app), TestClient(app)
    attacker_nonce = form_nonce(attacker.get("/login").text)
    victim.get("/login")  # the victim's browser has its own sign-in form cookie
    forged = {"name": "bob", "token": tokens["bob"], "nonce": attacker_nonce}  # the attacker's own account
    posted = victim.post("/login", data=forged, follow_redirects=False)
    assert posted.status_code == 403 and COOKIE not in posted.cookies
    bare = TestClient(app).post("/login", data=forged, follow_redirects=False)  # a cross-site post: no cookie
    assert bare.status_code == 403 and COOKIE not in bare.cookies
    assert attacker.post("/login", data=forged, follow_redirects=False).status_code == 303  # its own browser


def test_cookies_are_secure_over_https_or_a_trusted_proxy_and_can_be_forced(lab):
    db, app, tokens = lab
    over_https = sign_in(TestClient(app, base_url="https://testserver"), "ann", tokens["ann"])
    assert over_https.status_code == 303 and "secure" in cookie_header(over_https, COOKIE).lower()
    plain = sign_in(TestClient(app), "ann", tokens["ann"])
    assert plain.status_code == 303 and "secure" not in cookie_header(plain, COOKIE).lower()

    def sign_in_cookie(app, **client_options):  # a Secure cookie does not come back over the test's plain HTTP
        return cookie_header(TestClient(app, **client_options).get("/login"), SIGN_IN_COOKIE).lower()

    https_header = {"x-forwarded-proto": "https"}
    assert "secure" not in sign_in_cookie(app, headers=https_header)  # anyone can send that header
    assert "secure" in sign_in_cookie(create_app(db, trusted_proxies="testclient"), headers=https_header)
    assert "secure" not in sign_in_cookie(create_app(db, trusted_proxies="10.0.0.1"), headers=https_header)
    assert "secure" in sign_in_cookie(create_app(db, secure_cookies=True))


def test_pages_with_tokens_or_labels_are_never_cached(lab):
    _, app, tokens = lab
    boss = TestClient(app)
    sign_in(boss, "boss", tokens["boss"])
    page = boss.get("/admin")
    added = boss.post("/admin/labelers", data={"nonce": form_nonce(page.text[page.text.index("Add a labeler"):]),
                                               "name": "eve"})
    assert 'class="token">' in added.text and added.headers["cache-control"] == "no-store"
    for path in ("/admin", "/next", "/labels", "/login"):
        assert boss.get(path).headers["cache-control"] == "no-store", path


def test_the_failure_counts_stay_bounded_however_many_names_a_flood_uses():
    throttle = SignInThrottle(window_s=900, max_keys=100)
    for i in range(10_000):
        throttle.failed({f"account:guess{i}": 5, "client:10.0.0.9": 20})
    assert len(throttle) == 100  # the least recently failed names are forgotten
    assert throttle.retry_after({"client:10.0.0.9": 20}) > 0  # the flood's own address is still counted
