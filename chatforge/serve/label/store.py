"""What the labeling app does to the database: add labelers and jobs, hand out items, store labels.

An assignment still unlabeled `expiry` after it was made has expired: the labeler may no longer
submit it, and the next claim deletes it and puts the item back in the pool, so a labeler who left does
not hold items forever and no item gets more labels than it wants.
"""

from __future__ import annotations

import json
import threading
from collections import Counter
from datetime import timedelta

from sqlalchemy import Integer, delete, exists, func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from chatforge.data.formats import MAX_RESPONSES, MIN_RESPONSES
from chatforge.errors import ChatforgeError
from chatforge.serve.label.auth import hash_token, new_token
from chatforge.serve.label.db import KINDS, Assignment, Item, Job, Label, Labeler, Response, utcnow

NAME_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.@")
DEFAULT_EXPIRY = timedelta(minutes=30)
# one process hands out items one at a time, so two labelers never take the last free slot together
_claim_lock = threading.Lock()


def add_labeler(session: Session, name: str, admin: bool | None = None, held_out: bool | None = None,
                reset: bool = False) -> str:
    """Add a labeler (or give an existing one a new token with reset=True, keeping their admin and
    held-out flags unless given); returns the token, shown once."""
    if not name or len(name) > 64 or not set(name) <= NAME_CHARS:
        raise ChatforgeError(f"field 'name': {name!r} must be 1-64 letters, digits or - _ . @")
    token = new_token()
    labeler = session.scalar(select(Labeler).where(Labeler.name == name))
    if labeler is not None and not reset:
        raise ChatforgeError(f"field 'name': labeler {name!r} exists; pass reset=true to give them a new token")
    if labeler is None:
        labeler = Labeler(name=name, token_hash=hash_token(token), is_admin=bool(admin), held_out=bool(held_out))
        session.add(labeler)
    else:
        labeler.token_hash = hash_token(token)
        if admin is not None:
            labeler.is_admin = admin
        if held_out is not None:
            labeler.held_out = held_out
        labeler.session_epoch += 1  # the old token's sessions end
    session.commit()
    return token


def add_job(session: Session, name: str, kind: str, items: list[tuple], labelers_per_item: int = 1,
            k: int = 0, source: dict | None = None) -> Job:
    """A job of `items` [(prompt, [responses])] (responses empty for demonstration jobs), queued in order."""
    if kind not in KINDS:
        raise ChatforgeError(f"field 'kind': expected one of {', '.join(KINDS)}, got {kind!r}")
    if session.scalar(select(Job).where(Job.name == name)) is not None:
        raise ChatforgeError(f"field 'name': a job named {name!r} exists; choose another name")
    if labelers_per_item < 1:
        raise ChatforgeError(f"field 'labelers_per_item': must be >= 1, got {labelers_per_item}")
    job = Job(name=name, kind=kind, k=k, labelers_per_item=labelers_per_item, source=source or {})
    session.add(job)
    session.flush()
    for prompt, responses in items:
        if kind == "ranking" and not MIN_RESPONSES <= len(responses) <= MAX_RESPONSES:
            raise ChatforgeError(f"job {name!r}: an item has {len(responses)} responses; rank {MIN_RESPONSES} "
                                 f"to {MAX_RESPONSES}")
    if items:  # bulk inserts: a job of thousands of prompts is stored in a second, not one row at a time
        item_ids = session.scalars(insert(Item).returning(Item.id, sort_by_parameter_order=True), [
            {"job_id": job.id, "prompt_json": json.dumps(prompt, ensure_ascii=False)} for prompt, _ in items]).all()
        rows = [{"item_id": item_id, "position": i, "text": text}
                for item_id, (_, responses) in zip(item_ids, items) for i, text in enumerate(responses)]
        if rows:
            session.execute(insert(Response), rows)
    session.commit()
    return job


def _labeled():
    """SQL: the assignment's labeler has labeled its item."""
    return exists().where(Label.item_id == Assignment.item_id, Label.labeler_id == Assignment.labeler_id)


def next_item(session: Session, labeler: Labeler, expiry: timedelta = DEFAULT_EXPIRY) -> Item | None:
    """The labeler's oldest live assigned item without a label, else a newly assigned one, else None."""
    pending = session.scalar(select(Assignment.item_id).where(
        Assignment.labeler_id == labeler.id, Assignment.created_at >= utcnow() - expiry, ~_labeled())
        .order_by(Assignment.id).limit(1))
    if pending is not None:
        return session.get(Item, pending)
    with _claim_lock:
        release_expired(session, expiry)
        mine = exists().where(Assignment.item_id == Item.id, Assignment.labeler_id == labeler.id)
        item_id = session.scalar(select(Item.id).where(Item.open, ~mine).order_by(Item.id).limit(1))
        if item_id is None:
            session.commit()  # keep the releases
            return None
        per_item = select(Job.labelers_per_item).where(Job.id == Item.job_id).scalar_subquery()
        session.add(Assignment(item_id=item_id, labeler_id=labeler.id))
        session.execute(update(Item).where(Item.id == item_id)
                        .values(assigned=Item.assigned + 1, open=Item.assigned + 1 < per_item))
        session.commit()
    return session.get(Item, item_id)


def release_expired(session: Session, expiry: timedelta, batch: int = 100) -> int:
    """Delete up to `batch` expired assignments and reopen their items; returns how many."""
    stale = select(Assignment.id).where(Assignment.created_at < utcnow() - expiry, ~_labeled()).limit(batch)
    ids = session.scalars(stale.with_for_update()).all()
    if not ids:
        return 0
    # the label check again, in a new statement after the row locks: on PostgreSQL a submit that held
    # the lock has committed its label by now, and this statement sees it
    item_ids = session.scalars(delete(Assignment).where(Assignment.id.in_(ids), ~_labeled())
                               .returning(Assignment.item_id)).all()
    for item_id, released in Counter(item_ids).items():
        session.execute(update(Item).where(Item.id == item_id).values(assigned=Item.assigned - released, open=True))
    return len(item_ids)


class AssignmentExpired(Exception):
    """The labeler's assignment of this item passed its expiry without a label."""


def assigned_item(session: Session, labeler: Labeler, item_id: int, expiry: timedelta = DEFAULT_EXPIRY) -> Item | None:
    """The item if it is assigned to this labeler, else None (others' items are invisible); raises
    AssignmentExpired when the assignment expired unlabeled. Locks the assignment row (PostgreSQL) so
    that a release cannot slip between this check and the label's commit."""
    assignment = session.scalar(select(Assignment).where(Assignment.item_id == item_id,
                                                         Assignment.labeler_id == labeler.id).with_for_update())
    if assignment is None:
        return None
    if assignment.created_at < utcnow() - expiry and own_label(session, labeler, item_id) is None:
        raise AssignmentExpired
    return session.get(Item, item_id)


def own_label(session: Session, labeler: Labeler, item_id: int) -> Label | None:
    return session.scalar(select(Label).where(Label.item_id == item_id, Label.labeler_id == labeler.id))


def save_label(session: Session, labeler: Labeler, item: Item, kind: str, ranking: list[int] | None = None,
               demonstration: str | None = None, harmful: bool = False, untruthful: bool = False) -> Label:
    """Store the labeler's label for the item, replacing their earlier one: one row per (item, labeler)."""
    label = own_label(session, labeler, item.id)
    if label is None:
        label = Label(item_id=item.id, labeler_id=labeler.id)
        session.add(label)
    label.kind, label.ranking, label.demonstration = kind, ranking, demonstration
    label.harmful, label.untruthful, label.updated_at = harmful, untruthful, utcnow()
    try:
        session.commit()
    except IntegrityError:  # a concurrent post of the same labeler won the insert; keep that one
        session.rollback()
        raise
    return label


def progress(session: Session) -> list[dict]:
    """Per job: items, items with at least one label, labels, and labels wanted (items x labelers per item)."""
    labels = dict(session.execute(select(Item.job_id, func.count(Label.id)).join(Label, Label.item_id == Item.id)
                                  .group_by(Item.job_id)).all())
    done = dict(session.execute(select(Item.job_id, func.count(func.distinct(Label.item_id)))
                                .join(Label, Label.item_id == Item.id).group_by(Item.job_id)).all())
    rows = []
    for job, n_items in session.execute(select(Job, func.count(Item.id)).outerjoin(Item).group_by(Job.id)
                                        .order_by(Job.id)).all():
        wanted = n_items * job.labelers_per_item
        rows.append({"job": job, "n_items": n_items, "items_labeled": done.get(job.id, 0),
                     "labels": labels.get(job.id, 0), "wanted": wanted,
                     "share": labels.get(job.id, 0) / wanted if wanted else 0.0})
    return rows


def labeler_counts(session: Session) -> list[dict]:
    """Per labeler: rankings, skips, demonstrations, harmful / untruthful flags, items still open."""
    counts = {}
    for labeler_id, kind, n in session.execute(select(Label.labeler_id, Label.kind, func.count())
                                               .group_by(Label.labeler_id, Label.kind)).all():
        counts.setdefault(labeler_id, {})[kind] = n
    flags = {row[0]: row[1:] for row in session.execute(
        select(Label.labeler_id, func.sum(Label.harmful.cast(Integer)), func.sum(Label.untruthful.cast(Integer)))
        .group_by(Label.labeler_id)).all()}
    assigned = dict(session.execute(select(Assignment.labeler_id, func.count()).group_by(Assignment.labeler_id)).all())
    rows = []
    for labeler in session.scalars(select(Labeler).order_by(Labeler.name)):
        own = counts.get(labeler.id, {})
        harmful, untruthful = flags.get(labeler.id, (0, 0))
        total = sum(own.values())
        rows.append({"labeler": labeler, "ranking": own.get("ranking", 0), "skip": own.get("skip", 0),
                     "demonstration": own.get("demonstration", 0), "harmful": harmful or 0,
                     "untruthful": untruthful or 0, "labels": total, "open": assigned.get(labeler.id, 0) - total})
    return rows

