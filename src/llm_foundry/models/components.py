"""The building blocks of MiniLLM, each small enough to read at once.

Conventions: activations are ``(batch, time, dim)``; inside attention heads are
``(batch, heads, time, head_dim)``, the layout ``scaled_dot_product_attention`` wants.

This is the reference model (``tutorials/train.py`` is the same on one page). Where a
faster implementation exists, it calls the fast-path façade ``kernels`` instead of the
PyTorch expression, at points marked ``# fast path``; each such call computes what the
comment beside it says (``FOUNDRY_NO_CPU_KERNELS=1`` runs exactly that expression).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import kernels
from ..config import ModelConfig
from .kv_cache import KVCache


class RMSNorm(nn.Module):
    """Root-mean-square norm (no mean subtraction, no bias): cheaper than LayerNorm
    and what Llama-family models use."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Under autocast x may be bf16 (QK-norm); the fused kernel wants matching dtypes.
        return F.rms_norm(x, (x.shape[-1],), self.weight.to(x.dtype), self.eps)


def rope_tables(head_dim: int, max_len: int, theta: float = 10000.0) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables of shape ``(max_len, head_dim // 2)`` for rotary embeddings.

    Pair ``i`` of each head rotates at frequency ``theta^(-2i/head_dim)``: fast for the
    first dimensions, slow for the last, so relative positions are encoded at many scales.
    """
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    angles = torch.outer(torch.arange(max_len, dtype=torch.float32), inv_freq)
    return angles.cos(), angles.sin()


@kernels.rope  # fast path: its gradient is the inverse rotation (the same loop as this one)
def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x`` (``..., time, head_dim``) by position.

    We rotate the first half of each head against the second half ("rotate half"),
    the same convention as Hugging Face Llama, so exported weights need no permutation.
    """
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)


class Attention(nn.Module):
    """Causal grouped-query self-attention with optional QK-norm and a KV cache."""

    def __init__(self, cfg: ModelConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.n_heads, cfg.kv_heads, cfg.head_dim
        self.wq = nn.Linear(cfg.dim, cfg.n_heads * cfg.head_dim, bias=False)
        self.wk = nn.Linear(cfg.dim, cfg.kv_heads * cfg.head_dim, bias=False)
        self.wv = nn.Linear(cfg.dim, cfg.kv_heads * cfg.head_dim, bias=False)
        self.wo = nn.Linear(cfg.n_heads * cfg.head_dim, cfg.dim, bias=False)
        # QK-norm keeps attention logits bounded, which tolerates higher learning rates.
        self.q_norm = RMSNorm(cfg.head_dim, cfg.norm_eps) if cfg.qk_norm else None
        self.k_norm = RMSNorm(cfg.head_dim, cfg.norm_eps) if cfg.qk_norm else None
        self.dropout = cfg.dropout
        self.qkv_sizes = (cfg.n_heads * cfg.head_dim, cfg.kv_heads * cfg.head_dim, cfg.kv_heads * cfg.head_dim)
        self.wqkv: nn.Linear | None = None

    @torch.no_grad()
    def fuse_projections(self) -> None:
        """Concatenate wq/wk/wv into one matrix (for inference copies; training keeps them apart)."""
        w = torch.cat([self.wq.weight, self.wk.weight, self.wv.weight])
        self.wqkv = nn.Linear(w.shape[1], w.shape[0], bias=False, device=w.device, dtype=w.dtype)
        self.wqkv.weight.copy_(w)
        del self.wq, self.wk, self.wv

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, cache: KVCache | None = None,
                last_only: bool = False) -> torch.Tensor:
        """Attention output for every position of ``x``, or with ``last_only`` for the last one
        (whose query sees every key); keys and values of all positions are cached either way."""
        b, t, _ = x.shape
        if self.wqkv is not None:  # an inference copy: one product instead of three
            q, k, v = self.wqkv(x).split(self.qkv_sizes, dim=-1)
        else:  # fast path: = self.wq(x), self.wk(x), self.wv(x)
            q, k, v = kernels.linears(x, self.wq, self.wk, self.wv)
        q = q.view(b, t, self.n_heads, self.head_dim).transpose(1, 2)
        k = k.view(b, t, self.n_kv_heads, self.head_dim).transpose(1, 2)
        v = v.view(b, t, self.n_kv_heads, self.head_dim).transpose(1, 2)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)

        start = 0
        if cache is not None:
            start = cache.pos
            k, v = cache.update(self.layer_idx, k, v)
            # A cache may be kept in fp32 for a bf16 prefill followed by fp32 decoding.
            k, v = k.to(q.dtype), v.to(q.dtype)
        mask, causal = None, False
        if last_only:
            # The last position sees every key: one query row, no mask.
            q, t = q[:, :, -1:], 1
        elif start == 0:
            # Plain causal attention over the new tokens only (for one token the same as no mask;
            # a constant, not `t > 1`, keeps a compiled graph whole when t is symbolic).
            causal = True
        elif t > 1:
            # t new tokens after `start` cached ones: token i sees keys 0..start+i.
            # (One new token may look at everything cached: no mask at all.)
            mask = torch.ones(t, start + t, dtype=torch.bool, device=x.device).tril(diagonal=start)
        # fast path: = F.scaled_dot_product_attention with these arguments
        y = kernels.attention(q, k, v, attn_mask=mask, is_causal=causal,
                              dropout_p=self.dropout if self.training else 0.0,
                              enable_gqa=self.n_kv_heads != self.n_heads)
        return self.wo(y.transpose(1, 2).reshape(b, t, self.n_heads * self.head_dim))


class SwiGLU(nn.Module):
    """Gated MLP: ``w2(silu(w1 x) * w3 x)``; the gate lets each unit switch itself off."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.w1 = nn.Linear(dim, hidden, bias=False)  # gate
        self.w3 = nn.Linear(dim, hidden, bias=False)  # up
        self.w2 = nn.Linear(hidden, dim, bias=False)  # down
        self.w13: nn.Linear | None = None

    @torch.no_grad()
    def fuse_projections(self) -> None:
        """Concatenate gate and up into one matrix (for inference copies)."""
        w = torch.cat([self.w1.weight, self.w3.weight])
        self.w13 = nn.Linear(w.shape[1], w.shape[0], bias=False, device=w.device, dtype=w.dtype)
        self.w13.weight.copy_(w)
        del self.w1, self.w3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.w13 is not None:  # an inference copy: one product for gate and up
            gate, up = self.w13(x).chunk(2, dim=-1)
            return self.w2(F.silu(gate) * up)
        return self.w2(kernels.swiglu(x, self.w1, self.w3))  # fast path: = F.silu(self.w1(x)) * self.w3(x)


class Block(nn.Module):
    """Pre-norm transformer block: ``x + attn(norm(x))``, then ``x + mlp(norm(x))``."""

    def __init__(self, cfg: ModelConfig, layer_idx: int):
        super().__init__()
        self.attn_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.attn = Attention(cfg, layer_idx)
        self.ffn_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.ffn = SwiGLU(cfg.dim, cfg.hidden_dim)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, cache: KVCache | None = None,
                last_only: bool = False) -> torch.Tensor:
        """The block's output for every position, or with ``last_only`` for the last one."""
        h = self.attn(self.attn_norm(x), cos, sin, cache, last_only)
        x = (x[:, -1:] if last_only else x) + self.drop(h)
        return x + self.drop(self.ffn(self.ffn_norm(x)))
