"""The labeling app refuses what it must: others' items and labels, admin pages for labelers, forged or
replayed posts, oversized or malformed submissions; SQL injection text in any field is plain text."""

import pytest
from sqlalchemy import func, inspect, select
from starlette.testclient import TestClient

from chatforge.serve.label import store
from chatforge.serve.label.app import COOKIE, create_app
from chatforge.serve.label.db import Label, Labeler, Nonce, open_db
from chatforge.serve.label.load import form_nonce, sign_in
from labdb import copy_db, session_cookies

INJECTIONS = ["' OR '1'='1", "1; DROP TABLE labels; --", "x'); DELETE FROM labelers; --", '" OR ""="',
              "1 UNION SELECT token_hash FROM labelers --"]


@pytest.fixture(scope="module")
def signed_in_db(tmp_path_factory):
    """ann and bob (labelers), an admin, one K=4 ranking job of 3 items, one demonstration job; returns the
    database file and each one's session cookie (copies of the file keep the cookies valid)."""
    db = str(tmp_path_factory.mktemp("security") / "label.db")
    engine, make_session = open_db(db)
    with make_session() as session:
        tokens = {name: store.add_labeler(session, name, admin=name == "admin") for name in ("ann", "bob", "admin")}
        store.add_job(session, "rank", "ranking", [(f"prompt {i}", [f"r{i}{c}" for c in "ABCD"]) for i in range(3)], k=4)
        store.add_job(session, "demos", "demonstration", [("write one", [])])
    cookies = session_cookies(db, tokens)
    engine.dispose()
    return db, cookies


@pytest.fixture
def lab(signed_in_db, tmp_path):
    """A fresh copy of the signed-in database, the app over it (8 KiB body limit) and a client per person."""
    template, cookies = signed_in_db
    db = copy_db(template, str(tmp_path / "label.db"))
    _, make_session = open_db(db)
    app = create_app(db, max_body_bytes=8192)
    clients = {name: TestClient(app, cookies={COOKIE: cookie}) for name, cookie in cookies.items()}
    return make_session, clients, None, app


def open_item(client):
    page = client.get("/next")
    return int(page.url.path.rsplit("/", 1)[1]), page


def ranking_form(nonce, ranks=(1, 2, 3, 4), **extra):
    return {"nonce": nonce, "action": "rank", **{f"rank_{p}": str(r) for p, r in enumerate(ranks)}, **extra}


def labels(make_session):
    with make_session() as session:
        return [(label.item_id, label.labeler_id, label.kind, label.ranking) for label in session.scalars(select(Label))]


def test_a_labeler_cannot_read_or_change_another_labelers_items_or_labels(lab):
    make_session, clients, _, _ = lab
    ann, bob = clients["ann"], clients["bob"]
    item_id, page = open_item(ann)
    assert ann.post(f"/items/{item_id}", data=ranking_form(form_nonce(page.text)), follow_redirects=False).status_code == 303
    with make_session() as session:
        ann_label = session.scalar(select(Label.id))
    before = labels(make_session)
    assert bob.get(f"/items/{item_id}").status_code == 404  # not assigned to bob
    assert bob.get(f"/labels/{ann_label}", follow_redirects=False).status_code == 404
    assert "r0A" not in bob.get("/labels").text and f"/labels/{ann_label}" not in bob.get("/labels").text
    bob_item, bob_page = open_item(bob)  # bob's own valid nonce, aimed at ann's item
    changed = bob.post(f"/items/{item_id}", data=ranking_form(form_nonce(bob_page.text), (4, 3, 2, 1)))
    assert changed.status_code == 404 and labels(make_session) == before
    assert bob_item != item_id


def test_admin_pages_refuse_labelers_and_anonymous_visitors(lab):
    make_session, clients, _, app = lab
    bob = clients["bob"]
    assert bob.get("/admin").status_code == 403
    admin_page = clients["admin"].get("/admin").text
    assert bob.post("/admin/labelers", data={"nonce": form_nonce(admin_page), "name": "mallory"}).status_code == 403
    with make_session() as session:
        bob_id = session.scalar(select(Labeler.id).where(Labeler.name == "bob"))
        assert session.scalar(select(func.count()).select_from(Labeler)) == 3
    assert bob.post(f"/admin/labelers/{bob_id}/held-out", data={"nonce": "x", "held_out": "1"}).status_code == 403
    anonymous = TestClient(app)
    assert anonymous.get("/admin", follow_redirects=False).headers["location"] == "/login"
    assert anonymous.post("/items/1", data=ranking_form("x")).status_code == 403
    forged = TestClient(app, cookies={COOKIE: "eyJpZCI6IDMsICJlcG9jaCI6IDB9.forged.signature"})
    assert forged.get("/admin", follow_redirects=False).headers["location"] == "/login"


def test_posts_without_a_nonce_or_with_a_forged_one_are_refused(lab):
    make_session, clients, _, _ = lab
    ann = clients["ann"]
    item_id, page = open_item(ann)
    form = ranking_form(form_nonce(page.text))
    del form["nonce"]
    assert ann.post(f"/items/{item_id}", data=form).status_code == 403
    assert ann.post(f"/items/{item_id}", data=ranking_form("forged-nonce-value")).status_code == 403
    login_nonce = form_nonce(TestClient(ann.app).get("/login").text)  # a real nonce, for another form
    assert ann.post(f"/items/{item_id}", data=ranking_form(login_nonce)).status_code == 403
    assert labels(make_session) == []


def test_a_replayed_post_is_refused(lab):
    make_session, clients, _, _ = lab
    ann = clients["ann"]
    item_id, page = open_item(ann)
    form = ranking_form(form_nonce(page.text))
    assert ann.post(f"/items/{item_id}", data=form, follow_redirects=False).status_code == 303
    form.update(rank_0="4", rank_3="1")  # the same nonce again, even with other ranks
    assert ann.post(f"/items/{item_id}", data=form, follow_redirects=False).status_code == 403
    assert [row[3] for row in labels(make_session)] == [[0, 1, 2, 3]]
    stranger = TestClient(ann.app)
    sign_in_form = {"name": "ann", "token": "wrong", "nonce": form_nonce(stranger.get("/login").text)}
    assert stranger.post("/login", data=sign_in_form).status_code == 401
    assert stranger.post("/login", data=sign_in_form).status_code == 403  # the sign-in form's nonce is one-time too


def test_oversized_bodies_are_refused(lab):
    make_session, clients, _, _ = lab
    ann = clients["ann"]
    item_id, page = open_item(ann)
    huge = ranking_form(form_nonce(page.text), harmful="on" * 10_000)
    assert ann.post(f"/items/{item_id}", data=huge).status_code == 413
    chunks = (b"nonce=x&" + b"a" * 1024 for _ in range(20))  # no Content-Length: counted as it streams
    streamed = ann.post(f"/items/{item_id}", content=chunks, headers={"content-type": "application/x-www-form-urlencoded"})
    assert streamed.status_code == 413
    assert ann.post(f"/items/{item_id}", content=b"x", headers={"content-length": "abc"}).status_code == 400
    assert labels(make_session) == []


@pytest.mark.parametrize("ranks, why", [
    ({0: "1", 1: "1", 2: "2", 3: "3"}, "not a permutation"),
    ({0: "1", 1: "2", 2: "3"}, "K - 1 ranks"),
    ({0: "1", 1: "2", 2: "3", 3: "4", 4: "5"}, "K + 1 ranks"),
    ({0: "1", 1: "2", 2: "3", 3: "x"}, "not an integer"),
    ({0: "1", 1: "2", 2: "3", 3: "-4"}, "negative"),
    ({0: "1", 1: "2", 2: "3", 3: "²"}, "a unicode digit"),
    ({0: "0", 1: "1", 2: "2", 3: "3"}, "ranks from 0"),
    ({0: "1", 1: "2", 2: "3", 3: "4.0"}, "a float"),
])
def test_malformed_rankings_are_refused(lab, ranks, why):
    make_session, clients, _, _ = lab
    ann = clients["ann"]
    item_id, page = open_item(ann)
    form = {"nonce": form_nonce(page.text), "action": "rank", **{f"rank_{p}": r for p, r in ranks.items()}}
    refused = ann.post(f"/items/{item_id}", data=form)
    assert refused.status_code == 400, why
    assert 'class="error"' in refused.text and labels(make_session) == []
    assert '<option value="2" selected>' in refused.text  # the ranks the labeler set are shown again


def test_malformed_forms_are_refused(lab):
    make_session, clients, _, _ = lab
    ann = clients["ann"]
    item_id, page = open_item(ann)
    cases = [
        (ranking_form(form_nonce(page.text), admin="1"), "an unknown field"),
        ({**ranking_form(""), "action": "promote"}, "an unknown action"),
        ({**ranking_form(""), "action": "demonstration", "demonstration": "x"}, "a demonstration on a ranking item"),
        (ranking_form("", harmful="maybe"), "a flag that is not a checkbox value"),
        ([("nonce", ""), ("action", "rank"), ("rank_0", "1"), ("rank_0", "2"), ("rank_1", "3"), ("rank_2", "4")],
         "a repeated field"),
    ]
    for form, why in cases:
        page = ann.get(f"/items/{item_id}")
        if isinstance(form, dict):
            form["nonce"] = form_nonce(page.text)
        else:
            form[0] = ("nonce", form_nonce(page.text))
        body = "&".join(f"{k}={v}" for k, v in (form.items() if isinstance(form, dict) else form))
        response = ann.post(f"/items/{item_id}", content=body.encode(),
                            headers={"content-type": "application/x-www-form-urlencoded"})
        assert response.status_code == 400, why
    assert ann.get("/items/not-a-number").status_code == 400
    multipart = ann.post(f"/items/{item_id}", content=b"--x\r\nbroken",
                         headers={"content-type": "multipart/form-data; boundary=x"})
    assert multipart.status_code in (400, 403)
    assert labels(make_session) == []


def test_sql_injection_text_in_every_field_is_harmless(lab):
    make_session, clients, _, app = lab
    with make_session() as session:
        tables = set(inspect(session.bind).get_table_names())
        hashes = list(session.scalars(select(Labeler.token_hash)))
    stranger = TestClient(app)
    for text in INJECTIONS:  # sign-in: name, token and nonce
        login = stranger.get("/login")
        assert stranger.post("/login", data={"name": text, "token": text, "nonce": form_nonce(login.text)}).status_code == 401
        assert stranger.post("/login", data={"name": "ann", "token": text, "nonce": text}).status_code == 403
    ann = clients["ann"]
    item_id, page = open_item(ann)
    for text in INJECTIONS:  # item form fields, the nonce, path parameters
        for field in ("rank_0", "action", "harmful", "untruthful"):
            page = ann.get(f"/items/{item_id}")
            assert ann.post(f"/items/{item_id}", data={**ranking_form(form_nonce(page.text)), field: text}).status_code == 400
        assert ann.post(f"/items/{item_id}", data=ranking_form(text)).status_code == 403
        assert ann.get(f"/items/{text}").status_code in (400, 404)
        assert ann.get(f"/labels/{text}").status_code in (400, 404)
    for _ in range(3):  # rank the three ranking items, then write the demonstration
        item_id, page = open_item(ann)
        if 'name="demonstration"' in page.text:
            break
        assert ann.post(f"/items/{item_id}", data=ranking_form(form_nonce(page.text)),
                        follow_redirects=False).status_code == 303
    item_id, page = open_item(ann)
    demonstration = " ".join(INJECTIONS)
    posted = ann.post(f"/items/{item_id}", data={"nonce": form_nonce(page.text), "action": "demonstration",
                                                  "demonstration": demonstration}, follow_redirects=False)
    assert posted.status_code == 303, posted.text[-3000:]
    admin = clients["admin"]
    for text in INJECTIONS:  # the admin's add-labeler name is checked, not run
        page = admin.get("/admin").text
        added = admin.post("/admin/labelers", data={"nonce": form_nonce(page[page.index("Add a labeler"):]), "name": text})
        assert added.status_code == 400
    with make_session() as session:
        assert set(inspect(session.bind).get_table_names()) == tables
        assert list(session.scalars(select(Labeler.token_hash))) == hashes
        stored = session.scalar(select(Label.demonstration).where(Label.kind == "demonstration"))
        assert stored == demonstration  # kept as the text it is
        assert session.scalar(select(func.count()).select_from(Label)) == 4
        assert session.scalar(select(func.count()).select_from(Nonce)) > 0


def test_signing_out_voids_the_session_cookie(lab):
    _, clients, _, app = lab
    bob = clients["bob"]
    cookie = bob.cookies.get(COOKIE)
    page = bob.get("/logout")
    assert bob.post("/logout", data={"nonce": form_nonce(page.text)}, follow_redirects=False).status_code == 303
    replayed = TestClient(app, cookies={COOKIE: cookie})
    assert replayed.get("/next", follow_redirects=False).headers["location"] == "/login"


def test_responses_are_html_escaped(tmp_path):
    db = str(tmp_path / "x.db")
    _, make_session = open_db(db)
    with make_session() as session:
        token = store.add_labeler(session, "ann")
        store.add_job(session, "x", "ranking", [("<script>alert(1)</script>", ["<img src=x onerror=alert(1)>", "b"])], k=2)
    client = TestClient(create_app(db))
    sign_in(client, "ann", token)
    page = client.get("/next")
    assert "<script>alert" not in page.text and "&lt;script&gt;" in page.text and "<img src=x" not in page.text
    assert page.headers["x-frame-options"] == "DENY" and "default-src 'self'" in page.headers["content-security-policy"]
