"""RoPE's gradient written as the inverse rotation, for a compiled CPU training step.

Autograd's own gradient of the rotation (slices of each head's halves, then a
concatenation) pads each half with zeros and adds them, which Inductor compiles on a CPU
into masked loads with per-element index arithmetic: twice the time of the forward. But
the rotation is orthogonal, so its gradient is the rotation by the opposite angle: the
same clean loop as the forward (figures in ``docs/*/performance.md``).
"""

from __future__ import annotations

from typing import Callable

import torch

Rotate = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def with_inverse_gradient(rotate: Rotate) -> Rotate:
    """``rotate(x, cos, sin)`` whose gradient is ``rotate(grad, cos, -sin)`` where autograd records it."""

    class Rotation(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
            ctx.save_for_backward(cos, sin)
            return rotate(x, cos, sin)

        @staticmethod
        def backward(ctx, grad: torch.Tensor):
            cos, sin = ctx.saved_tensors
            return rotate(grad, cos, -sin), None, None

    def rotate_with_inverse_gradient(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        if x.requires_grad and torch.is_grad_enabled():
            return Rotation.apply(x, cos, sin)
        return rotate(x, cos, sin)

    return rotate_with_inverse_gradient
