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
from ..utils.io import _fsync_dir, atomic_write_json

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
        self._log = os.open(self.path / LOG_FILE, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
        self._idx = os.open(self.path / INDEX_FILE, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
        self._typ = os.open(self.path / TYPED_FILE, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
        self.recovered = {"dropped_index_entries": 0, "reindexed_records": 0, "truncated_bytes": 0,
                          "dropped_typed_entries": 0}
        self._recover()
        self._unsynced, self._last_sync = 0, time.monotonic()
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
            os.write(self._log, MAGIC)
            os.ftruncate(self._idx, 0)
            os.ftruncate(self._typ, 0)
            os.fsync(self._log)
            _fsync_dir(self.path)
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
            os.write(self._typ, b"".join(OFFSET.pack(i) for i in missing))
            typed += len(missing)
        if new_offsets:
            os.write(self._idx, b"".join(OFFSET.pack(o) for o in new_offsets))
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
        if offset < len(MAGIC) or offset + HEADER.size > log_size:
            return None
        length, crc, kind = HEADER.unpack(os.pread(self._log, HEADER.size, offset))
        end = offset + HEADER.size + length
        if length == 0 or length > MAX_RECORD or end > log_size:
            return None
        if zlib.crc32(os.pread(self._log, length, offset + HEADER.size), zlib.crc32(bytes([kind]))) != crc:
            return None
        return end

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
        offset = self._log_size
        kind = KIND_TYPED if typed else KIND_FILE
        crc = zlib.crc32(payload, zlib.crc32(bytes([kind])))
        os.write(self._log, HEADER.pack(len(payload), crc, kind) + payload)
        self._log_size += HEADER.size + len(payload)
        index = self.count
        if typed:
            os.write(self._typ, OFFSET.pack(index))
            self.typed_count += 1
        os.write(self._idx, OFFSET.pack(offset))
        self.count += 1
        self._unsynced += 1
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
            self.sync()
        return index

    def sync(self) -> None:
        """fsync the log, then the index: everything appended so far is on disk."""
        if self._unsynced:
            for fd in (self._log, self._typ, self._idx):
                os.fsync(fd)
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

    def _read(self, i: int) -> str:
        offset = self._offset(i)
        length, crc, kind = HEADER.unpack(os.pread(self._log, HEADER.size, offset))
        payload = os.pread(self._log, length, offset + HEADER.size)
        if len(payload) != length or zlib.crc32(payload, zlib.crc32(bytes([kind]))) != crc:
            raise FoundryError(f"replay store record {i} is damaged ({self.path / LOG_FILE})")
        return payload.decode("utf-8")

    def __getitem__(self, i: int) -> str:
        if i < 0:
            i += self.count
        if not 0 <= i < self.count:
            raise IndexError(f"record {i} of {self.count}")
        if i >= self._cache_first:
            return self._cache[self._cache_head + i - self._cache_first]
        return self._read(i)

    def iter_records(self, start: int = 0) -> Iterator[str]:
        """Records ``start..`` in order, read sequentially (for scans, not sampling)."""
        if start >= self.count:
            return
        end_count = self.count
        with open(self.path / LOG_FILE, "rb", buffering=1 << 20) as f:
            f.seek(self._offset(start))
            for _ in range(start, end_count):
                length, _crc, _kind = HEADER.unpack(f.read(HEADER.size))
                yield f.read(length).decode("utf-8")

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
        if self._log is None:
            return
        self.sync()
        for fd in (self._log, self._typ, self._idx):
            os.close(fd)
        self._log = self._typ = self._idx = None

    def __enter__(self) -> "ReplayStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
