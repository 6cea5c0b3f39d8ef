"""Module 4: the window loader, rebuilt.

Two loaders over the same token shards (1-D arrays of token ids, one per file):

* ``random_batch`` — the batch our trainer draws at step ``index``; a pure function of
  ``(seed, index)``, exactly as ``src/llm_foundry/data/loader.py: WindowLoader.batch``.
* ``EpochLoader`` — every window once per epoch, in an order fixed by the seed, split
  between ``world_size`` ranks so that the ranks together see what one process would.

A window of ``seq_len`` tokens needs ``seq_len + 1`` tokens: ``x`` is the window, ``y`` the
same tokens shifted left by one (the next token of each position).
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
import torch


def to_xy(rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Split ``(batch, seq_len + 1)`` token rows into inputs ``x`` and targets ``y``."""
    data = torch.from_numpy(np.asarray(rows, dtype=np.int64))
    return data[:, :-1], data[:, 1:]


def random_batch(shards: list[np.ndarray], batch_size: int, seq_len: int, seed: int,
                 index: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``index``-th random batch: ``x`` and ``y`` of shape ``(batch_size, seq_len)``.

    Args:
        shards: token arrays; only shards longer than ``seq_len`` hold a window.
        batch_size: windows per batch.
        seq_len: tokens per window.
        seed: with ``index``, the only source of randomness.
        index: the batch number (the training step).
    """
    # BEGIN SOLUTION random_batch
    # STUB: # 1. keep the shards longer than seq_len; a window may start at 0 .. len(shard) - seq_len - 1
    # STUB: # 2. rng = np.random.default_rng([seed, index]): one generator per batch, nothing carried over
    # STUB: # 3. shard ids: rng.choice(n_shards, size=batch_size, p=starts / starts.sum())
    # STUB: # 4. then for each id, in order: offset = rng.integers(0, len(shard) - seq_len)
    # STUB: raise NotImplementedError("random_batch")
    shards = [s for s in shards if len(s) > seq_len]
    starts = np.array([len(s) - seq_len for s in shards], dtype=np.float64)
    rng = np.random.default_rng([seed, index])
    ids = rng.choice(len(shards), size=batch_size, p=starts / starts.sum())
    rows = []
    for s in ids:
        offset = int(rng.integers(0, len(shards[s]) - seq_len))
        rows.append(shards[s][offset:offset + seq_len + 1])
    return to_xy(np.stack(rows))
    # END SOLUTION


def window_starts(shards: list[np.ndarray], seq_len: int) -> list[tuple[int, int]]:
    """Every non-overlapping window as ``(shard, offset)``: offsets ``0, seq_len, 2·seq_len, …``
    in each shard, shard by shard; a window needs ``seq_len + 1`` tokens inside its shard."""
    # BEGIN SOLUTION window_starts
    out = []
    for s, shard in enumerate(shards):
        out += [(s, off) for off in range(0, len(shard) - seq_len, seq_len)]
    return out
    # END SOLUTION


class EpochLoader:
    """Each epoch visits every window once, in a shuffled order fixed by ``(seed, epoch)``;
    a global batch of ``global_batch`` windows per step is split between ``world_size`` ranks.

    Args:
        shards: token arrays.
        seq_len: tokens per window.
        global_batch: windows per step over all ranks (a multiple of ``world_size``).
        seed: fixes every epoch's order.
        rank: this process's rank, ``0 .. world_size - 1``.
        world_size: number of processes sharing each step.
    """

    def __init__(self, shards: list[np.ndarray], seq_len: int, global_batch: int, seed: int = 0,
                 rank: int = 0, world_size: int = 1):
        if global_batch % world_size:
            raise ValueError(f"global_batch {global_batch} is not a multiple of world_size {world_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside 0..{world_size - 1}")
        self.shards, self.seq_len, self.seed = shards, seq_len, seed
        self.global_batch, self.rank, self.world_size = global_batch, rank, world_size
        self.local_batch = global_batch // world_size
        self.windows = window_starts(shards, seq_len)
        # The tail of each epoch's order (fewer than a global batch) is dropped; a new order
        # every epoch means a different tail, so no window is left out every time.
        self.steps_per_epoch = len(self.windows) // global_batch
        if self.steps_per_epoch == 0:
            raise ValueError(f"{len(self.windows)} windows are fewer than one global batch of {global_batch}")

    def order(self, epoch: int) -> np.ndarray:
        """The window indices of ``epoch`` in visiting order (a permutation of all windows)."""
        # BEGIN SOLUTION order
        return np.random.default_rng([self.seed, epoch]).permutation(len(self.windows))
        # END SOLUTION

    def indices(self, step: int) -> list[int]:
        """The window indices this rank trains on at ``step`` (any step: there is no state)."""
        # BEGIN SOLUTION indices
        epoch, within = divmod(step, self.steps_per_epoch)
        first = within * self.global_batch + self.rank * self.local_batch
        return [int(i) for i in self.order(epoch)[first:first + self.local_batch]]
        # END SOLUTION

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``x`` and ``y`` of shape ``(local_batch, seq_len)`` for this rank at ``step``."""
        t = self.seq_len
        rows = [self.shards[s][off:off + t + 1] for s, off in (self.windows[i] for i in self.indices(step))]
        return to_xy(np.stack(rows))

    def batches(self, start: int = 0) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
        """``(step, x, y)`` for ``start``, ``start + 1``, … without end: resuming is starting later."""
        # BEGIN SOLUTION batches
        step = start
        while True:
            x, y = self.batch(step)
            yield step, x, y
            step += 1
        # END SOLUTION
