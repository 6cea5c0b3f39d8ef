"""Exponential moving average of the weights.

The EMA copy is a smoothed model that often samples and evaluates better than the
raw weights late in training; it costs one extra copy of the parameters.
"""

from __future__ import annotations

import torch
import torch.nn as nn


class EMA:
    """``shadow = d * shadow + (1 - d) * param`` after every optimizer step.

    ``d`` warms up as ``min(decay, (1 + n) / (10 + n))`` over the first updates, so an
    early checkpoint is an average of trained weights, not mostly of the random init.
    """

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.updates = 0
        self.shadow = {n: p.detach().clone().float() for n, p in model.named_parameters()}

    def next_weight(self) -> float:
        """The weight ``1 - d`` of this update on the new parameters; counts the update."""
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        self.updates += 1
        return 1.0 - d

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        names, params = zip(*model.named_parameters())
        shadows = [self.shadow[n] for n in names]
        torch._foreach_lerp_(shadows, [p.detach().float() for p in params], self.next_weight())

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        """Overwrite ``model``'s weights with the EMA weights."""
        for n, p in model.named_parameters():
            p.copy_(self.shadow[n].to(p.dtype))

    @torch.no_grad()
    def resize_like(self, model: nn.Module) -> None:
        """Follow a model whose parameters grew along dim 0 (``MiniLLM.resize_vocab``).

        Existing shadow rows are kept; new rows start as the model's own new rows, so
        the average of a freshly added token is its initial value, not zero.
        """
        for n, p in model.named_parameters():
            old = self.shadow.get(n)
            if old is None:
                self.shadow[n] = p.detach().clone().float()
            elif old.shape != p.shape:
                if old.shape[1:] != p.shape[1:] or old.shape[0] > p.shape[0]:
                    raise ValueError(f"EMA cannot follow {n}: {tuple(old.shape)} -> {tuple(p.shape)}")
                grown = p.detach().clone().float()
                grown[:old.shape[0]] = old
                self.shadow[n] = grown

    def state_dict(self) -> dict:
        return {"decay": self.decay, "updates": self.updates, "shadow": self.shadow}

    def load_state_dict(self, state: dict) -> None:
        self.decay = state["decay"]
        self.updates = state.get("updates", 0)
        for n, t in state["shadow"].items():
            if n in self.shadow:
                self.shadow[n] = t.float().clone()
