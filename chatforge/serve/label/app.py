"""The labeling web app: FastAPI with server-rendered Jinja2 pages, no front-end build.

Labelers sign in with their name and token, take the next item (`/next`), rank its K responses best to
worst (or skip it as unclear, flag it harmful / untruthful), or write a demonstration; `/labels` lists
their own labels. Admins see progress, agreement and per-labeler counts at `/admin`, add labelers and
mark them held out.

Every post is checked in this order: body size (413), signed-in session (403), the item is assigned to
this labeler (404, so others' items and labels stay invisible; 410 when the assignment expired), the
form's one-time nonce (403: forged or replayed), the fields (400: a ranking must be a permutation of the
item's K responses). A sign-in is checked for its form nonce (403), then the failure counts of the name
and the address (429), then the token, hashed with no database connection held.
"""

from __future__ import annotations

import asyncio
import math
import re
from datetime import timedelta
from pathlib import Path
from typing import Annotated

from fastapi import Depends, FastAPI, Request
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.templating import Jinja2Templates
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, selectinload
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData
from starlette.exceptions import HTTPException
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from chatforge.errors import ChatforgeError
from chatforge.serve.label import store
from chatforge.serve.label.agreement import label_agreement
from chatforge.serve.label.auth import (NONCE_LIFETIME, CookieSigner, SignInForms, consume_nonce, issue_nonce,
                                        signing_key, stored_credentials, token_matches)
from chatforge.serve.label.db import Item, Label, Labeler, open_db, sqlite_path
from chatforge.serve.label.throttle import SignInThrottle
from chatforge.stages.label import ServeConfig

COOKIE = "chatforge_label"
SIGN_IN_COOKIE = "chatforge_label_sign_in"  # the browser's half of the sign-in form's double submit
RowId = Annotated[int, PathParam(ge=1, le=2**63 - 1)]  # a database integer: larger ones are a 400, not an overflow
TEMPLATES = Path(__file__).parent / "templates"
FLAG_VALUES = ("on", "1", "true")
MAX_NAME, MAX_TOKEN = 64, 128
RANK_FIELD = re.compile(r"rank_(\d{1,2})")


class SignInFirst(Exception):
    """A page that needs a signed-in labeler was asked for without one."""


class BodyTooLarge(Exception):
    pass


class Guard:
    """ASGI middleware: refuse request bodies over `max_bytes` (413), declared or streamed, and add
    security headers (no framing, no sniffing, scripts and styles from this server only)."""

    HEADERS = [(b"x-frame-options", b"DENY"), (b"x-content-type-options", b"nosniff"),
               (b"referrer-policy", b"same-origin"),
               (b"cache-control", b"no-store"),  # pages hold tokens, labels, nonces: no browser or proxy keeps them
               (b"content-security-policy", b"default-src 'self'; style-src 'self' 'unsafe-inline'; "
                                            b"form-action 'self'; frame-ancestors 'none'")]

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            return await self._refuse(send, 413 if declared.isdigit() else 400)
        received, started = 0, False

        async def counted_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise BodyTooLarge
            return message

        async def send_with_headers(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                message["headers"] = list(message.get("headers", [])) + self.HEADERS
            await send(message)

        try:
            await self.app(scope, counted_receive, send_with_headers)
        except BodyTooLarge:
            if not started:
                await self._refuse(send, 413)

    async def _refuse(self, send, status: int):
        text = b"request body too large" if status == 413 else b"bad Content-Length"
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"text/plain"), (b"content-length", str(len(text)).encode()),
                                (b"connection", b"close")] + self.HEADERS})
        await send({"type": "http.response.body", "body": text})


def key_file(cfg: ServeConfig) -> Path | None:
    """Where the cookie signing key is kept: secret_file, else beside a SQLite file (DB + '.key')."""
    if cfg.secret_file:
        return Path(cfg.secret_file).expanduser()
    database = sqlite_path(cfg.db)
    return None if database is None else database.with_name(database.name + ".key")


def create_app(db: str, **options) -> FastAPI:
    """The app over the database `db` (a file path or a SQLAlchemy URL; tables made if missing); `options`
    are the other fields of ServeConfig (`chatforge label serve --help`)."""
    cfg = ServeConfig(db=db, **options)
    cfg.validate()
    engine, make_session = open_db(db, cfg.sqlite_synchronous)
    key = signing_key(key_file(cfg))
    signer = CookieSigner(key, max_age_s=int(cfg.session_hours * 3600))
    sign_in_forms = SignInForms(key)
    throttle = SignInThrottle(cfg.signin_window_minutes * 60, cfg.signin_tracked_keys)
    expiry = timedelta(minutes=cfg.assignment_minutes)
    templates = Jinja2Templates(directory=str(TEMPLATES))
    app = FastAPI(title="chatforge labeling", docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(Guard, max_bytes=cfg.max_body_bytes)
    if cfg.trusted_proxies:  # added last, so it runs first: the app sees the client's scheme and address
        app.add_middleware(ProxyHeadersMiddleware, trusted_hosts=cfg.trusted_proxies)
    app.state.engine, app.state.signin_throttle = engine, throttle

    def get_session():
        with make_session() as session:
            yield session

    def current(request: Request, session: Session = Depends(get_session)) -> Labeler | None:
        return signer.labeler(session, request.cookies.get(COOKIE))

    def labeler_page(labeler: Labeler | None = Depends(current)) -> Labeler:
        if labeler is None:
            raise SignInFirst
        return labeler

    def labeler_post(labeler: Labeler | None = Depends(current)) -> Labeler:
        if labeler is None:
            raise HTTPException(403, "sign in first")
        return labeler

    def admin_only(labeler: Labeler = Depends(labeler_page)) -> Labeler:
        if not labeler.is_admin:
            raise HTTPException(403, "this page is for admins")
        return labeler

    async def form_fields(request: Request) -> FormData:
        try:
            return await request.form(max_files=0, max_fields=40)
        except BodyTooLarge:
            raise
        except Exception as exc:  # starlette raises several kinds for malformed bodies
            raise HTTPException(400, f"malformed form: {exc}") from None

    def page(request, name, status_code=200, **context):
        return templates.TemplateResponse(request, name, context, status_code=status_code)

    def set_cookie(request, response, name, value, max_age):
        # Secure when asked, or when the request came over HTTPS (directly, or as a trusted proxy says)
        secure = cfg.secure_cookies or request.url.scheme == "https"
        response.set_cookie(name, value, max_age=max_age, httponly=True, samesite="strict", secure=secure)

    def sign_in_page(request, status_code=200, error=None, new_browser=False, headers=None):
        browser_id = request.cookies.get(SIGN_IN_COOKIE)
        if new_browser or not browser_id or len(browser_id) > 64:  # a post turns the browser id over: no replay
            browser_id = SignInForms.new_browser_id()
        response = page(request, "login.html", status_code=status_code, nonce=sign_in_forms.nonce(browser_id),
                        error=error, user=None)
        set_cookie(request, response, SIGN_IN_COOKIE, browser_id, int(NONCE_LIFETIME.total_seconds()))
        response.headers.update(headers or {})
        return response

    def check_nonce(session, form, labeler_id, purpose):
        if len(form.getlist("nonce")) != 1 or not consume_nonce(session, form.get("nonce"), labeler_id, purpose):
            session.commit()
            raise HTTPException(403, "this form is stale or was not issued to you; reload the page and submit again")

    @app.exception_handler(SignInFirst)
    async def _sign_in(request, exc):
        return RedirectResponse("/login", status_code=303)

    @app.exception_handler(HTTPException)
    async def _http_error(request, exc):
        return page(request, "message.html", status_code=exc.status_code, title=f"Error {exc.status_code}",
                    message=exc.detail, user=None)

    @app.exception_handler(RequestValidationError)
    async def _bad_request(request, exc):
        return page(request, "message.html", status_code=400, title="Error 400",
                    message="malformed request (a path or field has the wrong type)", user=None)

    # --- signing in ----------------------------------------------------------------------------------

    @app.get("/", include_in_schema=False)
    def home(labeler: Labeler | None = Depends(current)):
        if labeler is None:
            return RedirectResponse("/login", status_code=303)
        return RedirectResponse("/admin" if labeler.is_admin else "/next", status_code=303)

    @app.get("/login", response_class=HTMLResponse)
    def login_form(request: Request):
        return sign_in_page(request)  # writes nothing: the nonce is signed, not stored

    def credentials(name):
        with make_session() as session:  # closed before the hash
            return stored_credentials(session, name)

    @app.post("/login")
    async def login(request: Request, form: FormData = Depends(form_fields)):
        # async: a refused try waits here at no cost to the server; the lookup and hash go to the threadpool
        if len(form.getlist("nonce")) != 1 or not sign_in_forms.check(form.get("nonce"),
                                                                        request.cookies.get(SIGN_IN_COOKIE)):
            raise HTTPException(403, "this sign-in form is stale or was made for another browser; reload the page "
                                     "and sign in again")
        name, token = form.get("name"), form.get("token")
        if not (isinstance(name, str) and isinstance(token, str) and len(name) <= MAX_NAME and len(token) <= MAX_TOKEN):
            return sign_in_page(request, 400, error="give a name and a token", new_browser=True)
        limits = {f"account:{name}": cfg.signin_failures_per_account,
                  f"client:{request.client.host if request.client else ''}": cfg.signin_failures_per_client}
        wait = math.ceil(throttle.retry_after(limits))
        if wait:  # refused before the hash, and answered late: a flood that waits for answers is held back
            await asyncio.sleep(cfg.signin_refusal_seconds)
            return sign_in_page(request, 429, new_browser=True, headers={"retry-after": str(wait)},
                                error=f"too many failed sign-ins for this name or from your address; try again in "
                                      f"{wait} s")
        stored = await run_in_threadpool(credentials, name)
        # the hash is slow on purpose: it holds no connection (nor SQLite's write lock)
        if not await run_in_threadpool(token_matches, token, stored.token_hash if stored else None):
            throttle.failed(limits)
            return sign_in_page(request, 401, error="unknown name or token", new_browser=True)
        throttle.succeeded(f"account:{name}")
        response = RedirectResponse("/admin" if stored.is_admin else "/next", status_code=303)
        set_cookie(request, response, COOKIE, signer.dumps(stored), signer.max_age_s)
        set_cookie(request, response, SIGN_IN_COOKIE, "", 0)  # done with; 0 s deletes it
        return response

    @app.get("/logout", response_class=HTMLResponse)
    def logout_form(request: Request, labeler: Labeler = Depends(labeler_page), session: Session = Depends(get_session)):
        nonce = issue_nonce(session, labeler.id, "logout")
        session.commit()
        return page(request, "logout.html", nonce=nonce, user=labeler)

    @app.post("/logout")
    def logout(request: Request, form: FormData = Depends(form_fields), labeler: Labeler = Depends(labeler_post),
               session: Session = Depends(get_session)):
        check_nonce(session, form, labeler.id, "logout")
        labeler.session_epoch += 1  # every cookie of this labeler stops working
        session.commit()
        response = RedirectResponse("/login", status_code=303)
        set_cookie(request, response, COOKIE, "", 0)
        return response

    # --- labeling --------------------------------------------------------------------------------------

    @app.get("/next")
    def next_item(request: Request, labeler: Labeler = Depends(labeler_page), session: Session = Depends(get_session)):
        item = store.next_item(session, labeler, expiry)
        if item is None:
            return page(request, "done.html", user=labeler)
        return RedirectResponse(f"/items/{item.id}", status_code=303)

    def item_page(request, session, labeler, item, status_code=200, error=None, posted=None):
        label = store.own_label(session, labeler, item.id)
        nonce = issue_nonce(session, labeler.id, f"item:{item.id}")
        session.commit()
        rank_of = {position: rank for rank, position in enumerate(label.ranking or [], start=1)} if label else {}
        if posted is not None:  # a refused post: show the ranks as the labeler set them
            values = {position: str(posted.get(f"rank_{position}", "")) for position in range(len(item.responses))}
            rank_of = {position: int(value) for position, value in values.items() if value.isascii() and value.isdigit()}
        return page(request, "item.html", status_code=status_code, user=labeler, item=item, job=item.job,
                    prompt=as_messages(item.prompt), label=label, rank_of=rank_of, nonce=nonce, error=error)

    def my_item(session, labeler, item_id) -> Item:
        try:
            item = store.assigned_item(session, labeler, item_id, expiry)
        except store.AssignmentExpired:  # refused, so the labeler who has the item now keeps the only slot
            raise HTTPException(410, f"this item was handed to you more than {cfg.assignment_minutes:g} minutes "
                                     "ago without a label, so it went back to the pool for another labeler; "
                                     "nothing was saved. Take the next item.") from None
        if item is None:
            raise HTTPException(404, "no such item among yours (an item left unlabeled for "
                                     f"{cfg.assignment_minutes:g} minutes goes back to the pool)")
        return item

    @app.get("/items/{item_id}", response_class=HTMLResponse)
    def show_item(request: Request, item_id: RowId, labeler: Labeler = Depends(labeler_page),
                  session: Session = Depends(get_session)):
        return item_page(request, session, labeler, my_item(session, labeler, item_id))

    @app.post("/items/{item_id}")
    def submit_item(request: Request, item_id: RowId, form: FormData = Depends(form_fields),
                    labeler: Labeler = Depends(labeler_post), session: Session = Depends(get_session)):
        item = my_item(session, labeler, item_id)
        check_nonce(session, form, labeler.id, f"item:{item.id}")
        try:
            fields = parse_label_form(form, item.job.kind, len(item.responses), cfg.max_text_chars)
        except ValueError as exc:
            return item_page(request, session, labeler, item, status_code=400, error=str(exc), posted=form)
        try:
            store.save_label(session, labeler, item, **fields)
        except IntegrityError:
            raise HTTPException(409, "this item's label was just saved by another of your posts") from None
        return RedirectResponse("/next", status_code=303)

    @app.get("/labels", response_class=HTMLResponse)
    def my_labels(request: Request, labeler: Labeler = Depends(labeler_page), session: Session = Depends(get_session)):
        labels = session.scalars(select(Label).where(Label.labeler_id == labeler.id).order_by(Label.id.desc())
                                 .options(selectinload(Label.item).selectinload(Item.job))).all()
        return page(request, "labels.html", user=labeler, labels=labels)

    @app.get("/labels/{label_id}")
    def one_label(label_id: RowId, labeler: Labeler = Depends(labeler_page), session: Session = Depends(get_session)):
        label = session.get(Label, label_id)
        if label is None or label.labeler_id != labeler.id:
            raise HTTPException(404, "no such label among yours")
        return RedirectResponse(f"/items/{label.item_id}", status_code=303)

    # --- admin -----------------------------------------------------------------------------------------

    def admin_page(request, session, admin, new_token=None, status_code=200):
        counts = store.labeler_counts(session)
        nonces = {row["labeler"].id: issue_nonce(session, admin.id, f"held-out:{row['labeler'].id}") for row in counts}
        add_nonce = issue_nonce(session, admin.id, "add-labeler")
        session.commit()
        return page(request, "admin.html", status_code=status_code, user=admin, progress=store.progress(session),
                    agreement=label_agreement(session), counts=counts, nonces=nonces, add_nonce=add_nonce,
                    new_token=new_token)

    @app.get("/admin", response_class=HTMLResponse)
    def admin(request: Request, admin: Labeler = Depends(admin_only), session: Session = Depends(get_session)):
        return admin_page(request, session, admin)

    @app.post("/admin/labelers", response_class=HTMLResponse)
    def add_labeler(request: Request, form: FormData = Depends(form_fields), admin: Labeler = Depends(admin_only),
                    session: Session = Depends(get_session)):
        check_nonce(session, form, admin.id, "add-labeler")
        name = form.get("name")
        try:
            token = store.add_labeler(session, name if isinstance(name, str) else "",
                                      held_out=form.get("held_out") in FLAG_VALUES)
        except ChatforgeError as exc:
            session.rollback()
            raise HTTPException(400, str(exc)) from None
        return admin_page(request, session, admin, new_token=(name, token))

    @app.post("/admin/labelers/{labeler_id}/held-out")
    def set_held_out(labeler_id: RowId, form: FormData = Depends(form_fields), admin: Labeler = Depends(admin_only),
                     session: Session = Depends(get_session)):
        check_nonce(session, form, admin.id, f"held-out:{labeler_id}")
        target = session.get(Labeler, labeler_id)
        if target is None or form.get("held_out") not in ("0", "1"):
            raise HTTPException(400, "give held_out=0 or 1 for an existing labeler")
        target.held_out = form.get("held_out") == "1"
        session.commit()
        return RedirectResponse("/admin", status_code=303)

    return app


def as_messages(prompt) -> list[dict]:
    """A stored prompt (text or messages) as messages, for display."""
    return [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt


def parse_label_form(form: FormData, job_kind: str, k: int, max_text_chars: int) -> dict:
    """The label fields of a posted item form, or ValueError saying what is wrong.

    action=rank needs rank_0 .. rank_{K-1} holding 1..K, each once (a permutation of the K responses);
    action=skip ("unclear intent") needs nothing; action=demonstration needs the text. Fields other than
    these, repeated fields and flags other than on/1/true are errors.
    """
    allowed = {"nonce", "action", "harmful", "untruthful", "demonstration"}
    for key in form.keys():
        if key not in allowed and not RANK_FIELD.fullmatch(key):
            raise ValueError(f"unexpected field {key[:40]!r}")
        if len(form.getlist(key)) != 1:
            raise ValueError(f"field {key[:40]!r} is given more than once")
    flags = {}
    for name in ("harmful", "untruthful"):
        value = form.get(name)
        if value is not None and value not in FLAG_VALUES:
            raise ValueError(f"field {name!r}: expected a checkbox value, got {str(value)[:40]!r}")
        flags[name] = value is not None
    action = form.get("action")
    expected = ("rank", "skip") if job_kind == "ranking" else ("demonstration", "skip")
    if action not in expected:
        raise ValueError(f"field 'action': expected one of {', '.join(expected)}")
    if action == "skip":
        return {"kind": "skip", **flags}
    if action == "demonstration":
        text = form.get("demonstration")
        if not isinstance(text, str) or not text.strip():
            raise ValueError("write the response the assistant should give")
        if len(text) > max_text_chars:
            raise ValueError(f"the demonstration is {len(text)} characters; the most is {max_text_chars}")
        return {"kind": "demonstration", "demonstration": text, **flags}
    ranks = {}
    for key in form.keys():
        match = RANK_FIELD.fullmatch(key)
        if match:
            value = form.get(key)
            if not isinstance(value, str) or not (value.isascii() and value.isdigit()) or len(value) > 2:
                raise ValueError(f"field {key!r}: expected a rank 1..{k}, got {str(value)[:40]!r}")
            ranks[int(match.group(1))] = int(value)
    if set(ranks) != set(range(k)):
        raise ValueError(f"give a rank for each of the {k} responses")
    if sorted(ranks.values()) != list(range(1, k + 1)):
        raise ValueError(f"give each rank 1..{k} to exactly one response (1 = best)")
    return {"kind": "ranking", "ranking": sorted(ranks, key=ranks.get), **flags}
