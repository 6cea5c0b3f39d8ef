"""One decoding step as a single compiled graph: the fastest way to add a token on a CPU.

Eager decoding of a small model spends more time dispatching its ~100 small operators
per token than computing them, and PyTorch's bf16 matrix-vector kernel is slower than
its fp32 one although it reads half the bytes. This step answers both:

* the whole step (embedding, every block, the head) is one ``torch.compile`` graph:
  the cache is read at its full capacity behind a mask and the position is a tensor,
  so the graph is the same for every token (a second batch size recompiles it once
  with the batch dimension symbolic, as chat batches shrink when rows finish);
* with bf16 weights and one or two rows, each product is written as multiply-and-sum,
  which the compiler turns into one vectorised loop that reads the bf16 weights once
  and accumulates in fp32: half the memory traffic of fp32 weights, the bound here;
* the activations, the attention and the logits are fp32; keys and values stay in the
  cache in its own dtype (bf16 after a bf16 prefill).

It computes what ``MiniLLM.forward`` computes for one new token with a cache (a test
holds the two together), faster at batch 1 (``bench/decode.py``; figures in
``docs/*/performance.md``). It reads the model duck-typed (this package sits below
``models/``), so the few lines of the model's math it needs (RMSNorm with fp32 weights, the
rotation) are written out here. With the fast paths switched off (``FOUNDRY_NO_CPU_KERNELS=1``)
it runs the model's own forward instead.
"""

from __future__ import annotations

import sys

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import switch


class CompiledStep(nn.Module):
    """Call like a MiniLLM with one new token per row: ``logits, _ = step(idx, cache=cache)``.

    Args:
        model: a ``MiniLLM`` inference copy with fused projections (``fuse_projections``),
            in the dtype its weights should be read in.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model.eval()
        self._graph = torch.compile(self._step, fullgraph=True)
        self.uncompiled = False  # set when compiling failed and the step runs eagerly

    def forward(self, idx: torch.Tensor, targets=None, cache=None,
                last_only: bool = True) -> tuple[torch.Tensor, None]:
        """Logits ``(batch, 1, vocab)`` for one new token per row; advances ``cache`` (a ``KVCache``).

        ``targets`` and ``last_only`` are there for MiniLLM's call signature (with one new
        token, its logits are the last position's).
        """
        if cache is None or idx.shape[1] != 1 or targets is not None:
            raise ValueError("CompiledStep decodes one token per row into a KV cache")
        if not switch.ENABLED:  # the fast paths are off: the model's own forward
            return self.model(idx, cache=cache, last_only=True)
        if cache.pos >= cache.max_len:
            raise ValueError(f"KV cache full: {cache.pos + 1} tokens > capacity {cache.max_len}")
        if cache.k is None:
            cache.allocate(self.model.tok_embeddings.weight.dtype)
        pos = torch.tensor([cache.pos], device=idx.device)
        if self.uncompiled:
            logits = self._step(idx, pos, cache.k, cache.v)
        else:
            try:
                logits = self._graph(idx, pos, cache.k, cache.v)
            except Exception as e:
                # No working compiler here (e.g. no C++ toolchain): the same math, uncompiled.
                print(f"warning: decoding uncompiled ({type(e).__name__}: {str(e).splitlines()[0][:200]})", file=sys.stderr)
                self.uncompiled = True
                logits = self._step(idx, pos, cache.k, cache.v)
        cache.advance(1)
        return logits, None

    def _product(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """``x @ w.T`` in fp32, reading ``w`` in its own dtype."""
        if w.dtype == torch.bfloat16 and x.shape[0] <= 2 and w.device.type == "cpu":
            return (x.unsqueeze(-2) * w.float()).sum(-1)  # fused by the compiler: bf16 in, fp32 sums
        return F.linear(x.to(w.dtype), w).float()

    @staticmethod
    def _norm(x: torch.Tensor, norm: nn.Module) -> torch.Tensor:
        """The model's RMSNorm ``norm``, with its weight in fp32."""
        return F.rms_norm(x, (x.shape[-1],), norm.weight.float(), norm.eps)

    @staticmethod
    def _rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """The model's rotation (``models.apply_rope``): each head's first half against its second."""
        half = x.shape[-1] // 2
        x1, x2 = x[..., :half], x[..., half:]
        return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)

    def _step(self, idx: torch.Tensor, pos: torch.Tensor, ks: list[torch.Tensor], vs: list[torch.Tensor]) -> torch.Tensor:
        m, b = self.model, idx.shape[0]
        cos = m.rope_cos.index_select(0, pos).view(1, 1, 1, -1)
        sin = m.rope_sin.index_select(0, pos).view(1, 1, 1, -1)
        visible = torch.arange(ks[0].shape[2], device=idx.device) <= pos  # the cached tokens and this one
        x = m.tok_embeddings(idx).float()
        for layer, k_cache, v_cache in zip(m.layers, ks, vs):
            a = layer.attn
            q, k, v = self._product(self._norm(x, layer.attn_norm), a.wqkv.weight).split(a.qkv_sizes, dim=-1)
            q = q.view(b, a.n_heads, 1, a.head_dim)
            k = k.view(b, a.n_kv_heads, 1, a.head_dim)
            v = v.view(b, a.n_kv_heads, 1, a.head_dim)
            if a.q_norm is not None:
                q, k = self._norm(q, a.q_norm), self._norm(k, a.k_norm)
            q, k = self._rope(q, cos, sin), self._rope(k, cos, sin)
            k_cache.index_copy_(2, pos, k.to(k_cache.dtype))
            v_cache.index_copy_(2, pos, v.to(v_cache.dtype))
            # Grouped heads: the queries sharing a key/value head attend together.
            q = q.view(b, a.n_kv_heads, a.n_heads // a.n_kv_heads, a.head_dim)
            scores = (q @ k_cache.float().transpose(-1, -2)) * a.head_dim ** -0.5
            # The cache past `pos` is uninitialised and may hold NaN: mask both scores and values
            # (a zero weight times NaN is still NaN).
            values = torch.where(visible.unsqueeze(-1), v_cache.float(), 0.0)
            y = scores.masked_fill(~visible, float("-inf")).softmax(-1) @ values
            x = x + self._product(y.reshape(b, 1, -1), a.wo.weight)
            gate, up = self._product(self._norm(x, layer.ffn_norm), layer.ffn.w13.weight).chunk(2, dim=-1)
            x = x + self._product(F.silu(gate) * up, layer.ffn.w2.weight)
        return self._product(self._norm(x, m.norm), m.output.weight)
