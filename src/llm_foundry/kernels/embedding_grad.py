"""Token embedding lookup whose gradient stays fast inside a compiled CPU training step.

The gradient of an embedding lookup adds each position's gradient row into the row of
its token. Inductor (torch 2.13) compiles that on a CPU into one vectorised *atomic* add
per element, since two positions may share a token: many times slower than PyTorch's
eager ``index_add_``, which does the same sum (figures in ``docs/*/performance.md``).
Inside a compiled graph the lookup's backward is therefore an operator the compiler does
not open, running ``index_add_`` (the forward stays ``F.embedding``, fused with what
follows). The façade (``kernels.embedding``) takes it only there; everywhere else (eager
training, inference, GPUs, whose atomics are fast) the lookup is plain ``F.embedding``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


@torch.library.custom_op("foundry::embedding_backward", mutates_args=())
def _embedding_backward(grad: torch.Tensor, ids: torch.Tensor, num_rows: int) -> torch.Tensor:
    dim = grad.shape[-1]
    out = torch.zeros(num_rows, dim, dtype=grad.dtype, device=grad.device)
    return out.index_add_(0, ids.reshape(-1), grad.reshape(-1, dim))


@_embedding_backward.register_fake
def _(grad, ids, num_rows):
    return grad.new_empty(num_rows, grad.shape[-1])


class _Embedding(torch.autograd.Function):
    """``F.embedding`` whose backward is the opaque operator above (the forward still fuses)."""

    @staticmethod
    def forward(ctx, weight: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(ids)
        ctx.num_rows = weight.shape[0]
        return F.embedding(ids, weight)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (ids,) = ctx.saved_tensors
        return _embedding_backward(grad.contiguous(), ids, ctx.num_rows), None


def lookup(weight: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Rows of ``weight`` for the token ``ids`` (``F.embedding``), with the gradient above."""
    return _Embedding.apply(weight, ids)
