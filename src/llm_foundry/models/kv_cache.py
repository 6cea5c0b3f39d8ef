"""Key/value cache for incremental decoding.

Keys and values of every layer are written into one preallocated buffer, so a
decode step appends in place instead of concatenating (which would copy the whole
history every token). ``pos`` counts the tokens already cached.
"""

from __future__ import annotations

import torch


class KVCache:
    """Per-layer K/V buffers of shape ``(batch, kv_heads, max_len, head_dim)``.

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
        self.k: torch.Tensor | None = None
        self.v: torch.Tensor | None = None
        self.pos = 0

    @property
    def max_len(self) -> int:
        return self.shape[3]

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store ``k, v`` for positions ``pos .. pos+T`` of ``layer``; return all cached so far."""
        if self.k is None:
            dtype = self.dtype or k.dtype
            self.k = torch.empty(self.shape, device=self.device, dtype=dtype)
            self.v = torch.empty(self.shape, device=self.device, dtype=dtype)
        t = k.shape[2]
        end = self.pos + t
        if end > self.max_len:
            raise ValueError(f"KV cache full: {end} tokens > capacity {self.max_len}")
        self.k[layer, :, :, self.pos:end] = k
        self.v[layer, :, :, self.pos:end] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]

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
            other.k = self.k.expand(-1, n, -1, -1, -1).contiguous()
            other.v = self.v.expand(-1, n, -1, -1, -1).contiguous()
        other.pos = self.pos
        return other
