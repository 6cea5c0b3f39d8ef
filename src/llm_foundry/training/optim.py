"""Optimizers: AdamW for everything, or Muon for hidden matrices plus AdamW for the rest.

Muon orthogonalises each update of a 2-D weight (Newton-Schulz iterations), which
trains the transformer's hidden matrices faster per step; embeddings, the output
head and norm gains are not such matrices and stay with AdamW.
"""

from __future__ import annotations

import math
import weakref

import torch
import torch.nn as nn

from ..config import TrainConfig
from ..kernels import cpu_kernels
from .ema import EMA


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
        # An FSDP model's matrices are shards (DTensors): its Muon orthogonalises whole matrices.
        from .distributed import ShardedMuon, is_sharded

        muon = ShardedMuon if any(is_sharded(p) for p in hidden) else torch.optim.Muon
        optimizers.append(muon(hidden, lr=cfg.muon_lr, weight_decay=cfg.weight_decay,
                               momentum=0.95, adjust_lr_fn="match_rms_adamw"))
    for opt in optimizers:
        for g in opt.param_groups:
            g["base_lr"] = g["lr"]
    return optimizers


def optimizer_step(model: nn.Module, optimizers: list[torch.optim.Optimizer], grad_clip: float,
                   ema: EMA | None = None, scaler: torch.amp.GradScaler | None = None) -> torch.Tensor | float | None:
    """Clip the gradients' global norm to ``grad_clip`` (0: no clipping), step ``optimizers``,
    clear the gradients and update ``ema``; returns the norm before clipping (None without
    clipping: it is not computed then), a tensor where reading it would wait for the device.

    With an enabled fp16 ``scaler`` the gradients are unscaled before clipping, and a step
    whose gradients overflowed is skipped (``GradScaler.step``). Otherwise, where every
    parameter is an fp32 CPU tensor stepped by AdamW and the native kernels build, the
    clipping, AdamW and the EMA run as one pass over memory (``cpu_kernels``) with the
    optimizers' own state, so checkpoints are unchanged; elsewhere PyTorch's
    ``clip_grad_norm_``, ``step`` and :meth:`EMA.update` do the same in four passes.
    """
    scaling = scaler is not None and scaler.is_enabled()
    done, norm = (False, None) if scaling else _native_adamw_step(model, optimizers, grad_clip, ema)
    if not done:
        if grad_clip > 0:
            if scaling:
                for opt in optimizers:
                    scaler.unscale_(opt)
            # Also right for an FSDP model: its gradients are DTensors, and the norm is the global one.
            norm = torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip, foreach=True)
        for opt in optimizers:
            if scaling:
                scaler.step(opt)  # skipped when the gradients overflowed
            else:
                opt.step()
        if scaling:
            scaler.update()
        if ema is not None:
            ema.update(model)
    for opt in optimizers:
        opt.zero_grad(set_to_none=True)
    return norm


def _plain_fp32_cpu(t: torch.Tensor) -> bool:
    # A DTensor (a shard of an FSDP model) is no plain tensor: the native kernel would see its shard only.
    return (type(t) in (torch.Tensor, nn.Parameter) and t.dtype is torch.float32 and t.is_contiguous()
            and t.device.type == "cpu" and not t.is_sparse)


# Per model: the ids of the parameters its optimizers held when last checked, and the name of
# each (for the EMA): walking the module tree every step costs more than the lookup.
_names_cache: "weakref.WeakKeyDictionary[nn.Module, tuple[tuple[int, ...], dict[int, str]]]" = (
    weakref.WeakKeyDictionary())


def _parameter_names(model: nn.Module, held: list[torch.Tensor]) -> dict[int, str] | None:
    """Names of the parameters ``held`` by the optimizers by id, or None unless they are exactly
    the model's parameters (each once)."""
    key = tuple(id(p) for p in held)
    cached = _names_cache.get(model)
    if cached is not None and cached[0] == key:
        return cached[1]
    names = {id(p): n for n, p in model.named_parameters()}
    if sorted(key) != sorted(names):
        return None
    _names_cache[model] = (key, names)
    return names


@torch.no_grad()
def _native_adamw_step(model: nn.Module, optimizers: list[torch.optim.Optimizer], grad_clip: float,
                       ema: EMA | None) -> tuple[bool, float | None]:
    """:func:`optimizer_step` in one native pass: (True, the gradient norm or None without clipping),
    or (False, None), having changed nothing, where it does not apply."""
    if not cpu_kernels.available():
        return False, None
    entries = []  # (optimizer, group, parameter), every parameter of the model once
    for opt in optimizers:
        if type(opt) is not torch.optim.AdamW:
            return False, None
        for group in opt.param_groups:
            if (group["amsgrad"] or group["maximize"] or group["capturable"] or group["differentiable"]
                    or torch.is_tensor(group["lr"])):
                return False, None
            entries += [(opt, group, p) for p in group["params"]]
    names = _parameter_names(model, [p for _, _, p in entries])
    if names is None:
        return False, None
    for opt, _, p in entries:
        state = opt.state.get(p)
        if p.grad is None or not _plain_fp32_cpu(p) or not _plain_fp32_cpu(p.grad) or (state and not (
                _plain_fp32_cpu(state["exp_avg"]) and _plain_fp32_cpu(state["exp_avg_sq"]))):
            return False, None
        shadow = ema.shadow.get(names[id(p)]) if ema is not None else p
        if shadow is None or shadow.shape != p.shape or not _plain_fp32_cpu(shadow):
            return False, None
    params, grads, exp_avgs, exp_avg_sqs, steps = [], [], [], [], []
    for opt, _, p in entries:
        state = opt.state[p]
        if not state:  # as torch.optim.AdamW initialises it
            state["step"] = torch.tensor(0.0, dtype=torch.float32)
            state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        params.append(p)
        grads.append(p.grad)
        exp_avgs.append(state["exp_avg"])
        exp_avg_sqs.append(state["exp_avg_sq"])
        steps.append(state["step"])
    torch._foreach_add_(steps, 1.0)
    hyper = []
    for (_, group, _), step in zip(entries, steps):
        (beta1, beta2), lr, n = group["betas"], group["lr"], step.item()
        hyper += [lr * group["weight_decay"], beta1, beta2, group["eps"], lr / (1 - beta1 ** n),
                  1 / math.sqrt(1 - beta2 ** n)]
    scale, norm = 1.0, None
    if grad_clip > 0:  # torch.nn.utils.clip_grad_norm_'s coefficient
        norm = math.sqrt(cpu_kernels.sum_squares(grads))
        scale = min(1.0, grad_clip / (norm + 1e-6))
    emas, weight = None, 0.0
    if ema is not None:
        emas, weight = [ema.shadow[names[id(p)]] for p in params], ema.next_weight()
    cpu_kernels.adamw_ema_step(params, grads, exp_avgs, exp_avg_sqs, emas, torch.tensor(hyper, dtype=torch.float32),
                               scale, weight)
    return True, norm


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


def peak_lrs(optimizers: list[torch.optim.Optimizer], cfg: TrainConfig) -> list[float]:
    """Each optimizer's peak lr under ``cfg`` (Muon's ``muon_lr``, AdamW's ``lr``): a resumed
    run follows the config it is resumed with, not the saved one."""
    return [cfg.muon_lr if isinstance(opt, torch.optim.Muon) else cfg.lr for opt in optimizers]
