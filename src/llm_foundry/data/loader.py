"""Random training windows that are deterministic for a seed and resumable.

Batch ``k`` is drawn from a random generator seeded by ``(seed, k)`` alone, so the
loader has no hidden state: resuming at step ``k`` yields exactly the batches an
uninterrupted run would have seen, and nothing about it needs saving but ``k``.
"""

from __future__ import annotations

import numpy as np
import torch

from ..utils.errors import FoundryError
from .shards import TokenDataset


class WindowLoader:
    """``(x, y)`` batches of ``seq_len`` tokens from one split, ``y`` shifted by one.

    Args:
        dataset: a prepared :class:`TokenDataset`.
        split: ``train`` or ``val``.
        batch_size: windows per batch.
        seq_len: tokens per window.
        seed: seeds every batch (together with the batch index).
        device: where the batch tensors go.
    """

    def __init__(self, dataset: TokenDataset, split: str, batch_size: int, seq_len: int, seed: int = 0,
                 device: torch.device | str = "cpu"):
        self.shards = [s for s in dataset.split(split) if len(s) > seq_len]
        if not self.shards:
            n = sum(len(s) for s in dataset.split(split))
            raise FoundryError(f"'{split}' split has {n} tokens, fewer than one window of {seq_len + 1}; "
                               f"add text or lower seq_len")
        self.batch_size, self.seq_len, self.seed = batch_size, seq_len, seed
        self.device = torch.device(device)
        # Each shard is chosen in proportion to how many windows start in it.
        starts = np.array([len(s) - seq_len for s in self.shards], dtype=np.float64)
        self.shard_probs = starts / starts.sum()

    def _gather(self, picks: list[tuple[int, int]]) -> tuple[torch.Tensor, torch.Tensor]:
        t = self.seq_len
        buf = np.empty((len(picks), t + 1), dtype=np.int64)
        for row, (s, off) in enumerate(picks):
            buf[row] = self.shards[s][off:off + t + 1]
        data = torch.from_numpy(buf)
        if self.device.type == "cuda":
            data = data.pin_memory().to(self.device, non_blocking=True)
        else:
            data = data.to(self.device)
        return data[:, :-1], data[:, 1:]

    def batch(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The ``index``-th batch: same seed and index, same batch, every time."""
        rng = np.random.default_rng([self.seed, index])
        shard_ids = rng.choice(len(self.shards), size=self.batch_size, p=self.shard_probs)
        picks = [(int(s), int(rng.integers(0, len(self.shards[s]) - self.seq_len))) for s in shard_ids]
        return self._gather(picks)

    def fixed_batches(self, n_batches: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """``n_batches`` evenly spaced, non-random batches covering the split (for eval)."""
        windows = [(s, off) for s, shard in enumerate(self.shards) for off in range(0, len(shard) - self.seq_len, self.seq_len)]
        want = min(len(windows), n_batches * self.batch_size)
        step = len(windows) / want
        chosen = [windows[int(i * step)] for i in range(want)]
        return [self._gather(chosen[i:i + self.batch_size]) for i in range(0, len(chosen), self.batch_size)]
