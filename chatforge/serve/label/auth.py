"""Sign-in tokens (scrypt hashes), signed session cookies, and form nonces against CSRF.

- A labeler's token is shown once when the labeler is added; the database keeps only
  scrypt(token, random salt), compared in constant time.
- The session cookie is {labeler id, session epoch} signed with the server's key (itsdangerous);
  signing out bumps the epoch, which voids every cookie issued before. The key lives in a 0600 file
  (or $CHATFORGE_LABEL_SECRET), never in the database, so a copy of the database cannot sign cookies.
- Every signed-in form carries a nonce issued for that labeler and purpose ("item:12", ...). A post
  deletes its nonce in one statement and is refused unless exactly that row was deleted: a forged
  post has no valid nonce, a replayed one finds it already gone.
- The sign-in form stores nothing (anonymous visitors write no row): its nonce is the browser's
  sign-in cookie, signed, and a post must bring both (double submit), against login CSRF.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import os
import random
import secrets
from datetime import timedelta
from pathlib import Path

from itsdangerous import BadSignature, URLSafeTimedSerializer
from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from chatforge.errors import ChatforgeError
from chatforge.serve.label.db import Labeler, Nonce, utcnow

SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1  # ~16 MiB and tens of ms per hash: cheap to sign in, slow to guess
NONCE_LIFETIME = timedelta(hours=4)
SECRET_ENV = "CHATFORGE_LABEL_SECRET"
MIN_KEY_CHARS = 32


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


def signing_key(key_file: Path | None) -> str:
    """The cookie signing key: $CHATFORGE_LABEL_SECRET, else the key file, made 0600 with a random key
    on first use; a key file others can read is refused."""
    key = os.environ.get(SECRET_ENV, "")
    if key:
        if len(key) < MIN_KEY_CHARS:
            raise ChatforgeError(f"{SECRET_ENV} holds {len(key)} characters; give at least {MIN_KEY_CHARS}, e.g. "
                                 "python -c 'import secrets; print(secrets.token_urlsafe(32))'")
        return key
    if key_file is None:
        raise ChatforgeError(f"field 'secret_file': a database URL has no folder to keep the cookie signing key "
                             f"in; give secret_file=PATH (made 0600) or set {SECRET_ENV}")
    if not key_file.exists():
        _create_key_file(key_file)
    mode = key_file.stat().st_mode & 0o777
    if mode & 0o077:
        raise ChatforgeError(f"{key_file}: the cookie signing key file is readable by others (mode {mode:o}); "
                             f"run chmod 600 {key_file}")
    key = key_file.read_text().strip()
    if len(key) < MIN_KEY_CHARS:
        raise ChatforgeError(f"{key_file}: holds no signing key ({len(key)} characters); delete it and restart "
                             "to make a new one (everyone signs in again)")
    return key


def _create_key_file(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.{secrets.token_hex(6)}")
    with os.fdopen(os.open(temp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600), "w") as handle:
        handle.write(secrets.token_urlsafe(32) + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    try:  # link, unlike rename, never replaces: two servers starting at once end up with one key
        os.link(temp, path)
    except FileExistsError:
        pass
    finally:
        temp.unlink()


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


class SignInForms:
    """Stateless sign-in nonces: the nonce is the browser's sign-in cookie value signed with a time
    stamp, so a post must bring the cookie and the nonce made for it; nothing is stored per visitor."""

    def __init__(self, key: str):
        self.serializer = URLSafeTimedSerializer(key, salt="chatforge-label-sign-in")

    @staticmethod
    def new_browser_id() -> str:
        return secrets.token_urlsafe(18)

    def nonce(self, browser_id: str) -> str:
        return self.serializer.dumps(browser_id)

    def check(self, nonce, browser_id: str | None) -> bool:
        """True when `nonce` was made for this browser's cookie within NONCE_LIFETIME."""
        if not isinstance(nonce, str) or len(nonce) > 200 or not browser_id:
            return False
        try:
            value = self.serializer.loads(nonce, max_age=int(NONCE_LIFETIME.total_seconds()))
        except BadSignature:
            return False
        return isinstance(value, str) and hmac.compare_digest(value.encode(), browser_id.encode())


def issue_nonce(session: Session, labeler_id: int, purpose: str) -> str:
    """Store a one-time nonce for this labeler and form; the caller commits."""
    value = secrets.token_urlsafe(24)
    now = utcnow()
    session.add(Nonce(value=value, labeler_id=labeler_id, purpose=purpose, expires_at=now + NONCE_LIFETIME))
    if random.random() < 0.01:  # now and then, forget expired nonces
        session.execute(delete(Nonce).where(Nonce.expires_at < now))
    return value


def consume_nonce(session: Session, value, labeler_id: int, purpose: str) -> bool:
    """Delete the nonce if it was issued for this labeler and purpose and is unexpired; True if it was."""
    if not isinstance(value, str) or not value or len(value) > 64:
        return False
    deleted = session.execute(delete(Nonce).where(
        Nonce.value == value, Nonce.labeler_id == labeler_id, Nonce.purpose == purpose, Nonce.expires_at >= utcnow()))
    return deleted.rowcount == 1


def stored_credentials(session: Session, name: str):
    """(id, session_epoch, is_admin, token_hash) of the labeler named `name`, or None; a plain row, so the
    caller can close the session before the slow hash."""
    return session.execute(select(Labeler.id, Labeler.session_epoch, Labeler.is_admin, Labeler.token_hash)
                           .where(Labeler.name == name)).first()


def token_matches(token: str, stored_hash: str | None) -> bool:
    """True when `token` is the one hashed in `stored_hash`; None (no such name) costs the same hash, so
    timing does not tell which names exist."""
    return verify_token(token, stored_hash or _dummy_hash()) and stored_hash is not None


@functools.cache
def _dummy_hash() -> str:
    return hash_token("not a token")
