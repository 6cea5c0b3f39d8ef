"""The fast paths of the model, behind one façade.

The reference model (``models/``) is plain PyTorch. At a few marked points it calls a
function below in place of the PyTorch expression it stands for (each docstring names
it); the function decides which implementation runs — by device, dtype, whether autocast
is on, whether autograd records the forward, whether the native kernels could be built —
and runs that plain expression everywhere else:

* ``attention`` for ``F.scaled_dot_product_attention``: causal bf16 attention on a CPU in our
  AMX kernel, else PyTorch's flash forward with our backward (``cpu_attention.py``, ``cpu_kernels.cpp``);
* ``linears`` for ``layer(x)`` of several layers: in mixed-precision training one product;
* ``swiglu`` for ``F.silu(gate(x)) * up(x)``: the same, then a native activation on bf16 CPU
  tensors (``activations.py``);
* ``embedding`` for ``table(ids)``: in a compiled CPU training step, the gradient by
  ``index_add_`` (``embedding_grad.py``);
* ``cross_entropy`` for ``F.cross_entropy`` in fp32: bf16 CPU logits in row blocks or one
  native pass (``losses.py``);
* ``rope`` for a rotation's autograd gradient: the inverse rotation (``rotation.py``);
* ``CompiledStep`` for ``MiniLLM.forward`` of one new token: one compiled graph per token on a
  CPU (``compiled_step.py``; ``inference.decode_models(..., compile=True)`` takes it).

"Training" here means a forward that autograd records (``torch.is_grad_enabled()``), which
is how every training loop of the project calls the model. ``FOUNDRY_NO_CPU_KERNELS=1``
switches every fast path off (``switch.py``): the model then computes its reference, with
the same results within the tolerance ``docs/*/performance.md`` states and
``tests/test_fast_paths.py`` holds. The native kernels alone: :func:`available`,
:func:`unavailable_reason`; the optimizer's one-pass step uses them too (``training/optim.py``).
"""

from __future__ import annotations

import functools

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import activations, cpu_attention, cpu_kernels, embedding_grad, losses, rotation, switch
from .compiled_step import CompiledStep
from .cpu_kernels import available, unavailable_reason

__all__ = ["attention", "linears", "swiglu", "embedding", "cross_entropy", "rope", "CompiledStep", "available",
           "unavailable_reason", "enabled"]


def enabled() -> bool:
    """False where ``FOUNDRY_NO_CPU_KERNELS`` is set: every function here then runs its reference."""
    return switch.ENABLED


def _mixed_precision_training(x: torch.Tensor) -> bool:
    return switch.ENABLED and torch.is_grad_enabled() and torch.is_autocast_enabled(x.device.type)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_mask: torch.Tensor | None = None,
              is_causal: bool = False, dropout_p: float = 0.0, enable_gqa: bool = False) -> torch.Tensor:
    """``F.scaled_dot_product_attention(q, k, v, attn_mask, dropout_p, is_causal, enable_gqa=enable_gqa)``.

    Causal self-attention of bf16 ``(batch, heads, time, head_dim)`` tensors on a CPU, with
    no mask, no dropout, no grouped heads and as many keys as queries (training, or a prompt
    into a fresh cache), runs in our AMX kernel where it builds; training without it runs
    PyTorch's flash forward with our faster backward.
    """
    if (switch.ENABLED and is_causal and attn_mask is None and dropout_p == 0.0 and q.device.type == "cpu"
            and q.dtype == torch.bfloat16 and k.dtype == torch.bfloat16 and q.shape[1] == k.shape[1]
            and q.shape[-2] == k.shape[-2] and q.shape[-2] > 1 and (q.requires_grad or cpu_kernels.available())):
        return cpu_attention.causal_attention(q, k, v)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal,
                                          enable_gqa=enable_gqa)


def _plain(layers: tuple[nn.Module, ...]) -> bool:
    # A wrapped layer (a LoRA adapter's) adds to its weight's product: only its own forward is right.
    return all(type(layer) is nn.Linear for layer in layers)


def _one_product(x: torch.Tensor, layers: tuple[nn.Linear, ...]) -> torch.Tensor:
    # The weights concatenated each step (a small copy): one product and, under autocast, one
    # weight cast instead of one per layer; autograd hands each weight its own gradient. In fp32
    # the concatenation costs more than it saves, so only mixed precision takes it.
    return F.linear(x, torch.cat([layer.weight for layer in layers]))


def linears(x: torch.Tensor, *layers: nn.Linear) -> tuple[torch.Tensor, ...]:
    """``tuple(layer(x) for layer in layers)`` for bias-free linear layers; in mixed-precision
    training one product over their concatenated weights."""
    if _mixed_precision_training(x) and _plain(layers):
        return _one_product(x, layers).split([layer.out_features for layer in layers], dim=-1)
    return tuple(layer(x) for layer in layers)


def swiglu(x: torch.Tensor, gate: nn.Linear, up: nn.Linear) -> torch.Tensor:
    """``F.silu(gate(x)) * up(x)`` for bias-free linear layers; in mixed-precision training one
    product for both, then our native activation on bf16 CPU tensors."""
    if _mixed_precision_training(x) and _plain((gate, up)):
        return activations.swiglu(_one_product(x, (gate, up)))
    return F.silu(gate(x)) * up(x)


def embedding(table: nn.Embedding, ids: torch.Tensor) -> torch.Tensor:
    """``table(ids)``; in a compiled CPU training step with its gradient by ``index_add_``."""
    weight = table.weight
    if (switch.ENABLED and torch.compiler.is_compiling() and weight.device.type == "cpu" and weight.requires_grad
            and torch.is_grad_enabled()):
        return embedding_grad.lookup(weight, ids)
    return table(ids)


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``F.cross_entropy`` of ``logits`` (``..., vocab``) in fp32 against ``targets`` (``...``), ``-100``
    not counted (NaN if none is left); for bf16 or fp16 logits of eager CPU training, in fewer passes."""
    flat, flat_targets = logits.reshape(-1, logits.size(-1)), targets.reshape(-1)
    if (switch.ENABLED and logits.dtype in (torch.bfloat16, torch.float16) and logits.device.type == "cpu"
            and logits.requires_grad and not torch.compiler.is_compiling()):
        return losses.blocked_cross_entropy(flat, flat_targets)
    return F.cross_entropy(flat.float(), flat_targets, ignore_index=losses.IGNORE_INDEX)


def rope(rotate: rotation.Rotate) -> rotation.Rotate:
    """Decorate ``rotate(x, cos, sin)``, a rotation by the angles ``(cos, sin)``: where autograd
    records it, its gradient is taken as the inverse rotation ``rotate(grad, cos, -sin)``."""
    if not switch.ENABLED:
        return rotate
    return functools.wraps(rotate)(rotation.with_inverse_gradient(rotate))
