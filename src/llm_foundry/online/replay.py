"""The durable replay store: every input the online learner is given, kept for good.

A store is a folder of three files::

    store.json   {"format": "llm_foundry.replay", "version": 1, "id": "<uuid>"}
    data.log     8-byte magic, then records:
                 <u32 length><u32 crc32(kind + payload)><u8 kind><UTF-8 payload>
    index.bin    one little-endian u64 per record: where that record starts in data.log
    typed.bin    one u64 per *typed* record (kind 1): its record number

All three are append-only. Record ``i`` is found in O(1): its offset is the 8 bytes
at ``8 * i`` of the index, and its header says how long it is; the ``j``-th typed
record is found the same way through ``typed.bin``. Nothing of the history is held
in memory except the most recent ~500 KB (``cache_bytes``), which is what most
sampling touches; so the store's memory stays bounded however long the learner
runs, and its capacity is the disk's.

Kinds. A line a person typed is kind 1 (``KIND_TYPED``); a line of a loaded file
is kind 0. Sampling can give the typed lines a fixed share of the history draws
(``typed_ratio``): five taught lines must not drown in a 2,500-line book.

Crash safety. A record is written to the log first, then to ``typed.bin``, then
to the index. On open the store checks the tail: index entries that point past
the log or at a record whose length or checksum does not hold are dropped;
complete records after the last indexed one (a kill between the writes) are
indexed again, typed ones in ``typed.bin`` too; typed entries beyond the records
are dropped; and a torn last record (a kill, or power loss, in the middle of a
write) is cut off. Earlier records are never touched: nothing rewrites them.

Damage. Every record's checksum is checked once when the store opens (one sequential
read, about a second per GB). A record that fails it -- bit rot in the middle of the
log -- is *skipped*, not fatal: it reads as an empty input (which trains nothing), and
``damaged`` counts it. :func:`repair_store` (``foundry online --repair``) rewrites the
store without the damaged records, as one atomic folder swap.

Full writes. ``os.write`` may write less than it was given (a full disk, a signal);
:func:`_write_all` loops until every byte is written. If the disk refuses the rest,
:meth:`ReplayStore.append` cuts the three files back to where the record began and
raises a one-line error: a record is stored whole or not at all, and an append that
returned was written completely.

Durability policy (``fsync``). ``append(text, durable=True)`` writes and fsyncs
before it returns: the REPL does that for every typed line *before* it trains on
it, so a line whose prompt has come back survives ``kill -9`` and power loss. An
fsync costs far less than the time between typed lines. Bulk loads
(``/load_txt``) append with ``durable=False`` -- the bytes reach the operating
system at once (so they survive the process being killed) -- and group the
fsyncs: ``maybe_sync`` syncs once a second or every ``sync_every`` records, and
the loader calls ``sync`` before its prompt returns. That keeps bulk appends at
hundreds of thousands of lines per second instead of the few hundred a
per-line fsync allows, with the same guarantee at the prompt.
"""

from __future__ import annotations

import json
import os
import random
import struct
import time
import uuid
import zlib
from pathlib import Path
from typing import Iterator

from ..utils.errors import FoundryError
from ..utils.io import fsync_dir, atomic_write_json, replace_folder

MAGIC = b"FNDRLOG1"
HEADER = struct.Struct("<IIB")  # payload length, crc32 of kind byte + payload, kind
OFFSET = struct.Struct("<Q")
MAX_RECORD = 64 * 1024 * 1024  # a length beyond this is garbage, not a record
STORE_FILE, LOG_FILE, INDEX_FILE, TYPED_FILE = "store.json", "data.log", "index.bin", "typed.bin"
KIND_FILE, KIND_TYPED = 0, 1


class ReplayStore:
    """Append-only text records with O(1) access, crash recovery and a recent cache.

    Args:
        path: the store folder (created if missing).
        cache_bytes: how many bytes of the newest records to keep in memory.
        sync_every: ``maybe_sync`` fsyncs after this many unsynced records ...
        sync_interval: ... or after this many seconds, whichever comes first.
    """

    def __init__(self, path: str | os.PathLike, cache_bytes: int = 500_000, sync_every: int = 4096,
                 sync_interval: float = 1.0):
        self.path = Path(path)
        self.cache_bytes = cache_bytes
        self.sync_every, self.sync_interval = sync_every, sync_interval
        self.path.mkdir(parents=True, exist_ok=True)
        meta_path = self.path / STORE_FILE
        if meta_path.is_file():
            try:
                meta = json.loads(meta_path.read_text(encoding="utf-8"))
                self.id = str(meta["id"])
            except (OSError, ValueError, KeyError, TypeError):
                raise FoundryError(f"replay store metadata is damaged: {meta_path}") from None
        else:
            self.id = uuid.uuid4().hex
            atomic_write_json(meta_path, {"format": "llm_foundry.replay", "version": 1, "id": self.id})
        self._log = self._idx = self._typ = None
        self.recovered = {"dropped_index_entries": 0, "reindexed_records": 0, "truncated_bytes": 0,
                          "dropped_typed_entries": 0}
        self._damaged: set[int] = set()  # record numbers whose checksum failed (read as "")
        try:
            flags = os.O_RDWR | os.O_CREAT | os.O_APPEND
            self._log = os.open(self.path / LOG_FILE, flags, 0o644)
            self._idx = os.open(self.path / INDEX_FILE, flags, 0o644)
            self._typ = os.open(self.path / TYPED_FILE, flags, 0o644)
            self._recover()
            self._damaged = {i for i, payload in self._scan(0) if payload is None}
        except BaseException:
            self._close_fds()  # a store that does not open leaves no descriptor behind
            raise
        self._unsynced, self._last_sync = 0, time.monotonic()
        self._broken: str | None = None  # set when a failed append could not be rolled back
        # The newest records, oldest first: a list with a moving head (O(1) indexing,
        # amortised O(1) eviction), holding about ``cache_bytes`` of text.
        self._cache: list[str] = []
        self._cache_head = 0
        self._cache_first = self.count
        self._cache_size = 0
        self._fill_cache()

    # ----------------------------------------------------------------- recovery
    def _recover(self) -> None:
        log_size = os.fstat(self._log).st_size
        if log_size < len(MAGIC):
            if log_size and MAGIC[:log_size] != os.pread(self._log, log_size, 0):
                raise FoundryError(f"{self.path / LOG_FILE} is not a replay log")
            # Empty, or killed while writing the magic: start the log afresh.
            os.ftruncate(self._log, 0)
            _write_all(self._log, MAGIC)
            os.ftruncate(self._idx, 0)
            os.ftruncate(self._typ, 0)
            os.fsync(self._log)
            fsync_dir(self.path)
            log_size = len(MAGIC)
        elif os.pread(self._log, len(MAGIC), 0) != MAGIC:
            raise FoundryError(f"{self.path / LOG_FILE} is not a replay log")
        idx_size = os.fstat(self._idx).st_size
        count = idx_size // OFFSET.size
        if idx_size % OFFSET.size:  # a torn index entry
            os.ftruncate(self._idx, count * OFFSET.size)
        # Walk back from the last index entry to one that points at a whole record.
        end = len(MAGIC)
        while count:
            offset = self._offset(count - 1)
            rec_end = self._check_record(offset, log_size)
            if rec_end is not None:
                end = rec_end
                break
            count -= 1
            self.recovered["dropped_index_entries"] += 1
        if count * OFFSET.size != os.fstat(self._idx).st_size:
            os.ftruncate(self._idx, count * OFFSET.size)
        # Whole records after the last indexed one were written but never indexed.
        new_offsets, new_typed = [], []
        while end < log_size:
            rec_end = self._check_record(end, log_size)
            if rec_end is None:
                break
            if os.pread(self._log, HEADER.size, end)[-1] == KIND_TYPED:
                new_typed.append(count + len(new_offsets))
            new_offsets.append(end)
            end = rec_end
        if end < log_size:  # a torn (or garbage) tail: cut it off
            os.ftruncate(self._log, end)
            self.recovered["truncated_bytes"] = log_size - end
        # typed.bin: drop entries past the records, then add the re-indexed typed ones it lacks.
        typed = os.fstat(self._typ).st_size // OFFSET.size
        last = -1
        while typed:
            last = OFFSET.unpack(os.pread(self._typ, OFFSET.size, (typed - 1) * OFFSET.size))[0]
            if last < count + len(new_offsets):
                break
            typed -= 1
            last = -1
            self.recovered["dropped_typed_entries"] += 1
        if typed * OFFSET.size != os.fstat(self._typ).st_size:
            os.ftruncate(self._typ, typed * OFFSET.size)
        missing = [i for i in new_typed if i > last]
        if missing:
            _write_all(self._typ, b"".join(OFFSET.pack(i) for i in missing))
            typed += len(missing)
        if new_offsets:
            _write_all(self._idx, b"".join(OFFSET.pack(o) for o in new_offsets))
            count += len(new_offsets)
            self.recovered["reindexed_records"] = len(new_offsets)
        if any(self.recovered.values()):
            for fd in (self._log, self._typ, self._idx):
                os.fsync(fd)
        self.count = count
        self.typed_count = typed
        self._log_size = end

    def _check_record(self, offset: int, log_size: int) -> int | None:
        """End offset of the whole, checksummed record at ``offset``, or None."""
        payload = _read_record(lambda n, at: os.pread(self._log, n, at), offset, log_size)
        return None if payload is None else offset + HEADER.size + len(payload)

    def _offset(self, i: int) -> int:
        return OFFSET.unpack(os.pread(self._idx, OFFSET.size, i * OFFSET.size))[0]

    def _fill_cache(self) -> None:
        i = self.count - 1
        texts = []
        size = 0
        while i >= 0 and size < self.cache_bytes:
            text = self._read(i)
            size += len(text.encode("utf-8"))
            texts.append(text)
            i -= 1
        self._cache = texts[::-1]
        self._cache_first = self.count - len(self._cache)
        self._cache_size = size

    # ------------------------------------------------------------------ writing
    def append(self, text: str, durable: bool = False, typed: bool = False) -> int:
        """Store ``text`` as the next record; returns its index.

        ``durable=True`` fsyncs before returning (one typed line); otherwise the
        record is in the operating system's hands (safe from a killed process) and
        reaches the disk at the next ``sync``/``maybe_sync``. ``typed`` marks a line a
        person typed (see ``typed_ratio`` in :meth:`sample_starts`).
        """
        if not text:
            raise FoundryError("the replay store does not keep empty inputs")
        payload = text.encode("utf-8")
        if len(payload) > MAX_RECORD:
            raise FoundryError(f"an input of {len(payload)} bytes is too long for one record (max {MAX_RECORD})")
        if self._broken:
            raise FoundryError(self._broken)
        offset, index = self._log_size, self.count
        kind = KIND_TYPED if typed else KIND_FILE
        crc = zlib.crc32(payload, zlib.crc32(bytes([kind])))
        try:
            _write_all(self._log, HEADER.pack(len(payload), crc, kind) + payload)
            if typed:
                _write_all(self._typ, OFFSET.pack(index))
            _write_all(self._idx, OFFSET.pack(offset))
            if durable:
                self._fsync_all()
        except OSError as e:
            self._roll_back(offset)
            raise FoundryError(f"could not store the input in {self.path}: {e.strerror or e} "
                               "(nothing of it was kept)") from None
        self._log_size += HEADER.size + len(payload)
        self.typed_count += typed
        self.count += 1
        self._unsynced = 0 if durable else self._unsynced + 1
        self._cache.append(text)
        self._cache_size += len(payload)
        while self._cache_size > self.cache_bytes and len(self._cache) - self._cache_head > 1:
            self._cache_size -= len(self._cache[self._cache_head].encode("utf-8"))
            self._cache[self._cache_head] = ""
            self._cache_head += 1
            self._cache_first += 1
        if self._cache_head > 1024 and self._cache_head * 2 > len(self._cache):
            del self._cache[:self._cache_head]
            self._cache_head = 0
        if durable:
            self._last_sync = time.monotonic()
        return index

    def _roll_back(self, offset: int) -> None:
        """Cut the three files back to the state before the record at ``offset`` (a failed append)."""
        try:
            os.ftruncate(self._log, offset)
            os.ftruncate(self._typ, self.typed_count * OFFSET.size)
            os.ftruncate(self._idx, self.count * OFFSET.size)
        except OSError as e:
            # The files may now hold part of a record: no more appends in this session
            # (the next open cuts the torn tail off, as after a kill).
            self._broken = f"the replay store {self.path} could not be repaired after a failed write " \
                           f"({e.strerror or e}); restart to recover it"

    def _fsync_all(self) -> None:
        for fd in (self._log, self._typ, self._idx):
            os.fsync(fd)

    def sync(self) -> None:
        """fsync the log, then the index: everything appended so far is on disk."""
        if self._unsynced:
            try:
                self._fsync_all()
            except OSError as e:
                raise FoundryError(f"could not sync the replay store {self.path}: {e.strerror or e}") from None
            self._unsynced = 0
        self._last_sync = time.monotonic()

    def maybe_sync(self) -> None:
        """Group commit for bulk appends: sync if enough records or time have piled up."""
        if self._unsynced and (self._unsynced >= self.sync_every
                               or time.monotonic() - self._last_sync >= self.sync_interval):
            self.sync()

    # ------------------------------------------------------------------ reading
    def __len__(self) -> int:
        return self.count

    @property
    def damaged(self) -> int:
        """How many records failed their checksum (skipped: they read as empty inputs)."""
        return len(self._damaged)

    def _read(self, i: int) -> str:
        if i in self._damaged:
            return ""
        offset = self._offset(i)
        text = _payload_text(_read_record(lambda n, at: os.pread(self._log, n, at), offset, self._log_size))
        if text is None:  # damaged since the store was opened
            self._damaged.add(i)
            return ""
        return text

    def __getitem__(self, i: int) -> str:
        if i < 0:
            i += self.count
        if not 0 <= i < self.count:
            raise IndexError(f"record {i} of {self.count}")
        if i >= self._cache_first:
            return self._cache[self._cache_head + i - self._cache_first]
        return self._read(i)

    def iter_records(self, start: int = 0) -> Iterator[str]:
        """Records ``start..`` in order, read sequentially (for scans, not sampling); damaged ones as ""."""
        for i, text in self._scan(start):
            if text is None:
                self._damaged.add(i)
            yield text or ""

    def _scan(self, start: int) -> Iterator[tuple[int, str | None]]:
        """``(i, text)`` of records ``start..`` read sequentially through the index; text None: damaged."""
        end_count, log_size = self.count, self._log_size
        if start >= end_count:
            return
        with open(self.path / LOG_FILE, "rb", buffering=1 << 20) as f, \
                open(self.path / INDEX_FILE, "rb", buffering=1 << 20) as ix:
            ix.seek(start * OFFSET.size)

            def read_at(n: int, at: int) -> bytes:
                if f.tell() != at:
                    f.seek(at)
                return f.read(n)

            for i in range(start, end_count):
                offset = OFFSET.unpack(ix.read(OFFSET.size))[0]
                yield i, _payload_text(_read_record(read_at, offset, log_size))

    def typed_record(self, j: int) -> int:
        """Record number of the ``j``-th typed record."""
        return OFFSET.unpack(os.pread(self._typ, OFFSET.size, j * OFFSET.size))[0]

    def sample_starts(self, k: int, rng: random.Random, recent_ratio: float = 0.2, recent_records: int = 16,
                      typed_ratio: float = 0.0) -> list[int]:
        """``k`` record indices. Each is, with probability ``recent_ratio``, one of the
        newest ``recent_records``; otherwise one from the whole history: with probability
        ``typed_ratio`` a uniformly drawn typed record (when there are any), else a
        uniformly drawn record of any kind."""
        if self.count == 0:
            return []
        recent_lo = max(0, self.count - recent_records)
        out = []
        for _ in range(k):
            if rng.random() < recent_ratio:
                out.append(rng.randrange(recent_lo, self.count))
            elif self.typed_count and rng.random() < typed_ratio:
                out.append(self.typed_record(rng.randrange(self.typed_count)))
            else:
                out.append(rng.randrange(self.count))
        return out

    # -------------------------------------------------------------------- stats
    @property
    def payload_bytes(self) -> int:
        """UTF-8 bytes of all stored inputs."""
        return self._log_size - len(MAGIC) - HEADER.size * self.count

    @property
    def disk_bytes(self) -> int:
        return self._log_size + (self.count + self.typed_count) * OFFSET.size

    @property
    def cached_bytes(self) -> int:
        return self._cache_size

    def close(self) -> None:
        """Sync and close the files (idempotent)."""
        if self._log is None:
            return
        try:
            self.sync()
        finally:
            self._close_fds()

    def _close_fds(self) -> None:
        for name in ("_log", "_typ", "_idx"):
            fd = getattr(self, name, None)
            if fd is not None:
                setattr(self, name, None)
                os.close(fd)

    def __enter__(self) -> "ReplayStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# ---------------------------------------------------------------------- helpers
def _write_all(fd: int, data: bytes) -> None:
    """Write every byte of ``data``: ``os.write`` may write fewer (a full disk, a signal).

    Raises:
        OSError: the disk took no more (ENOSPC when a write makes no progress).
    """
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        if n <= 0:
            raise OSError(28, os.strerror(28))  # ENOSPC: a write that makes no progress
        view = view[n:]


def _read_record(read_at, offset: int, log_size: int) -> bytes | None:
    """The payload of the checksummed record at ``offset``, or None where it does not hold.

    ``read_at(n, offset)`` reads ``n`` bytes at ``offset``."""
    if offset < len(MAGIC) or offset + HEADER.size > log_size:
        return None
    header = read_at(HEADER.size, offset)
    if len(header) != HEADER.size:
        return None
    length, crc, kind = HEADER.unpack(header)
    if length == 0 or length > MAX_RECORD or offset + HEADER.size + length > log_size:
        return None
    payload = read_at(length, offset + HEADER.size)
    if len(payload) != length or zlib.crc32(payload, zlib.crc32(bytes([kind]))) != crc:
        return None
    return payload


def _payload_text(payload: bytes | None) -> str | None:
    if payload is None:
        return None
    try:
        return payload.decode("utf-8")
    except UnicodeDecodeError:
        return None


def repair_store(path: str | os.PathLike) -> dict:
    """Rewrite the store at ``path`` without its damaged records, as one atomic folder swap.

    The new store gets a new id, so a learner's save takes every record's characters
    into its vocabulary again (records after a dropped one have moved). Holding the
    state folder's lock is the caller's business.

    Returns:
        ``{"kept": N, "dropped": N, "typed": N}``.
    """
    path = Path(path)
    if not (path / LOG_FILE).is_file():
        raise FoundryError(f"no replay store in {path}")
    with ReplayStore(path, cache_bytes=0) as old:
        if not old.damaged:
            return {"kept": len(old), "dropped": 0, "typed": old.typed_count}
        kinds = {old.typed_record(j) for j in range(old.typed_count)}  # the typed records' numbers
        counts = {"kept": 0, "dropped": old.damaged, "typed": 0}

        def fill(folder: Path) -> None:
            with ReplayStore(folder, cache_bytes=0) as new:
                for i, text in old._scan(0):
                    if text is not None:
                        new.append(text, typed=i in kinds)
                        counts["kept"] += 1
                        counts["typed"] += i in kinds
                new.sync()

        replace_folder(path, fill)
    return counts

