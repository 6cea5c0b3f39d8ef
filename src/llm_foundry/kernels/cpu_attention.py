"""Causal attention for bf16 training on CPUs: our AMX kernel, or a faster backward.

Where the CPU has AMX (and a C++ compiler is present), forward and backward both run in
our own kernel, ``cpu_kernels.cpp``, several times faster than PyTorch's flash kernels at
the shapes small models train with (``bench/attention.py``; figures in
``docs/*/performance.md``). Elsewhere, PyTorch's flash forward with the backward below.

On a CPU the flash-attention *backward* kernel is the slowest op of a small bf16 model's
training step, several times its forward. Its job is simple though: with the softmax
statistics (``lse``) the forward already returns, the backward is four small matrix
products and two elementwise passes over the (time × time) scores:

    P  = exp(Q Kᵀ·s − lse)            (causal entries only)
    dV = Pᵀ dO                        dP = dO Vᵀ
    dS = P ∘ (dP − rowsum(dO ∘ O))·s  dQ = dS K,   dK = dSᵀ Q

We run it a few sequences at a time, so the scores of one chunk stay in the core's
cache, and let ``torch.compile`` fuse the elementwise passes into single loops. The
matrix products are bf16 with fp32 accumulation, like the kernel it replaces. Where the
compiler is unavailable (no C++ toolchain), the same math runs eagerly, about as fast as
the stock kernel.

Which calls come here is decided by the façade (``kernels.attention``).
"""

from __future__ import annotations

import math
import os
import sys

import torch
import torch.nn.functional as F

from . import cpu_kernels

# Sequences per backward chunk, by the size of their fp32 scores: smaller chunks pay per-call
# overhead, larger ones fall out of cache (bench/attention.py found this size fastest).
_SCORES_BYTES_PER_CHUNK = 8 * 1024 * 1024
_compiled = None  # the compiled chunk kernel, built on first use; False if compiling failed


def _chunk_backward(q, k, v, out, lse, grad_out):
    """Gradients of causal softmax attention for one chunk of sequences (see module doc)."""
    t = q.shape[-2]
    scale = 1.0 / math.sqrt(q.shape[-1])
    future = torch.ones(t, t, dtype=torch.bool, device=q.device).triu(1)
    row_dot = (grad_out.float() * out.float()).sum(-1, keepdim=True)
    scores = torch.matmul(q, k.transpose(-1, -2)).float() * scale
    probs = torch.exp(scores - lse.unsqueeze(-1)).masked_fill(future, 0.0)
    grad_v = torch.matmul(probs.to(q.dtype).transpose(-1, -2), grad_out)
    grad_probs = torch.matmul(grad_out, v.transpose(-1, -2)).float()
    grad_scores = (probs * (grad_probs - row_dot) * scale).to(q.dtype)
    return torch.matmul(grad_scores, k), torch.matmul(grad_scores.transpose(-1, -2), q), grad_v


def _kernel():
    """The compiled chunk kernel, or the eager one where compiling is impossible."""
    global _compiled
    if _compiled is None:
        if os.environ.get("FOUNDRY_NO_COMPILE_ATTENTION"):
            _compiled = False
        else:
            try:
                # Static shapes first; a second shape (chat batches vary in length) recompiles once with
                # dynamic shapes instead of once per length.
                _compiled = torch.compile(_chunk_backward, fullgraph=True)
            except Exception as e:  # pragma: no cover - depends on the toolchain
                print(f"warning: attention backward runs uncompiled ({type(e).__name__}: {e})", file=sys.stderr)
                _compiled = False
    return _compiled or _chunk_backward


class _CausalAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v):
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, 0.0, True)
        ctx.save_for_backward(q, k, v, out, lse)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        global _compiled
        q, k, v, out, lse = ctx.saved_tensors
        grad_out = grad_out.contiguous()
        b, h, t, _ = q.shape
        chunk = max(1, min(b, _SCORES_BYTES_PER_CHUNK // (h * t * t * 4)))
        grads = [torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)]
        kernel = _kernel()
        for start in range(0, b, chunk):
            rows = slice(start, start + chunk)
            args = (q[rows], k[rows], v[rows], out[rows], lse[rows], grad_out[rows])
            try:
                parts = kernel(*args)
            except Exception as e:  # pragma: no cover - a compiler that fails at run time
                if kernel is _chunk_backward:
                    raise
                print(f"warning: attention backward runs uncompiled ({type(e).__name__})", file=sys.stderr)
                _compiled = False
                kernel = _chunk_backward
                parts = kernel(*args)
            for grad, part in zip(grads, parts):
                grad[rows] = part
        return tuple(grads)


# The AMX kernel as PyTorch operators, so that torch.compile keeps a model that calls them in one
# graph (an opaque call into ctypes would break it at every layer).
@torch.library.custom_op("foundry::amx_attention", mutates_args=())
def _amx_forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return cpu_kernels.forward(q, k, v)


@_amx_forward.register_fake
def _(q, k, v):
    return torch.empty_like(q), q.new_empty(cpu_kernels.lse_shape(q), dtype=torch.float32)


@torch.library.custom_op("foundry::amx_attention_backward", mutates_args=())
def _amx_backward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor, lse: torch.Tensor,
                  grad_out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return cpu_kernels.backward(q, k, v, out, lse, grad_out)


@_amx_backward.register_fake
def _(q, k, v, out, lse, grad_out):
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


def _amx_setup_context(ctx, inputs, output):
    ctx.save_for_backward(*inputs, *output)


def _amx_grads(ctx, grad_out, _grad_lse):
    q, k, v, out, lse = ctx.saved_tensors
    return _amx_backward(q, k, v, out, lse, grad_out.contiguous())


_amx_forward.register_autograd(_amx_grads, setup_context=_amx_setup_context)


def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Causal self-attention of ``(batch, heads, time, head_dim)`` bf16 tensors on a CPU."""
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    if cpu_kernels.available():
        return _amx_forward(q, k, v)[0]
    return _CausalAttention.apply(q, k, v)


def reference_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """The stock path, for tests and benchmarks."""
    return F.scaled_dot_product_attention(q, k, v, is_causal=True)
