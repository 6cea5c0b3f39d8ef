"""Token embedding lookup whose gradient stays fast inside a compiled CPU training step.

The gradient of an embedding lookup adds each position's gradient row into the row of
its token. Inductor (torch 2.13) compiles that on a CPU into one vectorised *atomic* add
per element, since two positions may share a token: at the ``tinygpt`` shape (4,096
positions x 256) that loop alone took ~3.5 ms of a ~125 ms step, where PyTorch's eager
``index_add_`` does the same sum in ~0.2 ms. Inside a compiled graph the lookup's
backward is therefore an operator the compiler does not open, running ``index_add_`` (the
forward stays ``F.embedding``, fused with what follows); everywhere else (eager training,
inference, GPUs, whose atomics are fast) the lookup is plain ``F.embedding``.
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


def embedding(weight: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Rows of ``weight`` for the token ``ids`` (``F.embedding``), with the fast gradient above
    when a CPU training step is being compiled."""
    if (torch.compiler.is_compiling() and weight.device.type == "cpu" and weight.requires_grad
            and torch.is_grad_enabled()):
        return _Embedding.apply(weight, ids)
    return F.embedding(ids, weight)
