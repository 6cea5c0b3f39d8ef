"""SwiGLU's activation, ``silu(gate) * up``, with a native kernel for bf16 training on CPUs.

Training computes gate and up in one product, so the activation reads one ``(..., 2F)``
tensor. Under ``torch.compile`` Inductor fuses the activation into one loop, but that loop
evaluates the sigmoid with a full-precision exp and a true division (twice in the
backward), which makes it the most expensive elementwise pass of a small model's step on
a CPU. Where the native kernels build (``cpu_kernels``), one C++ pass each way with a fast
exp does the same at bf16 precision, several times faster (``docs/*/performance.md``); it
is registered as a PyTorch operator so a compiled block stays one graph.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from . import cpu_kernels


@torch.library.custom_op("foundry::swiglu", mutates_args=())
def _native_swiglu(gate_up: torch.Tensor) -> torch.Tensor:
    return cpu_kernels.swiglu_forward(gate_up)


@_native_swiglu.register_fake
def _(gate_up):
    return gate_up.new_empty(*gate_up.shape[:-1], gate_up.shape[-1] // 2)


@torch.library.custom_op("foundry::swiglu_backward", mutates_args=())
def _native_swiglu_backward(gate_up: torch.Tensor, grad_out: torch.Tensor) -> torch.Tensor:
    return cpu_kernels.swiglu_backward(gate_up, grad_out)


@_native_swiglu_backward.register_fake
def _(gate_up, grad_out):
    return torch.empty_like(gate_up)


def _setup_context(ctx, inputs, output):
    ctx.save_for_backward(inputs[0])


def _grads(ctx, grad_out):
    (gate_up,) = ctx.saved_tensors
    return _native_swiglu_backward(gate_up, grad_out)


_native_swiglu.register_autograd(_grads, setup_context=_setup_context)


def swiglu(gate_up: torch.Tensor) -> torch.Tensor:
    """``silu(gate) * up`` where ``gate_up`` holds gate then up along its last dimension."""
    if (gate_up.dtype == torch.bfloat16 and gate_up.device.type == "cpu" and gate_up.shape[-1] % 2 == 0
            and cpu_kernels.available()):
        return _native_swiglu(gate_up)
    gate, up = gate_up.chunk(2, dim=-1)
    return F.silu(gate) * up
