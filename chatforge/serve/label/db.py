"""The labeling database: jobs of items (a prompt and its K responses), labelers, assignments, labels.

SQLite by default (a file path), or any SQLAlchemy URL (postgresql+psycopg://...) for a team. Every
query goes through SQLAlchemy with bound parameters; no SQL is built from user text.

Integrity the app relies on:
- one label per (item, labeler): a unique constraint, so a label is stored exactly once however often
  the form is posted;
- one assignment per (item, labeler): a labeler may only label items assigned to them;
- one-time form nonces (CSRF): a post consumes its nonce with a single DELETE, so a replay finds none.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

from sqlalchemy import (JSON, Boolean, DateTime, ForeignKey, Index, Integer, String, Text, UniqueConstraint,
                        create_engine, event)
from sqlalchemy.engine import Engine
from sqlalchemy.pool import QueuePool
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship, sessionmaker

from chatforge.errors import ChatforgeError

KINDS = ("ranking", "demonstration")
LABEL_KINDS = ("ranking", "skip", "demonstration")


def utcnow() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)  # naive UTC: SQLite keeps no time zone


class Base(DeclarativeBase):
    pass


class Labeler(Base):
    """A person who labels (or administers). The token is stored only as a salted scrypt hash."""
    __tablename__ = "labelers"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    token_hash: Mapped[str] = mapped_column(String(256))
    is_admin: Mapped[bool] = mapped_column(Boolean, default=False)
    held_out: Mapped[bool] = mapped_column(Boolean, default=False)  # labels never go into training files
    session_epoch: Mapped[int] = mapped_column(Integer, default=0)  # bumped on sign-out: old cookies die
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class Job(Base):
    """A batch of items to label: rankings of K sampled responses, or prompts to write demonstrations for."""
    __tablename__ = "jobs"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    kind: Mapped[str] = mapped_column(String(16))  # one of KINDS
    k: Mapped[int] = mapped_column(Integer, default=0)  # responses sampled per prompt (0 for demonstrations)
    labelers_per_item: Mapped[int] = mapped_column(Integer, default=1)
    source: Mapped[dict] = mapped_column(JSON, default=dict)  # model, prompts file, sampling settings
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    items: Mapped[list[Item]] = relationship(back_populates="job", order_by="Item.id")


class Item(Base):
    """One prompt of a job, with its responses; `assigned` counts the labelers it was handed to, and it
    stays `open` until that reaches the job's labelers_per_item."""
    __tablename__ = "items"
    id: Mapped[int] = mapped_column(primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id"), index=True)
    prompt_json: Mapped[str] = mapped_column(Text)  # a string or a list of messages, as JSON
    assigned: Mapped[int] = mapped_column(Integer, default=0)
    open: Mapped[bool] = mapped_column(Boolean, default=True)
    job: Mapped[Job] = relationship(back_populates="items")
    responses: Mapped[list[Response]] = relationship(order_by="Response.position")
    # the next open item is one index seek, however many items are already handed out
    __table_args__ = (Index("ix_items_open", "open", "id"),)

    @property
    def prompt(self):
        return json.loads(self.prompt_json)


class Response(Base):
    """One sampled response of an item; `position` is its index as shown (0 = 'A')."""
    __tablename__ = "responses"
    id: Mapped[int] = mapped_column(primary_key=True)
    item_id: Mapped[int] = mapped_column(ForeignKey("items.id"), index=True)
    position: Mapped[int] = mapped_column(Integer)
    text: Mapped[str] = mapped_column(Text)
    __table_args__ = (UniqueConstraint("item_id", "position"),)


class Assignment(Base):
    """An item handed to a labeler; only assigned items can be seen or labeled."""
    __tablename__ = "assignments"
    id: Mapped[int] = mapped_column(primary_key=True)
    item_id: Mapped[int] = mapped_column(ForeignKey("items.id"))
    labeler_id: Mapped[int] = mapped_column(ForeignKey("labelers.id"), index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    __table_args__ = (UniqueConstraint("item_id", "labeler_id"),)


class Label(Base):
    """A labeler's answer for an item: a ranking (response positions best -> worst), a skip, or a
    demonstration; harmful / untruthful flags as InstructGPT's labelers gave them."""
    __tablename__ = "labels"
    id: Mapped[int] = mapped_column(primary_key=True)
    item_id: Mapped[int] = mapped_column(ForeignKey("items.id"))
    labeler_id: Mapped[int] = mapped_column(ForeignKey("labelers.id"), index=True)
    kind: Mapped[str] = mapped_column(String(16))  # one of LABEL_KINDS
    ranking: Mapped[list | None] = mapped_column(JSON, nullable=True)
    demonstration: Mapped[str | None] = mapped_column(Text, nullable=True)
    harmful: Mapped[bool] = mapped_column(Boolean, default=False)
    untruthful: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    item: Mapped[Item] = relationship()
    labeler: Mapped[Labeler] = relationship()
    __table_args__ = (UniqueConstraint("item_id", "labeler_id"),)


class Nonce(Base):
    """A one-time form token: issued with a form for one labeler (NULL: the sign-in form) and purpose."""
    __tablename__ = "nonces"
    value: Mapped[str] = mapped_column(String(64), primary_key=True)
    labeler_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    purpose: Mapped[str] = mapped_column(String(64))
    expires_at: Mapped[datetime] = mapped_column(DateTime, index=True)


class Setting(Base):
    """Server-wide values kept across restarts (the cookie signing key)."""
    __tablename__ = "settings"
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


def database_url(db: str) -> str:
    """A SQLAlchemy URL as given (anything with '://'), or a file path made into sqlite:///ABS_PATH."""
    if "://" in db:
        return db
    if not db:
        raise ChatforgeError("field 'db': give a database file (runs/label.db) or a SQLAlchemy URL")
    path = Path(db).expanduser().resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path}"


def open_db(db: str) -> tuple[Engine, sessionmaker]:
    """Connect (creating the tables if missing); returns the engine and a session factory."""
    url = database_url(db)
    try:
        if url.startswith("sqlite"):
            # one connection for the process: threads queue on the pool (woken at once) instead of on
            # SQLite's lock (polled with sleeps), and SQLite allows one writer anyway
            engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30},
                                   poolclass=QueuePool, pool_size=1, max_overflow=0, pool_timeout=120)
            _sqlite_write_transactions(engine)
        else:
            engine = create_engine(url, pool_pre_ping=True)
        Base.metadata.create_all(engine)
    except Exception as exc:  # a bad URL, a missing driver, a server that is down: say which
        raise ChatforgeError(f"field 'db': cannot open {url!r}: {type(exc).__name__}: {exc}") from None
    return engine, sessionmaker(engine, expire_on_commit=False)


def _sqlite_write_transactions(engine: Engine) -> None:
    """SQLite: every transaction takes the write lock at BEGIN (BEGIN IMMEDIATE) and waits for it.

    pysqlite's default deferred BEGIN upgrades to a writer mid-transaction, which fails at once with
    'database is locked' when another connection wrote in between; immediate transactions instead
    queue on the busy timeout, so concurrent labelers never lose a submission.
    """
    @event.listens_for(engine, "connect")
    def _connect(dbapi_connection, _record):
        dbapi_connection.isolation_level = None  # SQLAlchemy's "begin" event below issues BEGIN
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")  # WAL: commits survive a crash of the app, no fsync each
        cursor.execute("PRAGMA busy_timeout=30000")  # other processes (the CLI) wait for the lock
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(connection):
        connection.exec_driver_sql("BEGIN IMMEDIATE")
