"""The web lab's own SQLite database (``$FOUNDRY_LAB_HOME/web/web.db``): what the engine's progress
database does not hold because it belongs to a classroom, not to one learner.

    users      name, role (learner, mentor), scrypt salt and hash
    sessions   the SHA-256 of each session token (the token itself is only in the browser's cookie)
    reviews    a learner's request for a mentor review: a snapshot of their files
    comments   a mentor's (or the learner's) comments on a review
    posts      per-module discussion threads (a post with ``parent`` NULL opens a thread)

Same discipline as ``lab/progress.py``: WAL, ``synchronous=FULL``, one transaction per write.
"""

from __future__ import annotations

import json
import sqlite3
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from ...utils.errors import FoundryError
from ...utils.sqlite import write_transaction

_SCHEMA = """
CREATE TABLE IF NOT EXISTS users (
    name TEXT PRIMARY KEY, role TEXT NOT NULL, salt BLOB NOT NULL, hash BLOB NOT NULL, created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS sessions (
    token_sha TEXT PRIMARY KEY, user TEXT NOT NULL, csrf TEXT NOT NULL, expires REAL NOT NULL);
CREATE TABLE IF NOT EXISTS reviews (
    id INTEGER PRIMARY KEY, user TEXT NOT NULL, module INTEGER NOT NULL, at REAL NOT NULL,
    message TEXT NOT NULL, files TEXT NOT NULL, status TEXT, open INTEGER NOT NULL DEFAULT 1);
CREATE TABLE IF NOT EXISTS comments (
    id INTEGER PRIMARY KEY, review INTEGER NOT NULL, user TEXT NOT NULL, at REAL NOT NULL, text TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS posts (
    id INTEGER PRIMARY KEY, module INTEGER NOT NULL, parent INTEGER, user TEXT NOT NULL, at REAL NOT NULL,
    title TEXT NOT NULL DEFAULT '', text TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS reviews_user ON reviews (user, module);
CREATE INDEX IF NOT EXISTS posts_module ON posts (module, parent);
"""


class Store:
    """The web database; one connection per request (SQLite connections are not shared between threads)."""

    def __init__(self, path: Path):
        self.path = path
        try:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            with self.connect() as conn:
                conn.executescript(f"BEGIN IMMEDIATE; {_SCHEMA} COMMIT;")
        except (OSError, sqlite3.DatabaseError) as e:
            raise FoundryError(f"the web lab's database {path} cannot be opened ({e}); move it aside to start "
                               "afresh") from None

    @contextmanager
    def connect(self) -> Iterator[sqlite3.Connection]:
        conn = sqlite3.connect(self.path, isolation_level=None, timeout=30)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            yield conn
        finally:
            conn.close()

    @contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction: all of it is on disk, or none of it."""
        with self.connect() as conn, write_transaction(conn):
            yield conn

    def rows(self, query: str, args: tuple = ()) -> list[dict[str, Any]]:
        with self.connect() as conn:
            cur = conn.execute(query, args)
            keys = [d[0] for d in cur.description]
            return [dict(zip(keys, r)) for r in cur.fetchall()]

    # ------------------------------------------------------------------ reviews and discussion
    def add_review(self, user: str, module: int, message: str, files: dict[str, str], status: str | None) -> int:
        with self.write() as conn:
            return conn.execute("INSERT INTO reviews (user, module, at, message, files, status) VALUES (?, ?, ?, ?, ?, ?)",
                                (user, module, time.time(), message, json.dumps(files, ensure_ascii=False),
                                 status)).lastrowid

    def reviews(self, user: str | None = None) -> list[dict[str, Any]]:
        """Every review request (a mentor's view), or ``user``'s own; newest first, files included."""
        where, args = ("WHERE user = ?", (user,)) if user is not None else ("", ())
        out = self.rows(f"SELECT * FROM reviews {where} ORDER BY id DESC", args)
        for r in out:
            r["files"] = json.loads(r["files"])
            r["comments"] = self.rows("SELECT user, at, text FROM comments WHERE review = ? ORDER BY id", (r["id"],))
        return out

    def add_comment(self, review: int, user: str, text: str) -> None:
        with self.write() as conn:
            conn.execute("INSERT INTO comments (review, user, at, text) VALUES (?, ?, ?, ?)",
                         (review, user, time.time(), text))

    def add_post(self, module: int, parent: int | None, user: str, title: str, text: str) -> int:
        with self.write() as conn:
            return conn.execute("INSERT INTO posts (module, parent, user, at, title, text) VALUES (?, ?, ?, ?, ?, ?)",
                                (module, parent, user, time.time(), title, text)).lastrowid

    def threads(self, module: int) -> list[dict[str, Any]]:
        """Module ``module``'s threads, newest first, each with its replies (oldest first)."""
        out = self.rows("SELECT id, user, at, title, text FROM posts WHERE module = ? AND parent IS NULL "
                        "ORDER BY id DESC", (module,))
        for t in out:
            t["replies"] = self.rows("SELECT id, user, at, text FROM posts WHERE parent = ? ORDER BY id", (t["id"],))
        return out
