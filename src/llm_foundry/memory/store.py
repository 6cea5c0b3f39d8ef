"""The memory store: the entries' text, their versions and an append-only edit log, in SQLite.

A memory folder ``MEM`` holds::

    memory.sqlite                 entries, the edit log, meta (WAL mode: also -wal/-shm while open)
    cache/<fingerprint>.safetensors   vectors the model side computed from the entries (a cache)

The text of each entry is the source of truth. Every edit (add, update, delete, rollback)
is one row of the ``edits`` log and gets the next *version*; the log is never rewritten,
so any earlier state can be restored (:meth:`MemoryStore.rollback` appends the inverse
edits). A delete is a tombstone: the row stays, flagged, and :meth:`MemoryStore.live`
leaves it out at once.

Durability: each edit is one transaction committed with ``synchronous=FULL`` in WAL mode,
so an edit is on disk when the call returns, and a process killed right after loses
nothing. Two processes may edit one store: SQLite's lock serialises them, a writer waits
up to a busy timeout and then gets one clear line.

The model side meets the store through two narrow calls: :meth:`MemoryStore.live` (the
live entries and the version they are at) and :meth:`MemoryStore.changed_since` (what
changed after a version), plus the vector caches keyed by a fingerprint. It never touches
SQLite; this module never touches a torch module.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from ..utils.errors import FoundryError
from ..utils.io import fsync_dir, atomic_write_bytes
from ..utils.sqlite import write_transaction

FORMAT_VERSION = 1  # of the SQLite schema below; a newer folder is refused, not misread
DB_NAME = "memory.sqlite"
CACHE_DIR = "cache"
MAX_TEXT_CHARS = 4096  # an entry is a fact or a short passage, not a document
BUSY_TIMEOUT_S = 5.0  # how long a writer waits for another process's edit before giving up
_FINGERPRINT = re.compile(r"[0-9a-f]{4,64}")  # short hex: also keeps a cache name inside cache/

_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE entries (
    id INTEGER PRIMARY KEY,               -- never reused: rows are never removed
    text TEXT NOT NULL,                   -- the current text (the last text, for a tombstone)
    created INTEGER NOT NULL,             -- version of the add
    updated INTEGER NOT NULL,             -- version of the last edit of this entry
    deleted INTEGER NOT NULL DEFAULT 0    -- 1: a tombstone, hidden from live()
);
CREATE INDEX entries_updated ON entries (updated);
CREATE TABLE edits (
    version INTEGER PRIMARY KEY,
    op TEXT NOT NULL CHECK (op IN ('add', 'update', 'delete', 'rollback')),
    entry_id INTEGER NOT NULL REFERENCES entries (id),
    old_text TEXT,                        -- NULL: the entry did not exist or was deleted
    new_text TEXT,                        -- NULL: the entry is deleted after this edit
    time REAL NOT NULL                    -- seconds since the epoch
);
CREATE INDEX edits_entry ON edits (entry_id, version);
"""


@dataclass(frozen=True)
class Entry:
    """One entry as it is now.

    Attributes:
        id: its id (ascending in the order entries were added; never reused).
        text: its current text (the last text before the delete, for a tombstone).
        created: the version that added it.
        updated: the version of its last edit.
        deleted: a tombstone: kept for the log, hidden from :meth:`MemoryStore.live`.
    """

    id: int
    text: str
    created: int
    updated: int
    deleted: bool


@dataclass(frozen=True)
class Edit:
    """One row of the edit log.

    Attributes:
        version: the version this edit made.
        op: ``add``, ``update``, ``delete`` or ``rollback``.
        entry_id: the entry it changed.
        old_text: the text before (None: the entry did not exist or was deleted).
        new_text: the text after (None: the entry is deleted).
        time: when, in seconds since the epoch.
    """

    version: int
    op: str
    entry_id: int
    old_text: str | None
    new_text: str | None
    time: float


def check_entry_text(text: Any) -> str:
    """The text an entry stores (stripped), or a one-line :class:`FoundryError` saying what is wrong.

    Refused: a non-string, empty or whitespace-only text, one past :data:`MAX_TEXT_CHARS`,
    a NUL character, a lone surrogate (not encodable as UTF-8).
    """
    if not isinstance(text, str):
        raise FoundryError(f"an entry's text must be a string, not {type(text).__name__}")
    text = text.strip()
    if not text:
        raise FoundryError("an entry's text is empty")
    if len(text) > MAX_TEXT_CHARS:
        raise FoundryError(f"an entry's text is {len(text)} characters, more than the {MAX_TEXT_CHARS} allowed")
    if "\x00" in text:
        raise FoundryError("an entry's text contains a NUL character")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise FoundryError("an entry's text contains a lone surrogate (not valid Unicode text)") from None
    return text


class MemoryStore:
    """A memory folder's entries and edit log. Open with :meth:`create` or :meth:`open`; a context manager.

    Every method is one transaction; an edit that raises leaves the store unchanged.
    """

    def __init__(self, path: Path, conn: sqlite3.Connection):
        # Use create() / open(); this only wraps a connection they checked.
        self.path = path
        self._conn = conn
        self._lock = threading.RLock()  # one connection, shared by the threads of a server

    # ------------------------------------------------------------------ opening
    @classmethod
    def create(cls, path: str | os.PathLike, *, backbone_fingerprint: str | None = None,
               meta: dict | None = None, busy_timeout_s: float = BUSY_TIMEOUT_S) -> MemoryStore:
        """Make a new, empty memory folder (or fill an existing empty folder) and open it.

        The database is built under a temporary name and linked into place, so a kill
        midway leaves no half store, and a store another process made meanwhile is never replaced.

        Args:
            path: the memory folder.
            backbone_fingerprint: the backbone the folder is built for (None: not yet known).
            meta: free key/values (JSON values) kept with the store.
            busy_timeout_s: how long an edit waits for another process's edit.

        Raises:
            FoundryError: the folder is already a memory folder, or is a file or a non-empty folder.
        """
        path = Path(path)
        db = path / DB_NAME
        if db.exists():
            raise FoundryError(f"already a memory folder: {path}")
        if path.exists() and (not path.is_dir() or any(not p.name.startswith(".") for p in path.iterdir())):
            raise FoundryError(f"cannot create a memory folder here: {path} exists and is not an empty folder")
        items = {"format": FORMAT_VERSION, "created": time.time(), **(meta or {})}
        if backbone_fingerprint is not None:
            items["backbone_fingerprint"] = backbone_fingerprint
        rows = [(k, _json(k, v)) for k, v in items.items()]  # (a bad value is refused before anything is made)
        path.mkdir(parents=True, exist_ok=True)
        tmp = path / f".{DB_NAME}.tmp-{os.getpid()}"
        tmp.unlink(missing_ok=True)
        try:
            conn = sqlite3.connect(tmp, isolation_level=None)
            try:
                conn.execute("PRAGMA journal_mode=WAL")  # kept in the file: every later open is WAL
                conn.executescript(f"BEGIN; {_SCHEMA} COMMIT;")
                conn.executemany("INSERT INTO meta VALUES (?, ?)", rows)
            finally:
                conn.close()  # the last close checkpoints the WAL into the file and removes it
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            try:
                # A link, not a rename: it fails where a store appeared meanwhile (another create), never replaces it.
                os.link(tmp, db)
            except FileExistsError:
                raise FoundryError(f"already a memory folder: {path}") from None
            except OSError:  # a file system without hard links: a rename, after one more look
                if db.exists():
                    raise FoundryError(f"already a memory folder: {path}") from None
                os.replace(tmp, db)
            fsync_dir(path)
        finally:
            for leftover in path.glob(f".{DB_NAME}.tmp-{os.getpid()}*"):
                leftover.unlink(missing_ok=True)
        return cls.open(path, busy_timeout_s=busy_timeout_s)

    @classmethod
    def open(cls, path: str | os.PathLike, *, busy_timeout_s: float = BUSY_TIMEOUT_S) -> MemoryStore:
        """Open an existing memory folder.

        Raises:
            FoundryError: missing, not a memory folder, a newer format, or a damaged database.
        """
        path = Path(path)
        db = path / DB_NAME
        if not path.exists():
            raise FoundryError(f"memory folder not found: {path}")
        if not path.is_dir() or not db.is_file():
            raise FoundryError(f"not a memory folder (no {DB_NAME}): {path}")
        try:
            # mode=rw: never create an empty database where the user pointed at the wrong place.
            conn = sqlite3.connect(f"{db.resolve().as_uri()}?mode=rw", uri=True, isolation_level=None,
                                   timeout=busy_timeout_s, check_same_thread=False)
        except sqlite3.Error as e:
            raise FoundryError(f"cannot open the memory store ({e}): {path}") from None
        store = cls(path, conn)
        try:
            with store._errors():
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=FULL")  # an edit is on disk when its commit returns
                conn.execute("PRAGMA foreign_keys=ON")
                # A 1M-entry add grows the WAL to the store's size; cut it back once it is checkpointed.
                conn.execute("PRAGMA journal_size_limit=67108864")
                tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
                if not {"meta", "entries", "edits"} <= tables:
                    raise FoundryError(f"not a memory store (no entries/edits tables in {DB_NAME}): {path}")
                fmt = store.meta.get("format")
            if not isinstance(fmt, int):
                raise FoundryError(f"not a memory store (no format in its meta table): {path}")
            if fmt > FORMAT_VERSION:
                raise FoundryError(f"memory folder has format {fmt}, newer than this llm-foundry reads "
                                   f"({FORMAT_VERSION}); upgrade llm-foundry: {path}")
        except BaseException:
            conn.close()
            raise
        return store

    def close(self) -> None:
        """Close the connection (edits are already durable; this only frees it)."""
        with self._lock:
            self._conn.close()

    def __enter__(self) -> MemoryStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ transactions
    @contextmanager
    def _errors(self) -> Iterator[None]:
        """Turn SQLite's failures into one line each."""
        try:
            yield
        except sqlite3.OperationalError as e:
            if "locked" in str(e) or "busy" in str(e):
                raise FoundryError(f"memory store is busy (another process is editing it; tried for "
                                   f"{self._busy_timeout():.0f} s): {self.path}") from None
            raise FoundryError(f"memory store failed ({e}): {self.path}") from None
        except sqlite3.DatabaseError as e:
            raise FoundryError(f"memory store is damaged ({e}): {self.path}") from None

    def _busy_timeout(self) -> float:
        try:
            return self._conn.execute("PRAGMA busy_timeout").fetchone()[0] / 1000
        except sqlite3.Error:
            return 0.0

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One edit: a write transaction taken at once (so two writers queue, not deadlock), all or nothing."""
        with self._lock, self._errors(), write_transaction(self._conn) as conn:
            yield conn

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        """A read transaction: every query in it sees one snapshot (an edit in between is not half seen)."""
        with self._lock, self._errors():
            conn = self._conn
            conn.execute("BEGIN")
            try:
                yield conn
            finally:
                if conn.in_transaction:
                    conn.execute("COMMIT")

    @staticmethod
    def _version(conn: sqlite3.Connection) -> int:
        return conn.execute("SELECT coalesce(max(version), 0) FROM edits").fetchone()[0]

    @staticmethod
    def _log(conn: sqlite3.Connection, rows: list[tuple]) -> None:
        """Append ``(version, op, entry_id, old_text, new_text)`` rows to the edit log."""
        now = time.time()
        conn.executemany("INSERT INTO edits VALUES (?, ?, ?, ?, ?, ?)", [(*r, now) for r in rows])

    def _entry(self, conn: sqlite3.Connection, entry_id: Any) -> Entry:
        if isinstance(entry_id, bool) or not isinstance(entry_id, int):
            raise FoundryError(f"an entry id is a whole number, not {entry_id!r}")
        row = conn.execute("SELECT id, text, created, updated, deleted FROM entries WHERE id = ?",
                           (entry_id,)).fetchone() if -2**63 <= entry_id < 2**63 else None
        if row is None:
            raise FoundryError(f"no entry {entry_id} in this memory ({self.path})")
        return Entry(row[0], row[1], row[2], row[3], bool(row[4]))

    # ------------------------------------------------------------------ meta
    @property
    def meta(self) -> dict[str, Any]:
        """Every key/value of the meta table (``format``, ``backbone_fingerprint``, and free ones)."""
        with self._lock, self._errors():
            rows = self._conn.execute("SELECT key, value FROM meta").fetchall()
        try:
            return {k: json.loads(v) for k, v in rows}
        except (TypeError, ValueError):
            raise FoundryError(f"memory store is damaged (a meta value is not JSON): {self.path}") from None

    @property
    def backbone_fingerprint(self) -> str | None:
        """The fingerprint of the backbone this folder is built for (None: not yet bound to one)."""
        return self.meta.get("backbone_fingerprint")

    def check_backbone(self, fingerprint: str) -> None:
        """Refuse, in one line, a backbone other than the one this folder was built for (None: not bound yet)."""
        bound = self.backbone_fingerprint
        if bound is not None and bound != fingerprint:
            raise FoundryError(f"memory folder {self.path} was built for another backbone (fingerprint {bound}, "
                               f"this one is {fingerprint})")

    def set_meta(self, **items: Any) -> None:
        """Set meta key/values (JSON values; ``format`` is not the caller's). Not an edit: no version."""
        if "format" in items:
            raise FoundryError("the store's format is not a meta value to set")
        with self._write() as conn:
            conn.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", [(k, _json(k, v)) for k, v in items.items()])

    # ------------------------------------------------------------------ edits
    def add(self, texts: list[str]) -> list[int]:
        """Add entries, all or none, one version each; returns their ids (ascending)."""
        if isinstance(texts, str) or not isinstance(texts, (list, tuple)):
            raise FoundryError("add takes a list of texts")
        if not texts:
            raise FoundryError("nothing to add: no texts")
        checked = []
        for i, text in enumerate(texts):
            try:
                checked.append(check_entry_text(text))
            except FoundryError as e:
                raise FoundryError(f"text {i + 1} of {len(texts)}: {e}" if len(texts) > 1 else str(e)) from None
        with self._write() as conn:
            v0 = self._version(conn)
            id0 = conn.execute("SELECT coalesce(max(id), 0) FROM entries").fetchone()[0]
            ids = list(range(id0 + 1, id0 + 1 + len(checked)))
            conn.executemany("INSERT INTO entries VALUES (?, ?, ?, ?, 0)",
                             [(i, t, v0 + k + 1, v0 + k + 1) for k, (i, t) in enumerate(zip(ids, checked))])
            self._log(conn, [(v0 + k + 1, "add", i, None, t) for k, (i, t) in enumerate(zip(ids, checked))])
        return ids

    def update(self, entry_id: int, text: str) -> int:
        """Replace a live entry's text; returns the new version."""
        text = check_entry_text(text)
        with self._write() as conn:
            entry = self._entry(conn, entry_id)
            if entry.deleted:
                raise FoundryError(f"entry {entry_id} is deleted; roll back to a version before the delete to restore it")
            version = self._version(conn) + 1
            conn.execute("UPDATE entries SET text = ?, updated = ? WHERE id = ?", (text, version, entry_id))
            self._log(conn, [(version, "update", entry_id, entry.text, text)])
        return version

    def delete(self, entry_id: int) -> int:
        """Tombstone a live entry (hidden from :meth:`live` at once, kept in the log); returns the new version."""
        with self._write() as conn:
            entry = self._entry(conn, entry_id)
            if entry.deleted:
                raise FoundryError(f"entry {entry_id} is already deleted")
            version = self._version(conn) + 1
            conn.execute("UPDATE entries SET deleted = 1, updated = ? WHERE id = ?", (version, entry_id))
            self._log(conn, [(version, "delete", entry_id, entry.text, None)])
        return version

    def rollback(self, version: int) -> int:
        """Restore every entry to its state at ``version`` by appending inverse edits (op ``rollback``).

        Entries added after ``version`` become tombstones; entries deleted after it come
        back; updated ones get their old text. Version 0 is the empty store. The log stays
        append-only, so a rollback can itself be rolled back.

        Returns:
            the new version (the current one if nothing differed).

        Raises:
            FoundryError: no such version (the store is unchanged).
        """
        if isinstance(version, bool) or not isinstance(version, int):
            raise FoundryError(f"a version is a whole number, not {version!r}")
        with self._write() as conn:
            current = self._version(conn)
            if not 0 <= version <= current:
                raise FoundryError(f"no version {version} in this memory (versions 0..{current}): {self.path}")
            # Each entry edited since: its text now and then (None: deleted, or not yet added). Its state
            # at `version` is the new text of its last edit up to then: one query, on the (entry, version) index.
            changed = conn.execute(
                "SELECT id, CASE WHEN deleted THEN NULL ELSE text END, (SELECT new_text FROM edits "
                "WHERE entry_id = entries.id AND version <= ? ORDER BY version DESC LIMIT 1) "
                "FROM entries WHERE updated > ?", (version, version)).fetchall()
            rows = []
            for entry_id, now, then in sorted(changed):
                if then != now:
                    rows.append((current + len(rows) + 1, "rollback", entry_id, now, then))
            conn.executemany("UPDATE entries SET deleted = 1, updated = ? WHERE id = ?",
                             [(v, i) for v, _, i, _, then in rows if then is None])
            conn.executemany("UPDATE entries SET text = ?, deleted = 0, updated = ? WHERE id = ?",
                             [(then, v, i) for v, _, i, _, then in rows if then is not None])
            self._log(conn, rows)
            return current + len(rows)

    # ------------------------------------------------------------------ reads
    @property
    def version(self) -> int:
        """The version of the last edit (0: none yet)."""
        with self._read() as conn:
            return self._version(conn)

    def get(self, entry_id: int) -> Entry:
        """One entry (a tombstone too, flagged ``deleted``). Unknown id: a one-line error."""
        with self._read() as conn:
            return self._entry(conn, entry_id)

    def list(self, grep: str | None = None, include_deleted: bool = False) -> list[Entry]:
        """Entries in id order; ``grep``: only those whose text contains it (ASCII letters in any case)."""
        sql, args = "SELECT id, text, created, updated, deleted FROM entries WHERE 1", []
        if not include_deleted:
            sql += " AND deleted = 0"
        if grep:
            escaped = grep.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            sql += " AND text LIKE ? ESCAPE '\\'"
            args.append(f"%{escaped}%")
        with self._read() as conn:
            rows = conn.execute(sql + " ORDER BY id", args).fetchall()
        return [Entry(r[0], r[1], r[2], r[3], bool(r[4])) for r in rows]

    def live(self) -> tuple[list[int], list[str], int]:
        """``(ids ascending, texts, version)`` of the live entries, from one snapshot: what the model side indexes."""
        with self._read() as conn:
            rows = conn.execute("SELECT id, text FROM entries WHERE deleted = 0 ORDER BY id").fetchall()
            version = self._version(conn)
        return [r[0] for r in rows], [r[1] for r in rows], version

    def changed_since(self, version: int) -> list[tuple[int, str | None]]:
        """``(id, text)`` of every entry added, updated or deleted after ``version`` (text None: now deleted).

        To refresh an index kept at version ``v``: read :attr:`version` first, then call
        this with ``v``; an edit landing in between is then seen twice, never missed.
        """
        with self._read() as conn:
            # No ORDER BY in SQL: sorting by id there would scan every entry instead of the few on the index.
            rows = conn.execute("SELECT id, CASE WHEN deleted THEN NULL ELSE text END FROM entries "
                                "WHERE updated > ?", (int(version),)).fetchall()
        return sorted(rows)

    def history(self, entry_id: int) -> list[Edit]:
        """Every edit of one entry, oldest first. Unknown id: a one-line error."""
        with self._read() as conn:
            self._entry(conn, entry_id)
            rows = conn.execute("SELECT version, op, entry_id, old_text, new_text, time FROM edits "
                                "WHERE entry_id = ? ORDER BY version", (entry_id,)).fetchall()
        return [Edit(*r) for r in rows]

    def __len__(self) -> int:
        """The number of live entries."""
        with self._read() as conn:
            return conn.execute("SELECT count(*) FROM entries WHERE deleted = 0").fetchone()[0]

    # ------------------------------------------------------------------ vector caches
    def cache_path(self, fingerprint: str) -> Path:
        """``MEM/cache/<fingerprint>.safetensors``: where the vectors for one backbone + module version live."""
        if not isinstance(fingerprint, str) or not _FINGERPRINT.fullmatch(fingerprint):
            raise FoundryError(f"a cache fingerprint is 4 to 64 lowercase hex digits, not {fingerprint!r}")
        return self.path / CACHE_DIR / f"{fingerprint}.safetensors"

    def save_cache(self, fingerprint: str, tensors: dict, version: int) -> Path:
        """Write the vectors computed at store ``version`` (atomically: a reader sees the old file or the new)."""
        from safetensors.torch import save

        data = save({k: t.contiguous() for k, t in tensors.items()},
                    metadata={"fingerprint": fingerprint, "version": str(int(version))})
        path = self.cache_path(fingerprint)
        atomic_write_bytes(path, data)
        return path

    def load_cache(self, fingerprint: str) -> tuple[dict, int] | None:
        """``(tensors, version)`` of a cache, or None if missing, damaged, or not of this store's history.

        None means "rebuild from the text": a cache is never the source of truth.
        """
        path = self.cache_path(fingerprint)
        if not path.is_file():
            return None
        try:
            from safetensors import safe_open

            with safe_open(path, framework="pt") as f:
                meta = f.metadata() or {}
                tensors = {k: f.get_tensor(k) for k in f.keys()}
            version = int(meta["version"])
        except Exception:  # any damage (torn, truncated, garbage, wrong metadata) means: rebuild
            return None
        if meta.get("fingerprint") != fingerprint or not 0 <= version <= self.version:
            return None  # another backbone's file, or a cache from a future this store never had
        return tensors, version


def _json(key: str, value: Any) -> str:
    try:
        return json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        raise FoundryError(f"meta value of {key!r} is not JSON: {value!r}") from None
