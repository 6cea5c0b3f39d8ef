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


@torch.no_grad()
def replace_parameter(optimizers: list[torch.optim.Optimizer], old: torch.Tensor, new: torch.Tensor) -> bool:
    """Hand ``new`` to the optimizers in place of ``old``, carrying its state over.

    Used when a parameter is reallocated larger along dim 0 (a vocabulary that grows,
    see ``MiniLLM.resize_vocab``): every state tensor shaped like ``old`` (AdamW's
    ``exp_avg``/``exp_avg_sq``, Muon's momentum) keeps its rows and gets zero rows for
    the new ones, so the new rows start with fresh moments and the old rows lose none.
    Without this the optimizer keeps stepping the stale tensor and the new rows never learn.

    Returns:
        whether any optimizer held ``old``.
    """
    if new.shape[1:] != old.shape[1:] or new.shape[0] < old.shape[0]:
        raise ValueError(f"replace_parameter only grows dim 0: {tuple(old.shape)} -> {tuple(new.shape)}")
    found = False
    for opt in optimizers:
        for group in opt.param_groups:
            for i, p in enumerate(group["params"]):
                if p is not old:
                    continue
                group["params"][i] = new
                found = True
                state = opt.state.pop(old, None)
                if state is None:
                    continue
                grown = {}
                for key, value in state.items():
                    if torch.is_tensor(value) and value.shape == old.shape:
                        pad = value.new_zeros((new.shape[0] - old.shape[0], *old.shape[1:]))
                        value = torch.cat([value, pad], dim=0)
                    grown[key] = value
                opt.state[new] = grown
    return found
