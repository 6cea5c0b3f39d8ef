"""Optimizers: AdamW for everything, or Muon for hidden matrices plus AdamW for the rest.

Muon orthogonalises each update of a 2-D weight (Newton-Schulz iterations), which
trains the transformer's hidden matrices faster per step; embeddings, the output
head and norm gains are not such matrices and stay with AdamW.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ..config import TrainConfig


def _adamw(groups: list[dict], cfg: TrainConfig, device: torch.device) -> torch.optim.Optimizer:
    kwargs = dict(lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps)
    # The fused kernel is one pass over all parameters; foreach is the fallback.
    try:
        return torch.optim.AdamW(groups, fused=True, **kwargs)
    except (RuntimeError, TypeError):
        return torch.optim.AdamW(groups, foreach=True, **kwargs)


def build_optimizers(model: nn.Module, cfg: TrainConfig) -> list[torch.optim.Optimizer]:
    """The optimizers for ``model``; each param group carries its peak lr as ``base_lr``."""
    device = next(model.parameters()).device
    hidden, decay, no_decay = [], [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim < 2:
            no_decay.append(p)  # norm gains: decaying them toward 0 only hurts
        elif cfg.optimizer == "muon" and name.startswith("layers."):
            hidden.append(p)
        else:
            decay.append(p)
    groups = [g for g in (
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ) if g["params"]]
    optimizers = [_adamw(groups, cfg, device)]
    if hidden:
        # match_rms_adamw scales Muon's update to AdamW's typical size, so muon_lr is
        # comparable across matrix shapes.
        optimizers.append(torch.optim.Muon(hidden, lr=cfg.muon_lr, weight_decay=cfg.weight_decay,
                                           momentum=0.95, adjust_lr_fn="match_rms_adamw"))
    for opt in optimizers:
        for g in opt.param_groups:
            g["base_lr"] = g["lr"]
    return optimizers


def set_lr(optimizers: list[torch.optim.Optimizer], factor: float) -> None:
    """Set every group's lr to ``base_lr * factor``."""
    for opt in optimizers:
        for g in opt.param_groups:
            g["lr"] = g["base_lr"] * factor
