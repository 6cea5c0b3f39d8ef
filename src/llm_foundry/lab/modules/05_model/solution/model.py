"""Module 5: the model skeleton, rebuilt — MiniLLM in one file.

Token embedding -> N pre-norm blocks (RMSNorm, attention with RoPE, RMSNorm, SwiGLU MLP)
-> RMSNorm -> output head. The parameter names are those of ``src/llm_foundry/models``,
so a state_dict of our MiniLLM loads into this model and the logits agree.

Shapes: activations are ``(batch, time, dim)``; inside attention the heads are
``(batch, heads, time, head_dim)``.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from llm_foundry.config import ModelConfig


class RMSNorm(nn.Module):
    """``x / rms(x) · weight`` over the last dimension, with ``rms(x) = sqrt(mean(x²) + eps)``."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # BEGIN SOLUTION rmsnorm
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight
        # END SOLUTION


def rope_tables(head_dim: int, max_len: int, theta: float = 10000.0) -> tuple[torch.Tensor, torch.Tensor]:
    """``cos`` and ``sin`` of shape ``(max_len, head_dim // 2)``: position ``p`` times frequency
    ``theta ** (-2i / head_dim)`` for pair ``i``."""
    # BEGIN SOLUTION rope_tables
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    angles = torch.outer(torch.arange(max_len, dtype=torch.float32), inv_freq)
    return angles.cos(), angles.sin()
    # END SOLUTION


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x`` (``..., time, head_dim``) by position: the first half of each head against
    the second half ("rotate half"), with ``cos``/``sin`` of shape ``(time, head_dim // 2)``."""
    # BEGIN SOLUTION apply_rope
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)
    # END SOLUTION


class Attention(nn.Module):
    """Causal grouped-query self-attention: ``n_heads`` query heads share ``kv_heads`` key/value heads."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.n_heads, cfg.kv_heads, cfg.head_dim
        # BEGIN SOLUTION attention_init
        # STUB: # four bias-free nn.Linear layers: wq (dim -> n_heads·head_dim), wk and wv (dim -> kv_heads·head_dim),
        # STUB: # wo (n_heads·head_dim -> dim); q_norm and k_norm are RMSNorm(head_dim, cfg.norm_eps) if cfg.qk_norm else None
        # STUB: raise NotImplementedError("attention_init")
        self.wq = nn.Linear(cfg.dim, cfg.n_heads * cfg.head_dim, bias=False)
        self.wk = nn.Linear(cfg.dim, cfg.kv_heads * cfg.head_dim, bias=False)
        self.wv = nn.Linear(cfg.dim, cfg.kv_heads * cfg.head_dim, bias=False)
        self.wo = nn.Linear(cfg.n_heads * cfg.head_dim, cfg.dim, bias=False)
        self.q_norm = RMSNorm(cfg.head_dim, cfg.norm_eps) if cfg.qk_norm else None
        self.k_norm = RMSNorm(cfg.head_dim, cfg.norm_eps) if cfg.qk_norm else None
        # END SOLUTION

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """``(batch, time, dim)`` -> ``(batch, time, dim)``; position ``i`` sees positions ``0..i``."""
        # BEGIN SOLUTION attention
        b, t, _ = x.shape
        q = self.wq(x).view(b, t, self.n_heads, self.head_dim).transpose(1, 2)
        k = self.wk(x).view(b, t, self.n_kv_heads, self.head_dim).transpose(1, 2)
        v = self.wv(x).view(b, t, self.n_kv_heads, self.head_dim).transpose(1, 2)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=self.n_kv_heads != self.n_heads)
        return self.wo(y.transpose(1, 2).reshape(b, t, self.n_heads * self.head_dim))
        # END SOLUTION


class SwiGLU(nn.Module):
    """Gated MLP: ``w2(silu(w1 x) · w3 x)`` — w1 is the gate, w3 the up projection, w2 the down."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        # BEGIN SOLUTION swiglu_init
        # STUB: # three bias-free nn.Linear layers: w1 and w3 (dim -> hidden), w2 (hidden -> dim)
        # STUB: raise NotImplementedError("swiglu_init")
        self.w1 = nn.Linear(dim, hidden, bias=False)
        self.w3 = nn.Linear(dim, hidden, bias=False)
        self.w2 = nn.Linear(hidden, dim, bias=False)
        # END SOLUTION

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # BEGIN SOLUTION swiglu
        return self.w2(F.silu(self.w1(x)) * self.w3(x))
        # END SOLUTION


class Block(nn.Module):
    """Pre-norm transformer block: ``x + attn(norm(x))``, then ``x + mlp(norm(x))``."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.attn_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.attn = Attention(cfg)
        self.ffn_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.ffn = SwiGLU(cfg.dim, cfg.hidden_dim)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        # BEGIN SOLUTION block
        x = x + self.attn(self.attn_norm(x), cos, sin)
        return x + self.ffn(self.ffn_norm(x))
        # END SOLUTION


class MiniLLM(nn.Module):
    """The whole model; ``forward(idx, targets)`` returns ``(logits, loss)`` as ours does."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        # BEGIN SOLUTION model_init
        # STUB: # tok_embeddings (nn.Embedding), layers (nn.ModuleList of cfg.n_layers Blocks), norm (RMSNorm),
        # STUB: # output (bias-free nn.Linear dim -> vocab_size; the same weight as tok_embeddings if cfg.tie_embeddings),
        # STUB: # and the RoPE tables as buffers rope_cos / rope_sin that are not saved (persistent=False)
        # STUB: raise NotImplementedError("model_init")
        self.tok_embeddings = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.output = nn.Linear(cfg.dim, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.output.weight = self.tok_embeddings.weight
        cos, sin = rope_tables(cfg.head_dim, cfg.max_seq_len, cfg.rope_theta)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        # END SOLUTION

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits ``(batch, time, vocab_size)`` for token ids ``idx`` (``batch, time``) and, given
        ``targets``, the mean cross-entropy (``-100`` targets are not counted)."""
        # BEGIN SOLUTION model
        t = idx.shape[1]
        cos, sin = self.rope_cos[:t], self.rope_sin[:t]
        x = self.tok_embeddings(idx)
        for layer in self.layers:
            x = layer(x, cos, sin)
        logits = self.output(self.norm(x))
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.flatten(0, -2), targets.flatten(), ignore_index=-100)
        return logits, loss
        # END SOLUTION
