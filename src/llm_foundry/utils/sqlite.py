"""The one SQLite write transaction of the project's stores (the Lab's progress, the web lab's
accounts, the memory store): each keeps its own connection and schema, and writes through this."""

from __future__ import annotations

import sqlite3
from contextlib import contextmanager
from typing import Iterator


@contextmanager
def write_transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """One write transaction on ``conn`` (opened with ``isolation_level=None``): all of it reaches
    the database, or none of it.

    ``BEGIN IMMEDIATE`` takes the write lock at once, so two writers queue (under the connection's
    busy timeout) instead of both reading and then deadlocking on the upgrade.
    """
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        if conn.in_transaction:  # (SQLite rolls some failures, a full disk say, back itself)
            conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
