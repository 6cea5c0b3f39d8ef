"""Classroom accounts: passwords, sessions, CSRF tokens and the login rate limit.

Passwords are hashed with scrypt (memory-hard, in the standard library; n=2**14, r=8: 16 MiB and
tens of milliseconds per guess). A session is a random token in an HttpOnly, SameSite=Strict
cookie; the database keeps only its SHA-256, so a copy of the database logs nobody in. Each
session has its own CSRF token, which every state-changing request must send back in the
``X-CSRF-Token`` header (a cross-site form can set neither the header nor read the token).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import threading
import time
from dataclasses import dataclass

from ...utils.errors import FoundryError
from .store import Store

ROLES = ("learner", "mentor")
NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,31}$")  # also a folder name (the user's lab home): no "." or ".."
SESSION_S = 7 * 24 * 3600
_SCRYPT = {"n": 1 << 14, "r": 8, "p": 1, "maxmem": 64 << 20, "dklen": 32}
MIN_PASSWORD = 8


def hash_password(password: str, salt: bytes | None = None) -> tuple[bytes, bytes]:
    """``(salt, hash)`` of ``password`` (a fresh 16-byte salt unless given)."""
    salt = secrets.token_bytes(16) if salt is None else salt
    return salt, hashlib.scrypt(password.encode("utf-8"), salt=salt, **_SCRYPT)


@dataclass(frozen=True)
class User:
    """Who a request is from: ``csrf`` is the session's token."""

    name: str
    role: str
    csrf: str


def add_user(store: Store, name: str, role: str, password: str) -> None:
    """Create the account ``name`` (or set its role and password when it exists)."""
    if not NAME.match(name):
        raise FoundryError(f"user name {name!r}: 1 to 32 letters, digits, '_', '.' or '-', not starting with '.' or '-'")
    if role not in ROLES:
        raise FoundryError(f"role {role!r}: one of {', '.join(ROLES)}")
    if len(password) < MIN_PASSWORD:
        raise FoundryError(f"the password needs at least {MIN_PASSWORD} characters")
    salt, digest = hash_password(password)
    with store.write() as conn:
        conn.execute("INSERT INTO users (name, role, salt, hash, created) VALUES (?, ?, ?, ?, ?) ON CONFLICT(name) "
                     "DO UPDATE SET role = excluded.role, salt = excluded.salt, hash = excluded.hash",
                     (name, role, salt, digest, time.time()))


def check_password(store: Store, name: str, password: str) -> str | None:
    """The user's role when ``password`` is theirs, else None (the same work is done for an unknown name)."""
    rows = store.rows("SELECT role, salt, hash FROM users WHERE name = ?", (name,))
    row = rows[0] if rows else {"role": None, "salt": b"\0" * 16, "hash": b""}
    _, digest = hash_password(password, row["salt"])
    return row["role"] if hmac.compare_digest(digest, row["hash"]) and row["role"] else None


def _sha(token: str) -> str:
    return hashlib.sha256(token.encode("ascii", "replace")).hexdigest()


def open_session(store: Store, name: str) -> str:
    """A new session for ``name``; returns the token for the cookie."""
    token = secrets.token_urlsafe(32)
    now = time.time()
    with store.write() as conn:
        conn.execute("DELETE FROM sessions WHERE expires < ?", (now,))
        conn.execute("INSERT INTO sessions (token_sha, user, csrf, expires) VALUES (?, ?, ?, ?)",
                     (_sha(token), name, secrets.token_urlsafe(24), now + SESSION_S))
    return token


def session_user(store: Store, token: str | None) -> User | None:
    """The user of a live session ``token``, or None."""
    if not token:
        return None
    rows = store.rows("SELECT s.user, s.csrf, u.role FROM sessions s JOIN users u ON u.name = s.user "
                      "WHERE s.token_sha = ? AND s.expires > ?", (_sha(token), time.time()))
    return User(rows[0]["user"], rows[0]["role"], rows[0]["csrf"]) if rows else None


def close_session(store: Store, token: str | None) -> None:
    if token:
        with store.write() as conn:
            conn.execute("DELETE FROM sessions WHERE token_sha = ?", (_sha(token),))


class LoginLimiter:
    """At most ``attempts`` failed logins per client address (and per user name) in ``window_s``;
    past that, logins from there wait (HTTP 429 with Retry-After)."""

    def __init__(self, attempts: int = 5, window_s: float = 300.0):
        self.attempts, self.window_s = attempts, window_s
        self._failures: dict[str, list[float]] = {}
        self._lock = threading.Lock()

    def _recent(self, key: str, now: float) -> list[float]:
        kept = [t for t in self._failures.get(key, []) if now - t < self.window_s]
        self._failures[key] = kept
        return kept

    def retry_after(self, *keys: str) -> float:
        """Seconds until a login from ``keys`` (address, name) may be tried again (0: now)."""
        now = time.monotonic()
        with self._lock:
            waits = [self.window_s - (now - recent[0]) for k in keys
                     if len(recent := self._recent(k, now)) >= self.attempts]
        return max(waits, default=0.0)

    def failed(self, *keys: str) -> None:
        now = time.monotonic()
        with self._lock:
            for k in keys:
                self._recent(k, now).append(now)
