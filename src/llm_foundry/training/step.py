"""One optimizer step, the same for every trainer.

    set the lr -> for each micro-batch: loss (autocast) -> backward (scaled for fp16)
               -> clip + optimizer step + EMA (``optim.optimizer_step``, which also owns fp16's GradScaler path)

The caller supplies the micro-batch losses: pretraining and SFT a forward pass on
batch ``i``, RL its policy-gradient loss. Nothing here reads a value back from the
device, so a step queues its work without waiting for it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn as nn

from ..config import TrainConfig
from ..utils.device import autocast_context
from .ema import EMA
from .optim import build_optimizers, optimizer_step, set_lr


@dataclass
class StepParts:
    """What a step changes and how: the model, its optimizers, EMA and loss scaler.

    Attributes:
        model: the module whose parameters are trained.
        optimizers: from :func:`~llm_foundry.training.optim.build_optimizers`.
        ema: the weights' moving average, or None.
        scaler: fp16 loss scaling; None (or disabled) for bf16 and fp32.
        amp_dtype: the autocast dtype, or None for fp32.
        grad_clip: clip the global gradient norm to this (0 = off).
        grad_sync: under DDP/FSDP, turns the processes' gradient exchange on or off
            (``training/distributed.py``): on only for a step's last micro-batch.
        grad_norm: the last step's gradient norm before clipping (None: not computed), for logs.
    """

    model: nn.Module
    optimizers: list[torch.optim.Optimizer]
    ema: EMA | None = None
    scaler: torch.amp.GradScaler | None = None
    amp_dtype: torch.dtype | None = None
    grad_clip: float = 0.0
    grad_sync: Callable[[bool], None] | None = None
    grad_norm: torch.Tensor | float | None = None

    device: torch.device = field(init=False)  # autocast's device, looked up once

    def __post_init__(self) -> None:
        self.device = next(self.model.parameters()).device

    @classmethod
    def build(cls, model: nn.Module, cfg: TrainConfig, amp_dtype: torch.dtype | None) -> "StepParts":
        """Fresh optimizers, EMA (``cfg.ema_decay`` > 0) and scaler (fp16 only) for ``model``."""
        scaler = loss_scaler(next(model.parameters()).device, amp_dtype)
        return cls(model, build_optimizers(model, cfg), EMA(model, cfg.ema_decay) if cfg.ema_decay > 0 else None,
                   scaler, amp_dtype, cfg.grad_clip)


def loss_scaler(device: torch.device, amp_dtype: torch.dtype | None) -> torch.amp.GradScaler:
    """The step's loss scaler: fp16 gradients underflow without one; for bf16/fp32 it stays off."""
    return torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)


def train_step(parts: StepParts, lr_factor: float, micro_batches: int,
               loss_of: Callable[[int], torch.Tensor]) -> torch.Tensor:
    """One optimizer step over ``micro_batches`` micro-batches at ``lr_factor`` times the peak lr.

    Args:
        loss_of: micro-batch index -> its mean loss (called under autocast); the gradient is
            that of the mean over the micro-batches, as one batch of all of them would give.

    Returns:
        the sum of the micro-batch losses, detached (a tensor: reading it is the caller's sync).
    """
    set_lr(parts.optimizers, lr_factor)
    scaler = parts.scaler if parts.scaler is not None and parts.scaler.is_enabled() else None
    total = None
    for i in range(micro_batches):
        if parts.grad_sync is not None:
            parts.grad_sync(i == micro_batches - 1)
        with autocast_context(parts.device, parts.amp_dtype):
            loss = loss_of(i)
        scaled = loss / micro_batches if micro_batches > 1 else loss
        (scaler.scale(scaled) if scaler is not None else scaled).backward()
        total = loss.detach() if total is None else total + loss.detach()
    parts.grad_norm = optimizer_step(parts.model, parts.optimizers, parts.grad_clip, parts.ema, scaler)
    return total
