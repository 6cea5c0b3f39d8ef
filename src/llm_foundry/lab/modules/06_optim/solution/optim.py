"""Module 6: the optimizers, rebuilt — AdamW and Muon by hand, gradient accumulation, and the
weights' moving average.

Our trainer (``src/llm_foundry/training/optim.py``) uses ``torch.optim.AdamW`` for embeddings,
the head and norm gains, and ``torch.optim.Muon`` for the blocks' matrices; ``training/step.py``
accumulates micro-batches and ``training/ema.py`` averages the weights. Here you write the update
rules those classes implement; the ``torch.optim.Optimizer`` plumbing around them is given.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

# Newton–Schulz quintic coefficients (Keller Jordan's Muon; the defaults of torch.optim.Muon).
NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)


def adamw_update(p: torch.Tensor, grad: torch.Tensor, state: dict, lr: float, betas: tuple[float, float],
                 eps: float, weight_decay: float) -> None:
    """One AdamW step of parameter ``p`` in place. ``state`` holds ``step`` (steps taken so far,
    starting at 0), ``exp_avg`` and ``exp_avg_sq`` (zeros at first); update all three."""
    # BEGIN SOLUTION adamw
    # STUB: # 1. count the step (state["step"] += 1) and update m = state["exp_avg"], v = state["exp_avg_sq"] in place
    # STUB: # 2. correct their bias (they start at zero), 3. decay p directly, 4. step by lr · m̂ / (sqrt(v̂) + eps)
    # STUB: raise NotImplementedError("adamw")
    beta1, beta2 = betas
    state["step"] += 1
    t = state["step"]
    m, v = state["exp_avg"], state["exp_avg_sq"]
    m.lerp_(grad, 1 - beta1)                      # m = β1·m + (1 − β1)·g
    v.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)  # v = β2·v + (1 − β2)·g²
    m_hat = m / (1 - beta1 ** t)                  # bias correction: m and v start at 0
    v_hat = v / (1 - beta2 ** t)
    p.mul_(1 - lr * weight_decay)                 # decoupled decay: not part of the gradient
    p.sub_(lr * m_hat / (v_hat.sqrt() + eps))
    # END SOLUTION


class AdamW(torch.optim.Optimizer):
    """AdamW with ``torch.optim.AdamW``'s arguments and defaults (no amsgrad, no fused kernels)."""

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.01):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state.update(step=0, exp_avg=torch.zeros_like(p), exp_avg_sq=torch.zeros_like(p))
                adamw_update(p, p.grad, state, group["lr"], group["betas"], group["eps"], group["weight_decay"])


def newton_schulz(g: torch.Tensor, steps: int = 5, eps: float = 1e-7) -> torch.Tensor:
    """An approximately orthogonal matrix with ``g``'s singular vectors (``U S' Vᵀ`` for
    ``g = U S Vᵀ``, ``S'`` near 1), by ``steps`` quintic Newton–Schulz iterations in float32."""
    # BEGIN SOLUTION newton_schulz
    # STUB: # scale g so that every singular value is ≤ 1, then `steps` times: x = a·x + (b·A + c·A²) @ x, A = x @ xᵀ
    # STUB: raise NotImplementedError("newton_schulz")
    a, b, c = NS_COEFFICIENTS
    x = g.float()
    tall = x.shape[0] > x.shape[1]
    if tall:  # iterate on the wide orientation: X Xᵀ is then the smaller Gram matrix
        x = x.T
    x = x / x.norm().clamp(min=eps)  # Frobenius norm ≥ spectral norm: every singular value ≤ 1
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x.T if tall else x
    # END SOLUTION


def adjusted_lr(lr: float, shape: torch.Size | tuple[int, ...], adjust_lr_fn: str | None) -> float:
    """Muon's learning rate for a ``shape = (A, B)`` matrix: ``"original"`` (or None) scales by
    ``sqrt(max(1, A / B))``, ``"match_rms_adamw"`` by ``0.2 · sqrt(max(A, B))``."""
    # BEGIN SOLUTION adjusted_lr
    a, b = shape[:2]
    if adjust_lr_fn is None or adjust_lr_fn == "original":
        return lr * math.sqrt(max(1, a / b))
    if adjust_lr_fn == "match_rms_adamw":
        return lr * 0.2 * math.sqrt(max(a, b))
    raise ValueError(f"unknown adjust_lr_fn {adjust_lr_fn!r}")
    # END SOLUTION


def muon_update(p: torch.Tensor, grad: torch.Tensor, state: dict, lr: float, momentum: float, nesterov: bool,
                weight_decay: float, ns_steps: int, adjust_lr_fn: str | None) -> None:
    """One Muon step of the matrix ``p`` in place; ``state["momentum_buffer"]`` starts at zeros."""
    # BEGIN SOLUTION muon
    # STUB: # momentum (an average) -> the matrix to orthogonalise (Nesterov or not) -> decay -> step by adjusted_lr · newton_schulz
    # STUB: raise NotImplementedError("muon")
    buf = state["momentum_buffer"]
    buf.lerp_(grad, 1 - momentum)  # buf = μ·buf + (1 − μ)·g
    update = grad.lerp(buf, momentum) if nesterov else buf
    p.mul_(1 - lr * weight_decay)
    p.sub_(adjusted_lr(lr, p.shape, adjust_lr_fn) * newton_schulz(update, ns_steps).to(p.dtype))
    # END SOLUTION


class Muon(torch.optim.Optimizer):
    """Muon for 2-D parameters, with ``torch.optim.Muon``'s arguments and defaults."""

    def __init__(self, params, lr: float = 1e-3, weight_decay: float = 0.1, momentum: float = 0.95,
                 nesterov: bool = True, ns_steps: int = 5, adjust_lr_fn: str | None = None):
        super().__init__(params, dict(lr=lr, weight_decay=weight_decay, momentum=momentum, nesterov=nesterov,
                                      ns_steps=ns_steps, adjust_lr_fn=adjust_lr_fn))

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["momentum_buffer"] = torch.zeros_like(p)
                muon_update(p, p.grad, state, group["lr"], group["momentum"], group["nesterov"],
                            group["weight_decay"], group["ns_steps"], group["adjust_lr_fn"])


def accumulate_gradients(model: nn.Module, x: torch.Tensor, y: torch.Tensor, micro_batches: int) -> torch.Tensor:
    """Backward over ``x``/``y`` in ``micro_batches`` equal chunks along the batch dimension, leaving
    in ``.grad`` the gradient of the mean loss over the whole batch (the gradients start empty).
    ``model(x, y)`` returns ``(logits, mean_loss)``. Returns the whole batch's mean loss, detached."""
    # BEGIN SOLUTION accumulate
    total = torch.zeros(())
    for xs, ys in zip(x.chunk(micro_batches), y.chunk(micro_batches)):
        loss = model(xs, ys)[1]
        (loss / micro_batches).backward()  # the mean of k equal-sized means is the overall mean
        total += loss.detach()
    return total / micro_batches
    # END SOLUTION


def ema_update(shadow: dict[str, torch.Tensor], model: nn.Module, decay: float, updates: int) -> None:
    """Move each ``shadow[name]`` toward the model's parameter of that name: ``shadow = d·shadow +
    (1 − d)·param`` with ``d = min(decay, (1 + updates) / (10 + updates))`` (``updates``: the number of
    earlier updates), as ``training/ema.py: EMA`` does."""
    # BEGIN SOLUTION ema
    # STUB: # the warm-up factor d, then each shadow[name] moves a fraction 1 − d of the way to the parameter
    # STUB: raise NotImplementedError("ema")
    d = min(decay, (1 + updates) / (10 + updates))
    for name, p in model.named_parameters():
        shadow[name].lerp_(p.detach().float(), 1 - d)
    # END SOLUTION
