"""The labeling database: jobs of items (a prompt and its K responses), labelers, assignments, labels.

SQLite by default (a file path), or any SQLAlchemy URL (postgresql+psycopg://...) for a team. Every
query goes through SQLAlchemy with bound parameters; no SQL is built from user text.

Integrity the app relies on:
- one label per (item, labeler): a unique constraint, so a label is stored exactly once however often
  the form is posted;
- one assignment per (item, labeler): a labeler may only label items assigned to them;
- one-time form nonces (CSRF): a post consumes its nonce with a single DELETE, so a replay finds none.

A SQLite file is made private (0600, and SQLite gives its -wal and -shm files the same mode), and label
writes wait for a full sync (synchronous=FULL), so a committed label survives a power cut too.
"""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from pathlib import Path

from sqlalchemy import (JSON, Boolean, DateTime, ForeignKey, Index, Integer, String, Text, UniqueConstraint,
                        create_engine, event, inspect)
from sqlalchemy.engine import Engine
from sqlalchemy.pool import QueuePool
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship, sessionmaker

from chatforge.errors import ChatforgeError

KINDS = ("ranking", "demonstration")
SYNCHRONOUS = ("FULL", "NORMAL")
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
    """An item handed to a labeler; only assigned items can be seen or labeled. One still unlabeled
    `assignment_minutes` after created_at has expired: it is deleted and the item goes back to the pool."""
    __tablename__ = "assignments"
    id: Mapped[int] = mapped_column(primary_key=True)
    item_id: Mapped[int] = mapped_column(ForeignKey("items.id"))
    labeler_id: Mapped[int] = mapped_column(ForeignKey("labelers.id"), index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow, index=True)
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


def database_url(db: str) -> str:
    """A SQLAlchemy URL as given (anything with '://'), or a file path made into sqlite:///ABS_PATH."""
    if "://" in db:
        return db
    if not db:
        raise ChatforgeError("field 'db': give a database file (runs/label.db) or a SQLAlchemy URL")
    path = Path(db).expanduser().resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path}"


def sqlite_path(db: str) -> Path | None:
    """The file of a SQLite database given as a path or sqlite:/// URL; None for other databases."""
    if "://" not in db:
        return Path(db).expanduser().resolve()
    if db.startswith("sqlite:///") and db != "sqlite:///:memory:":
        return Path(db.removeprefix("sqlite:///").split("?")[0])
    return None


def make_private(path: Path) -> None:
    """Create the SQLite file 0600 if missing (SQLite gives -wal and -shm its mode), tighten it if not."""
    os.close(os.open(path, os.O_CREAT | os.O_RDONLY, 0o600))  # an empty file is an empty database
    for file in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
        if file.exists() and file.stat().st_mode & 0o077:  # made by an older version, world-readable
            file.chmod(0o600)


def open_db(db: str, synchronous: str = "FULL") -> tuple[Engine, sessionmaker]:
    """Connect (creating the tables if missing); returns the engine and a session factory.

    synchronous (SQLite): FULL syncs each commit to disk, so labels survive a power cut; NORMAL only
    survives a crash of the app, and commits faster."""
    url = database_url(db)
    if synchronous not in SYNCHRONOUS:
        raise ChatforgeError(f"field 'sqlite_synchronous': expected one of {', '.join(SYNCHRONOUS)}, got {synchronous!r}")
    try:
        if url.startswith("sqlite"):
            if sqlite_path(url) is not None:
                make_private(sqlite_path(url))
            # one connection for the process: threads queue on the pool (woken at once) instead of on
            # SQLite's lock (polled with sleeps), and SQLite allows one writer anyway
            engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30},
                                   poolclass=QueuePool, pool_size=1, max_overflow=0, pool_timeout=120)
            _sqlite_write_transactions(engine, synchronous)
        else:
            engine = create_engine(url, pool_pre_ping=True)
        Base.metadata.create_all(engine)
        if inspect(engine).has_table("settings"):  # older versions kept the cookie signing key there
            with engine.begin() as connection:
                connection.exec_driver_sql("DROP TABLE settings")
    except Exception as exc:  # a bad URL, a missing driver, a server that is down: say which
        raise ChatforgeError(f"field 'db': cannot open {url!r}: {type(exc).__name__}: {exc}") from None
    return engine, sessionmaker(engine, expire_on_commit=False)


def _sqlite_write_transactions(engine: Engine, synchronous: str) -> None:
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
        cursor.execute(f"PRAGMA synchronous={synchronous}")
        cursor.execute("PRAGMA busy_timeout=30000")  # other processes (the CLI) wait for the lock
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(connection):
        connection.exec_driver_sql("BEGIN IMMEDIATE")
