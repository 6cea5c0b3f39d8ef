"""The train/validation split, decided from the documents' lengths alone.

Each document gets a seeded pseudo-random *priority*, a hash of ``(seed, its index)``
(SplitMix64), so a document's place in the random order needs no state and no list of
all documents. Documents are then visited in priority order and go to validation while
the held-out share is below ``val_fraction`` of the characters; one that would take it
past 1.5x the target is passed over. At least one document always stays in training; if
none fits, the smallest one is held out. A single document is cut contiguously instead:
its last ``val_fraction`` validates.

The walk is done in bounded memory: the lengths are read once into a histogram of
priority buckets (every bucket before the one that crosses the target validates whole,
as the walk would take all of it), and once more for the documents of the crossing
bucket and those after it, up to 65,536 documents, which are walked one by one. The
result, a bucket bound plus the indices chosen in the walk, lets later passes decide
each document's split from its index and length as they stream by.
"""

from __future__ import annotations

import itertools
import os
import tempfile
from array import array
from dataclasses import dataclass, field
from typing import Callable, Iterator, Sequence

import numpy as np

from ..utils.errors import FoundryError
from .sources import Document

_MASK = (1 << 64) - 1
_GAMMA, _MIX1, _MIX2 = 0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB
_BUCKET_BITS = 16  # 65,536 priority buckets: 1 MB of histogram
_BLOCK = 1 << 18  # document lengths read at a time (each costs ~50 bytes of temporaries)

Blocks = Callable[[], Iterator[tuple[int, np.ndarray]]]  # ``(index of the first document, lengths)``


def priorities(seed: int, start: int, n: int) -> np.ndarray:
    """The split priorities (uint64) of documents ``start .. start+n-1`` for ``seed``."""
    s = seed & _MASK  # SplitMix64 of the seed, so nearby seeds give unrelated orders
    s = ((s ^ (s >> 30)) * _MIX1) & _MASK
    s = ((s ^ (s >> 27)) * _MIX2) & _MASK
    s ^= s >> 31
    with np.errstate(over="ignore"):  # uint64 arithmetic wraps, as the hash intends
        z = np.uint64(s) + (np.arange(start, start + n, dtype=np.uint64) + np.uint64(1)) * np.uint64(_GAMMA)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(_MIX1)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(_MIX2)
        return z ^ (z >> np.uint64(31))


class LengthLog:
    """Document lengths in characters, appended in order, kept on disk (8 bytes a document)."""

    def __init__(self):
        self._file = tempfile.TemporaryFile()
        self._buf = array("q")
        self.count = 0

    def append(self, n: int) -> None:
        self._buf.append(n)
        self.count += 1
        if len(self._buf) >= 1 << 16:
            self._flush()

    def _flush(self) -> None:
        self._file.seek(0, os.SEEK_END)
        self._buf.tofile(self._file)
        self._buf = array("q")

    def truncate(self, count: int) -> None:
        """Forget the documents from index ``count`` on (a folder's file that turned out bad)."""
        self._flush()
        self._file.truncate(count * 8)
        self.count = count

    def blocks(self) -> Iterator[tuple[int, np.ndarray]]:
        """``(index of the first document, lengths)`` in blocks of bounded size."""
        self._flush()
        self._file.seek(0)
        start = 0
        while start < self.count:
            lengths = np.fromfile(self._file, dtype=np.int64, count=min(_BLOCK, self.count - start))
            yield start, lengths
            start += len(lengths)

    def close(self) -> None:
        self._file.close()


@dataclass
class SplitPlan:
    """Which documents validate (see the module docstring).

    Attributes:
        n_docs: documents in the corpus.
        seed: the seed of the priorities.
        cut: for a single document, how many of its characters train; else None.
        cap: documents longer than this never validate.
        buckets: documents not longer than ``cap`` whose priority bucket is below this validate.
        chosen: indices of further documents that validate (from the bucket that crosses the target).
        val_chars: characters held out.
    """

    n_docs: int
    seed: int = 0
    cut: int | None = None
    cap: float = -1.0
    buckets: int = 0
    chosen: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    val_chars: int = 0

    def decisions(self, blocks: Blocks) -> Iterator[bool]:
        """True (validation) or False (training) for each document, in order."""
        shift = np.uint64(64 - _BUCKET_BITS)
        for start, lengths in blocks():
            if not self.buckets and not len(self.chosen):
                yield from itertools.repeat(False, len(lengths))
                continue
            below = (priorities(self.seed, start, len(lengths)) >> shift) < np.uint64(self.buckets)
            val = (lengths <= self.cap) & below
            val |= np.isin(np.arange(start, start + len(lengths)), self.chosen)
            yield from val.tolist()


def check_val_fraction(val_fraction: float) -> None:
    """Raise a one-line :class:`FoundryError` unless ``val_fraction`` is in [0, 1)."""
    if not 0 <= val_fraction < 1:
        raise FoundryError(f"--val-fraction must be in [0, 1), got {val_fraction}")


def plan_split(blocks: Blocks, n_docs: int, total_chars: int, val_fraction: float, seed: int = 0) -> SplitPlan:
    """Decide the split of ``n_docs`` documents whose lengths ``blocks()`` yields (twice at most).

    Raises:
        FoundryError: ``val_fraction`` outside [0, 1).
    """
    check_val_fraction(val_fraction)
    if val_fraction == 0 or n_docs == 0:
        return SplitPlan(n_docs, seed)
    if n_docs == 1:
        cut = int(total_chars * (1 - val_fraction))
        return SplitPlan(1, seed, cut=cut, val_chars=total_chars - cut)
    target = val_fraction * total_chars
    cap = 1.5 * target
    shift = np.uint64(64 - _BUCKET_BITS)
    # Pass 1: the characters (and documents) that fit under the cap, per priority bucket.
    chars = np.zeros(1 << _BUCKET_BITS)
    counts = np.zeros(1 << _BUCKET_BITS, dtype=np.int64)
    smallest = (float("inf"), -1)
    for start, lengths in blocks():
        fits = lengths <= cap
        bucket = (priorities(seed, start, len(lengths)) >> shift).astype(np.intp)[fits]
        chars += np.bincount(bucket, weights=lengths[fits], minlength=len(chars))
        counts += np.bincount(bucket, minlength=len(counts))
        i = int(np.argmin(lengths))
        smallest = min(smallest, (int(lengths[i]), start + i))
    cum = np.cumsum(chars)
    # Every bucket before the first whose sum reaches the target validates whole (a greedy walk
    # in priority order would take all of it: it never gets near the cap there).
    k = int(np.searchsorted(cum, target))
    held, taken = (float(cum[k - 1]), int(counts[:k].sum())) if k else (0.0, 0)
    chosen: list[int] = []
    if k < len(cum):
        # Pass 2: walk the documents of the crossing bucket (and a few after it, up to 65,536
        # documents) in priority order, passing over any that would overshoot the cap.
        end = k + 1 + int(np.searchsorted(np.cumsum(counts[k + 1:]), (1 << 16) - counts[k], side="right"))
        pri, lens, idx = [], [], []
        for start, lengths in blocks():
            p = priorities(seed, start, len(lengths))
            b = p >> shift
            sel = (b >= np.uint64(k)) & (b < np.uint64(end)) & (lengths <= cap)
            pri.append(p[sel])
            lens.append(lengths[sel])
            idx.append(np.flatnonzero(sel) + start)
        pri, lens, idx = np.concatenate(pri), np.concatenate(lens), np.concatenate(idx)
        for j in np.argsort(pri, kind="stable"):
            if held >= target or taken == n_docs - 1:
                break
            if held + lens[j] <= cap:
                chosen.append(int(idx[j]))
                held += int(lens[j])
                taken += 1
    if taken == 0:  # nothing fits: hold out the smallest document
        chosen, held = [smallest[1]], smallest[0]
    return SplitPlan(n_docs, seed, cap=cap, buckets=k, chosen=np.array(sorted(chosen), dtype=np.int64),
                     val_chars=int(held))


def split_documents(docs: Sequence[Document], val_fraction: float, seed: int = 0) -> tuple[list[Document], list[Document]]:
    """The split :func:`prepare_dataset` makes of ``docs``, as ``(train, val)`` document lists.

    A single document is cut contiguously (its last part validates).
    """
    lengths = np.array([len(d.text) for d in docs], dtype=np.int64)

    def blocks():
        yield 0, lengths

    plan = plan_split(blocks, len(docs), int(lengths.sum()), val_fraction, seed)
    if plan.cut is not None:
        text = docs[0].text
        return [Document(text[:plan.cut], docs[0].source)], [Document(text[plan.cut:], docs[0].source)]
    is_val = list(plan.decisions(blocks))
    return [d for d, v in zip(docs, is_val) if not v], [d for d, v in zip(docs, is_val) if v]
