"""Fusion: how retrieved entries enter the frozen backbone.

At a few upper blocks, each position's residual stream ``h`` attends to the *token*
features of the retrieved entries (every token of every entry is a key and a value — a
mean would blur "Paris" into "The capital of France is"), and the result is added back:

    h  <-  h + gate * Wo · attend(q = Wq·norm(h), keys/values = Wk, Wv · norm(memory tokens) ∪ {null})

* **MemoryNorm** (an RMSNorm) on both sides: backbone states at different layers and in
  different models differ in scale by orders of magnitude; normalising lets one set of
  projections (and one learning rate) work for all of them.
* **The null slot**, a learned key/value pair always present, lets a position attend to
  nothing: a question whose answer is not in memory, or plain text, need not be perturbed.
* **Zero init of exactly one of {Wo, gate}**: ``Wo`` starts at zero, so the added term is
  exactly 0 and the model starts as the backbone (max |Δlogits| == 0, not merely small).
  The gate starts at 1, not 0: were both zero, each one's gradient would be the other
  times something, i.e. zero, and neither would ever move.
* **Routing weights** (``MemoryBatch.bias``): each memory token's attention logit gets
  the log of its entry's routing probability (a softmax over the gate's scores of the
  retrieved entries). This is what makes the language-model loss reach the gate: the
  source design picked entries by a hard top-k and its gate got no gradient after stage 1.

The memory does not change with the position, so the injection is the same function of
``h`` whether a sequence is run at once or one token at a time with a KV cache.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..models.components import RMSNorm
from ..utils.errors import FoundryError
from .backbone import Injection


class MemoryNorm(RMSNorm):
    """RMSNorm with a learned gain, applied to query states and to memory features before they
    are projected (see the module docstring for why); its own class so that the memory's
    trainable norms are found by type."""


@dataclass
class MemoryBatch:
    """What the fusion attends to, per row of a batch: the token features of its entries.

    Attributes:
        states: ``(batch, tokens, dim)`` token features of all of a row's entries, one after another.
        mask: ``(batch, tokens)`` True for a real token (False: padding).
        bias: ``(batch, tokens)`` added to each token's attention logit (the log routing weight of
            its entry; carries the gradient to the gate), or None.
    """

    states: torch.Tensor
    mask: torch.Tensor
    bias: torch.Tensor | None = None

    @property
    def empty(self) -> bool:
        """No row has any memory token: the fusion is then not attached at all."""
        return self.states.shape[1] == 0 or not bool(self.mask.any())


class CrossAttention(nn.Module):
    """Gated cross-attention from one block's residual stream to the memory tokens.

    Args:
        dim: the backbone's width.
        n_heads: attention heads (``dim`` must divide evenly).
    """

    def __init__(self, dim: int, n_heads: int):
        super().__init__()
        if dim % n_heads:
            raise FoundryError(f"fusion heads ({n_heads}) must divide the backbone width ({dim})")
        self.n_heads, self.head_dim = n_heads, dim // n_heads
        self.query_norm = MemoryNorm(dim)
        self.memory_norm = MemoryNorm(dim)
        self.wq = nn.Linear(dim, dim, bias=False)
        self.wk = nn.Linear(dim, dim, bias=False)
        self.wv = nn.Linear(dim, dim, bias=False)
        self.null_k = nn.Parameter(torch.zeros(dim))  # the attend-to-nothing slot
        self.null_v = nn.Parameter(torch.zeros(dim))
        self.wo = nn.Linear(dim, dim, bias=False)
        self.gate = nn.Parameter(torch.ones(1))
        for w in (self.wq, self.wk, self.wv):
            nn.init.normal_(w.weight, 0.0, dim ** -0.5)
        nn.init.zeros_(self.wo.weight)  # the one zero: the model starts as the backbone exactly

    def forward(self, h: torch.Tensor, memory: MemoryBatch) -> torch.Tensor:
        """The term added to ``h`` (``batch, time, dim``)."""
        b, t, d = h.shape
        m = memory.states.to(h.dtype)
        if m.shape[0] != b:  # one memory for every row (several samples of one prompt)
            m = m.expand(b, -1, -1)
        heads = lambda x: x.view(b, -1, self.n_heads, self.head_dim).transpose(1, 2)  # noqa: E731
        q = heads(self.wq(self.query_norm(h)))
        mem = self.memory_norm(m)
        k = torch.cat([self.null_k.to(h.dtype).expand(b, 1, d), self.wk(mem)], dim=1)
        v = torch.cat([self.null_v.to(h.dtype).expand(b, 1, d), self.wv(mem)], dim=1)
        # Additive mask: padding is -inf, the null slot always open, real tokens get their entry's log weight.
        mask = memory.mask if memory.mask.shape[0] == b else memory.mask.expand(b, -1)
        bias = torch.zeros(mask.shape, dtype=h.dtype, device=h.device).masked_fill(~mask, float("-inf"))
        if memory.bias is not None:
            bias = bias + (memory.bias if memory.bias.shape[0] == b else memory.bias.expand(b, -1)).to(h.dtype)
        bias = torch.cat([bias.new_zeros(b, 1), bias], dim=1)[:, None, None, :]
        y = F.scaled_dot_product_attention(q, heads(k), heads(v), attn_mask=bias)
        return self.gate.to(h.dtype) * self.wo(y.transpose(1, 2).reshape(b, t, d))


class Fusion(nn.Module):
    """One :class:`CrossAttention` per chosen backbone block.

    Args:
        dim: the backbone's width.
        layers: the blocks after which memory is added (0-based).
        n_heads: heads of each cross-attention.
    """

    def __init__(self, dim: int, layers: list[int], n_heads: int = 4):
        super().__init__()
        if not layers:
            raise FoundryError("the fusion needs at least one layer to inject into")
        self.layers = sorted(set(int(i) for i in layers))
        self.blocks = nn.ModuleDict({str(i): CrossAttention(dim, n_heads) for i in self.layers})

    def injections(self, memory: MemoryBatch) -> dict[int, Injection]:
        """The residual-stream functions for :meth:`Backbone.logits` / :meth:`Backbone.injecting`."""
        return {i: (lambda h, blk=self.blocks[str(i)]: h + blk(h, memory)) for i in self.layers}


def default_fusion_layers(n_layers: int, read_layer: int, count: int = 3) -> list[int]:
    """Up to ``count`` blocks spread over those above ``read_layer`` (where memory features are
    read): upper blocks turn retrieved content into the next token, while the blocks below
    build, untouched, the representation that questions and entries are read from."""
    upper = list(range(read_layer + 1, n_layers)) or [n_layers - 1]
    if len(upper) <= count:
        return upper
    return sorted({upper[round(j * (len(upper) - 1) / count)] for j in range(count)})
