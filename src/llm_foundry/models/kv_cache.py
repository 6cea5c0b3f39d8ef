"""Key/value cache for incremental decoding.

Keys and values of every layer are written into preallocated buffers, so a decode
step appends in place instead of concatenating (which would copy the whole history
every token). Each layer has its own buffers rather than slices of one big tensor:
a compiled graph can then write into them in place, where a write into a view of a
shared buffer makes it copy the whole buffer. ``pos`` counts the tokens already cached.
"""

from __future__ import annotations

import torch


class KVCache:
    """Per-layer K/V buffers (``k[layer]``, ``v[layer]``) of shape ``(batch, kv_heads, max_len, head_dim)``.

    Args:
        n_layers: number of transformer blocks.
        batch_size: sequences decoded together.
        n_kv_heads: key/value heads.
        head_dim: size of one head.
        max_len: capacity in tokens (at most the model's ``max_seq_len``).
        device, dtype: where and in what precision to keep the cache; when dtype is
            None it is taken from the first keys written (bf16 under autocast).
    """

    def __init__(self, n_layers: int, batch_size: int, n_kv_heads: int, head_dim: int, max_len: int,
                 device: torch.device | str = "cpu", dtype: torch.dtype | None = None):
        self.shape = (n_layers, batch_size, n_kv_heads, max_len, head_dim)
        self.device = torch.device(device)
        self.dtype = dtype
        self.k: list[torch.Tensor] | None = None
        self.v: list[torch.Tensor] | None = None
        self.pos = 0

    @property
    def max_len(self) -> int:
        return self.shape[3]

    def allocate(self, dtype: torch.dtype) -> None:
        """Create the buffers (done by the first write unless called before).

        They are uninitialised (zeroing them costs a noticeable share of a prompt's
        prefill): whoever reads past ``pos`` must mask what it reads.
        """
        self.dtype = self.dtype or dtype
        shape = self.shape[1:]
        self.k = [torch.empty(shape, device=self.device, dtype=self.dtype) for _ in range(self.shape[0])]
        self.v = [torch.empty(shape, device=self.device, dtype=self.dtype) for _ in range(self.shape[0])]

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store ``k, v`` for positions ``pos .. pos+T`` of ``layer``; return all cached so far."""
        if self.k is None:
            self.allocate(k.dtype)
        t = k.shape[2]
        end = self.pos + t
        if end > self.max_len:
            raise ValueError(f"KV cache full: {end} tokens > capacity {self.max_len}")
        self.k[layer][:, :, self.pos:end] = k
        self.v[layer][:, :, self.pos:end] = v
        return self.k[layer][:, :, :end], self.v[layer][:, :, :end]

    def advance(self, t: int) -> None:
        """Mark ``t`` more tokens as cached (called once per forward, after all layers)."""
        self.pos += t

    def reset(self) -> None:
        self.pos = 0

    def expand_batch(self, n: int) -> "KVCache":
        """A new cache holding ``n`` copies of this batch-1 cache (one prefill, many samples)."""
        if self.shape[1] != 1:
            raise ValueError("expand_batch needs a batch-1 cache")
        other = KVCache(self.shape[0], n, self.shape[2], self.shape[4], self.max_len, self.device, self.dtype)
        if self.k is not None:
            other.k = [k.expand(n, -1, -1, -1).contiguous() for k in self.k]
            other.v = [v.expand(n, -1, -1, -1).contiguous() for v in self.v]
        other.pos = self.pos
        return other

    def select_rows(self, keep: torch.Tensor) -> None:
        """Keep only the batch rows ``keep`` (a 1-D index tensor), in place."""
        if self.k is not None:
            self.k = [k.index_select(0, keep) for k in self.k]
            self.v = [v.index_select(0, keep) for v in self.v]
        self.shape = (self.shape[0], len(keep), *self.shape[2:])
