"""Next-token cross-entropy, with a faster path for bf16 logits on CPUs.

``F.cross_entropy(logits.float(), ...)`` on bf16 logits makes a full fp32 copy of the
``(tokens, vocab)`` logits, a full fp32 log-softmax, a full fp32 gradient and a cast of
that gradient back to bf16: four passes over tens of megabytes that fall out of cache
between them. For a character model with a few thousand characters (the online REPL,
Chinese text) that is a noticeable share of a training step on a small CPU. The path
below works on blocks of rows that stay in cache: per block it converts to fp32, takes
the log-sum-exp, and in the backward writes ``softmax - onehot`` straight into a bf16
gradient. Same math, fp32 accumulation, fewer passes. Where the native kernels build
(``cpu_kernels``), one C++ pass over the logits each way does the same with fewer passes
still (figures in ``docs/*/performance.md``).
"""

from __future__ import annotations

import torch

from . import cpu_kernels

IGNORE_INDEX = -100
ROWS_PER_BLOCK = 128  # 128 rows x 4k vocab x 4 bytes = 2 MiB: one core's L2


def blocked_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of bf16 or fp16 CPU ``logits`` (``rows, vocab``) against ``targets``
    (``rows``), ``-100`` not counted: ``F.cross_entropy(logits.float(), targets)`` in fewer passes."""
    return _BlockedCrossEntropy.apply(logits, targets)


class _BlockedCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        valid = targets != IGNORE_INDEX
        ctx.native = logits.dtype == torch.bfloat16 and logits.stride(-1) == 1 and cpu_kernels.available()
        if ctx.native:  # the same math in one pass over the logits (cpu_kernels.cpp)
            lse, terms = cpu_kernels.cross_entropy_forward(logits, targets)
            count = valid.sum()
            ctx.save_for_backward(logits, lse, targets, valid, count)
            return terms.sum() / count
        safe = targets.clamp_min(0)  # ignored rows pick column 0, then count for nothing
        lse = torch.empty(logits.shape[0], dtype=torch.float32, device=logits.device)
        for s in range(0, logits.shape[0], ROWS_PER_BLOCK):
            lse[s:s + ROWS_PER_BLOCK] = torch.logsumexp(logits[s:s + ROWS_PER_BLOCK].float(), dim=-1)
        picked = logits.gather(1, safe[:, None]).squeeze(1).float()
        count = valid.sum()
        ctx.save_for_backward(logits, lse, safe, valid, count)
        return ((lse - picked) * valid).sum() / count

    @staticmethod
    def backward(ctx, grad_loss: torch.Tensor):
        logits, lse, safe, valid, count = ctx.saved_tensors
        scale = (grad_loss / count) * valid  # d loss / d row, zero for ignored rows
        if ctx.native:
            return cpu_kernels.cross_entropy_backward(logits, safe, lse, scale), None
        grad = torch.empty_like(logits)
        for s in range(0, logits.shape[0], ROWS_PER_BLOCK):
            e = s + ROWS_PER_BLOCK
            p = torch.exp(logits[s:e].float() - lse[s:e, None])  # softmax of the block
            p.scatter_add_(1, safe[s:e, None], torch.full((p.shape[0], 1), -1.0, device=p.device))
            grad[s:e] = p.mul_(scale[s:e, None])
        return grad, None
