"""Sign-in tokens (scrypt hashes), signed session cookies, and one-time form nonces against CSRF.

- A labeler's token is shown once when the labeler is added; the database keeps only
  scrypt(token, random salt), compared in constant time.
- The session cookie is {labeler id, session epoch} signed with the server's key (itsdangerous);
  signing out bumps the epoch, which voids every cookie issued before.
- Every form carries a nonce issued for that labeler and purpose ("item:12", "login", ...). A post
  deletes its nonce in one statement and is refused unless exactly that row was deleted: a forged
  post has no valid nonce, a replayed one finds it already gone.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import random
import secrets
from datetime import timedelta

from itsdangerous import BadSignature, URLSafeTimedSerializer
from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from chatforge.serve.label.db import Labeler, Nonce, Setting, utcnow

SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1  # ~16 MiB and tens of ms per hash: cheap to sign in, slow to guess
NONCE_LIFETIME = timedelta(hours=4)


def new_token() -> str:
    """A random sign-in token for a new labeler (shown once, never stored)."""
    return secrets.token_urlsafe(18)


def hash_token(token: str) -> str:
    """'scrypt$N$r$p$salt$hash' of the token with a fresh random salt."""
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(token.encode(), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P)
    encode = lambda raw: base64.urlsafe_b64encode(raw).decode()
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${encode(salt)}${encode(digest)}"


def verify_token(token: str, stored: str) -> bool:
    """True when `token` hashes to `stored` (constant-time comparison)."""
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        expected = base64.urlsafe_b64decode(digest)
        actual = hashlib.scrypt(token.encode(), salt=base64.urlsafe_b64decode(salt), n=int(n), r=int(r), p=int(p))
    except (ValueError, UnicodeEncodeError):
        return False
    return scheme == "scrypt" and hmac.compare_digest(actual, expected)


def server_key(session: Session) -> str:
    """The cookie signing key, made on first use and kept in the database across restarts."""
    row = session.get(Setting, "secret_key")
    if row is None:
        row = Setting(key="secret_key", value=secrets.token_urlsafe(32))
        session.add(row)
        session.commit()
    return row.value


class CookieSigner:
    """Signs and reads the session cookie {labeler id, epoch}; cookies older than max_age die."""

    def __init__(self, key: str, max_age_s: int):
        self.serializer = URLSafeTimedSerializer(key, salt="chatforge-label-session")
        self.max_age_s = max_age_s

    def dumps(self, labeler: Labeler) -> str:
        return self.serializer.dumps({"id": labeler.id, "epoch": labeler.session_epoch})

    def labeler(self, session: Session, cookie: str | None) -> Labeler | None:
        """The signed-in labeler, or None for a missing, forged, expired or signed-out cookie."""
        if not cookie:
            return None
        try:
            data = self.serializer.loads(cookie, max_age=self.max_age_s)
        except BadSignature:
            return None
        if not isinstance(data, dict) or not isinstance(data.get("id"), int):
            return None
        labeler = session.get(Labeler, data["id"])
        if labeler is None or labeler.session_epoch != data.get("epoch"):
            return None
        return labeler


def issue_nonce(session: Session, labeler_id: int | None, purpose: str) -> str:
    """Store a one-time nonce for this labeler and form; the caller commits."""
    value = secrets.token_urlsafe(24)
    now = utcnow()
    session.add(Nonce(value=value, labeler_id=labeler_id, purpose=purpose, expires_at=now + NONCE_LIFETIME))
    if random.random() < 0.01:  # now and then, forget expired nonces
        session.execute(delete(Nonce).where(Nonce.expires_at < now))
    return value


def consume_nonce(session: Session, value, labeler_id: int | None, purpose: str) -> bool:
    """Delete the nonce if it was issued for this labeler and purpose and is unexpired; True if it was."""
    if not isinstance(value, str) or not value or len(value) > 64:
        return False
    owner = Nonce.labeler_id.is_(None) if labeler_id is None else Nonce.labeler_id == labeler_id
    deleted = session.execute(delete(Nonce).where(
        Nonce.value == value, owner, Nonce.purpose == purpose, Nonce.expires_at >= utcnow()))
    return deleted.rowcount == 1


def find_labeler(session: Session, name: str, token: str) -> Labeler | None:
    """The labeler with this name and token, or None."""
    labeler = session.scalar(select(Labeler).where(Labeler.name == name))
    if labeler is None:
        verify_token(token, _dummy_hash())  # same work for unknown names: no timing hint that a name exists
        return None
    return labeler if verify_token(token, labeler.token_hash) else None


@functools.cache
def _dummy_hash() -> str:
    return hash_token("not a token")
