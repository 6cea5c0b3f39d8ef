"""A learner's progress through the Lab, in one SQLite database.

    with Progress.open() as p:              # $FOUNDRY_LAB_HOME/progress.db (default ~/.foundry/lab/)
        p.record_attempt(2, results)        # every test run: time, duration, status, error class
        p.open_hint(2, "merge")             # the next hint level of a task, logged
        p.submit_reflection(2, answers)     # passed + reflected: module 3 unlocks
        p.state(2)                          # what `foundry lab status` shows

Everything a learner does is an event (start, revisit, hint, reference, reflection, note, reset,
skip, unlock) or an attempt, appended and never rewritten; a module's state is read from the
events since its last reset, so a reset keeps the history and a skip is on record. Unlocking is
stored, not derived: module N+1 unlocks when N has passed AND its reflection is submitted (or N
was skipped), and stays unlocked if N is reset later. Module 1 is always unlocked.

Each write is one transaction (WAL, ``synchronous=FULL``): a process killed at any instant
leaves the database as it was before or after the write, never between.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from ..utils.errors import FoundryError
from ..utils.sqlite import write_transaction

DB_NAME = "progress.db"
# Gaps between a learner's actions on a module count as time spent on it up to this long; a
# longer gap is a break (the heuristic of most course platforms).
IDLE_S = 30 * 60
_SCHEMA = """
CREATE TABLE IF NOT EXISTS modules (
    number INTEGER PRIMARY KEY,
    workspace TEXT,
    unlocked_at REAL,
    reset_at REAL NOT NULL DEFAULT 0,
    time_s REAL NOT NULL DEFAULT 0,
    last_seen REAL,
    attempts INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS attempts (
    id INTEGER PRIMARY KEY,
    module INTEGER NOT NULL,
    at REAL NOT NULL,
    duration_s REAL NOT NULL,
    status TEXT NOT NULL,
    error_class TEXT,
    passed INTEGER NOT NULL,
    total INTEGER NOT NULL,
    results TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY,
    module INTEGER NOT NULL,
    at REAL NOT NULL,
    kind TEXT NOT NULL,
    detail TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS attempts_module ON attempts (module, at);
CREATE INDEX IF NOT EXISTS events_module ON events (module, kind, at);
"""


def lab_home() -> Path:
    """``$FOUNDRY_LAB_HOME``, default ``~/.foundry/lab``: the progress database lives here."""
    env = os.environ.get("FOUNDRY_LAB_HOME")
    return Path(env).expanduser() if env else Path.home() / ".foundry" / "lab"


@dataclass
class ModuleState:
    """A module's progress since its last reset (``attempts`` counts every attempt ever).

    Attributes:
        number: the module.
        unlocked: the learner may start it.
        passed: a test run passed.
        reflected: the reflection was submitted.
        skipped: the learner skipped it (recorded; it unlocks the next module).
        attempts: test runs, all time.
        last_status: the latest run's status (pass, fail, error), None before the first.
        hints: task id -> the highest hint level opened (1-based).
        reference_viewed: the reference was shown; ``reference_before_pass``: before any pass.
        time_s: time spent on the module (see :data:`IDLE_S`).
        workspace: the folder `start` wrote, or None.
    """

    number: int
    unlocked: bool = False
    passed: bool = False
    reflected: bool = False
    skipped: bool = False
    attempts: int = 0
    last_status: str | None = None
    hints: dict[str, int] = field(default_factory=dict)
    reference_viewed: bool = False
    reference_before_pass: bool = False
    time_s: float = 0.0
    workspace: str | None = None

    @property
    def done(self) -> bool:
        """Passed and reflected: what unlocks the next module."""
        return self.passed and self.reflected


class Progress:
    """The progress database. Open with :meth:`open`; use as a context manager."""

    def __init__(self, path: Path, conn: sqlite3.Connection):
        self.path = path
        self._conn = conn

    @classmethod
    def open(cls, home: str | os.PathLike | None = None) -> "Progress":
        """Open (creating when needed) the database in ``home`` (default :func:`lab_home`)."""
        home = Path(home) if home is not None else lab_home()
        try:
            home.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as e:
            raise FoundryError(f"cannot create the lab's folder {home}: {e.strerror}") from None
        path = home / DB_NAME
        try:
            conn = sqlite3.connect(path, isolation_level=None, timeout=30)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")  # an attempt is on disk when its commit returns
            conn.executescript(f"BEGIN IMMEDIATE; {_SCHEMA} COMMIT;")
        except sqlite3.DatabaseError as e:
            raise FoundryError(f"the lab's progress database {path} cannot be read ({e}); move it aside "
                               "to start afresh") from None
        return cls(path, conn)

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ transactions
    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction: all of it is on disk, or none of it."""
        with write_transaction(self._conn) as conn:
            yield conn

    @staticmethod
    def _module_row(conn: sqlite3.Connection, number: int) -> None:
        conn.execute("INSERT OR IGNORE INTO modules (number, unlocked_at) VALUES (?, ?)",
                     (number, 0.0 if number == 1 else None))

    @staticmethod
    def _event(conn: sqlite3.Connection, number: int, kind: str, detail: dict | None = None, at: float | None = None) -> None:
        conn.execute("INSERT INTO events (module, at, kind, detail) VALUES (?, ?, ?, ?)",
                     (number, time.time() if at is None else at, kind, json.dumps(detail or {}, ensure_ascii=False)))

    @staticmethod
    def _touch(conn: sqlite3.Connection, number: int, now: float) -> None:
        """Count the gap since the learner's last action on the module as time spent (breaks excluded)."""
        (last,) = conn.execute("SELECT last_seen FROM modules WHERE number = ?", (number,)).fetchone()
        gap = now - last if last is not None and 0 <= now - last <= IDLE_S else 0.0
        conn.execute("UPDATE modules SET time_s = time_s + ?, last_seen = ? WHERE number = ?", (gap, now, number))

    def _unlock_next(self, conn: sqlite3.Connection, number: int) -> bool:
        """Unlock module ``number + 1`` when ``number`` is done or skipped; True if it was locked before."""
        state = self._state(conn, number)
        if not (state.done or state.skipped):
            return False
        self._module_row(conn, number + 1)
        changed = conn.execute("UPDATE modules SET unlocked_at = ? WHERE number = ? AND unlocked_at IS NULL",
                               (time.time(), number + 1)).rowcount
        if changed:
            self._event(conn, number + 1, "unlock", {"after": number})
        return bool(changed)

    # ------------------------------------------------------------------ writes
    def touch(self, number: int) -> None:
        """Record that the learner is working on module ``number`` now (time spent)."""
        with self._write() as conn:
            self._module_row(conn, number)
            self._touch(conn, number, time.time())

    def start(self, number: int, workspace: str | os.PathLike) -> bool:
        """Record `start` of module ``number`` in ``workspace`` (remembered); True if it is a revisit
        (the module was started before)."""
        now = time.time()
        with self._write() as conn:
            self._module_row(conn, number)
            started = conn.execute("SELECT 1 FROM events WHERE module = ? AND kind = 'start'", (number,)).fetchone()
            self._event(conn, number, "revisit" if started else "start", {"workspace": str(workspace)}, now)
            conn.execute("UPDATE modules SET workspace = ? WHERE number = ?", (str(workspace), number))
            self._touch(conn, number, now)
        return bool(started)

    def record_attempt(self, number: int, results: dict) -> bool:
        """Record a test run (its ``results.json`` object); True if it unlocked the next module."""
        now = time.time()
        tests = results.get("tests", [])
        error_class = next((t.get("error_class") for t in tests if t.get("status") != "pass"), None)
        error_class = error_class or results.get("error_class")
        with self._write() as conn:
            self._module_row(conn, number)
            conn.execute("INSERT INTO attempts (module, at, duration_s, status, error_class, passed, total, results) "
                         "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                         (number, now, float(results.get("duration_s", 0.0)), results["status"], error_class,
                          sum(t.get("status") == "pass" for t in tests), len(tests),
                          json.dumps(results, ensure_ascii=False)))
            conn.execute("UPDATE modules SET attempts = attempts + 1 WHERE number = ?", (number,))
            self._touch(conn, number, now)
            return self._unlock_next(conn, number)

    def open_hint(self, number: int, task: str, levels: int) -> int | None:
        """Open the next hint level (1-based) of ``task``, which has ``levels``; None when all are open."""
        with self._write() as conn:
            self._module_row(conn, number)
            opened = self._state(conn, number).hints.get(task, 0)
            if opened >= levels:
                return None
            self._event(conn, number, "hint", {"task": task, "level": opened + 1})
            self._touch(conn, number, time.time())
            return opened + 1

    def view_reference(self, number: int) -> bool:
        """Record that the reference was shown; returns whether that was before the module passed."""
        with self._write() as conn:
            self._module_row(conn, number)
            before = not self._state(conn, number).passed
            self._event(conn, number, "reference", {"before_pass": before})
            self._touch(conn, number, time.time())
            return before

    def submit_reflection(self, number: int, answers: list[str]) -> bool:
        """Record the reflection's answers; True if that unlocked the next module."""
        with self._write() as conn:
            self._module_row(conn, number)
            self._event(conn, number, "reflection", {"answers": answers})
            self._touch(conn, number, time.time())
            return self._unlock_next(conn, number)

    def add_note(self, number: int, text: str) -> None:
        """Keep a learner's note on module ``number``."""
        with self._write() as conn:
            self._module_row(conn, number)
            self._event(conn, number, "note", {"text": text})

    def skip(self, number: int) -> bool:
        """Skip module ``number`` (recorded); True if that unlocked the next module."""
        with self._write() as conn:
            self._module_row(conn, number)
            self._event(conn, number, "skip")
            return self._unlock_next(conn, number)

    def reset(self, number: int) -> None:
        """Start module ``number`` over: passes, reflections, hints and skips before now no longer count
        (they stay in the history); the modules it unlocked stay unlocked."""
        now = time.time()
        with self._write() as conn:
            self._module_row(conn, number)
            self._event(conn, number, "reset", at=now)
            conn.execute("UPDATE modules SET reset_at = ?, time_s = 0 WHERE number = ?", (now, number))

    # ------------------------------------------------------------------ reads
    def _state(self, conn: sqlite3.Connection, number: int) -> ModuleState:
        row = conn.execute("SELECT workspace, unlocked_at, reset_at, time_s, attempts FROM modules WHERE number = ?",
                           (number,)).fetchone()
        state = ModuleState(number, unlocked=number == 1)
        if row is None:
            return state
        workspace, unlocked_at, reset_at, state.time_s, state.attempts = row
        state.workspace = workspace
        state.unlocked = state.unlocked or unlocked_at is not None
        statuses = [s for (s,) in conn.execute("SELECT status FROM attempts WHERE module = ? AND at >= ? ORDER BY id",
                                               (number, reset_at))]
        state.passed = "pass" in statuses
        state.last_status = statuses[-1] if statuses else None
        for kind, detail in conn.execute("SELECT kind, detail FROM events WHERE module = ? AND at >= ? ORDER BY id",
                                         (number, reset_at)):
            d = json.loads(detail)
            if kind == "hint":
                state.hints[d["task"]] = max(state.hints.get(d["task"], 0), d["level"])
            elif kind == "reference":
                state.reference_viewed = True
                state.reference_before_pass |= bool(d.get("before_pass"))
            elif kind == "reflection":
                state.reflected = True
            elif kind == "skip":
                state.skipped = True
        return state

    def state(self, number: int) -> ModuleState:
        """Module ``number``'s progress."""
        self._conn.execute("BEGIN")
        try:
            return self._state(self._conn, number)
        finally:
            self._conn.execute("COMMIT")

    def workspace(self, number: int) -> Path | None:
        """The workspace `start` wrote for module ``number`` (None before `start`)."""
        ws = self.state(number).workspace
        return Path(ws) if ws else None

    def attempts(self, number: int) -> list[dict[str, Any]]:
        """Every attempt at module ``number``, oldest first (``results`` is the results.json object)."""
        rows = self._conn.execute("SELECT at, duration_s, status, error_class, passed, total, results FROM attempts "
                                  "WHERE module = ? ORDER BY id", (number,)).fetchall()
        keys = ("at", "duration_s", "status", "error_class", "passed", "total", "results")
        return [{**dict(zip(keys, r)), "results": json.loads(r[-1])} for r in rows]

    def events(self, number: int, kind: str | None = None) -> list[dict[str, Any]]:
        """Module ``number``'s events (all kinds, or ``kind``), oldest first."""
        query = "SELECT at, kind, detail FROM events WHERE module = ?" + (" AND kind = ?" if kind else "") + " ORDER BY id"
        rows = self._conn.execute(query, (number, kind) if kind else (number,)).fetchall()
        return [{"at": at, "kind": k, **json.loads(d)} for at, k, d in rows]
