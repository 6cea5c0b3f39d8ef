"""Module 7: the base training loop, rebuilt — the step, the loop and its log, the checkpoint, and
a resume that gives exactly the losses of a run that never stopped.

Our trainer splits the same work over a few files: ``src/llm_foundry/training/step.py``
(``train_step``: set the lr, forward, backward), ``training/optim.py`` (``optimizer_step``: clip,
step, clear the gradients), ``training/loop.py`` (``run_loop``: step until done, call the hooks),
``training/trainer.py`` (``Trainer``: the lr schedule, batch ``i`` of the step, the log) and
``training/state.py`` (``TrainingState``: everything beyond the weights that a resume needs).
Here they fit in one file, for one optimizer and no mixed precision.

It trains any model whose ``forward(x, y)`` returns ``(logits, mean_loss)`` — your module-5
``MiniLLM`` — with any ``torch.optim.Optimizer`` — your module-6 ``AdamW``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn

Batch = tuple[torch.Tensor, torch.Tensor]


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
               grad_clip: float = 1.0) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One optimizer step on the batch ``(x, y)``: forward, backward, clip the gradients' global
    norm to ``grad_clip`` (0: no clipping), step, and clear the gradients for the next step.

    Returns:
        the batch's mean loss (detached) and the gradients' global norm *before* clipping (None
        without clipping), as ``training/optim.py: optimizer_step`` returns it for the log.
    """
    # BEGIN SOLUTION step
    # STUB: # forward -> backward -> clip the global norm (torch.nn.utils.clip_grad_norm_) -> step -> clear the gradients
    # STUB: raise NotImplementedError("step")
    _, loss = model(x, y)
    loss.backward()
    norm = None
    if grad_clip > 0:  # the norm of all gradients as one vector, before it is scaled down
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)  # .grad adds up: the next step must start from nothing
    return loss.detach(), norm
    # END SOLUTION


def train(model: nn.Module, optimizer: torch.optim.Optimizer, get_batch: Callable[[int], Batch], steps: int, *,
          lr_at: Callable[[int], float] | None = None, grad_clip: float = 1.0, start_step: int = 0,
          on_step: Callable[[int, float], None] | None = None) -> list[float]:
    """Train from step ``start_step`` until ``steps`` steps are done (``steps`` is the run's total,
    as our ``max_steps``: a resumed run passes the same number).

    Args:
        get_batch: step index -> ``(x, y)``; a pure function of the index, so a resumed run sees
            the batches an uninterrupted one would.
        lr_at: step index -> learning rate, set on every parameter group before the step (None:
            leave the optimizer's lr alone).
        on_step: called after each step with ``(steps done so far, loss)`` — the hook that logs,
            and that may save a checkpoint.

    Returns:
        the loss of each step taken, as floats.
    """
    # BEGIN SOLUTION train
    # STUB: # for each step from start_step to steps: set the lr of every param group (lr_at), take batch `step`,
    # STUB: # one train_step, keep its loss as a float, call on_step(steps done, loss)
    # STUB: raise NotImplementedError("train")
    model.train()
    losses = []
    for step in range(start_step, steps):
        if lr_at is not None:
            lr = lr_at(step)
            for group in optimizer.param_groups:
                group["lr"] = lr
        x, y = get_batch(step)
        loss, _ = train_step(model, optimizer, x, y, grad_clip)
        losses.append(loss.item())
        if on_step is not None:
            on_step(step + 1, losses[-1])
    return losses
    # END SOLUTION


def save_checkpoint(path: str | os.PathLike, model: nn.Module, optimizer: torch.optim.Optimizer, step: int) -> None:
    """Save everything a resume needs — the weights, the optimizer's state (its moments), the step
    and torch's random state — as one file, atomically: a crash during the save leaves the old
    checkpoint as it was (write a temporary file in the same folder, then ``os.replace`` it)."""
    # BEGIN SOLUTION save
    # STUB: # one dict: model and optimizer state_dict(), step, torch.get_rng_state(); torch.save it to a temporary
    # STUB: # file next to `path`, then os.replace(tmp, path) — never write `path` itself half-way
    # STUB: raise NotImplementedError("save")
    path = Path(path)
    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step,
             "rng": torch.get_rng_state()}
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        torch.save(state, tmp)
        os.replace(tmp, path)  # atomic: a reader sees the old file or the new one, never half of one
    finally:
        tmp.unlink(missing_ok=True)
    # END SOLUTION


def load_checkpoint(path: str | os.PathLike, model: nn.Module, optimizer: torch.optim.Optimizer) -> int:
    """Load a checkpoint of :func:`save_checkpoint` into ``model`` and ``optimizer`` and restore
    torch's random state; returns the step to continue from (pass it to ``train`` as ``start_step``)."""
    # BEGIN SOLUTION load
    # STUB: # torch.load the dict, load_state_dict into the model and the optimizer, torch.set_rng_state, return the step
    # STUB: raise NotImplementedError("load")
    state = torch.load(path, weights_only=True)
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    torch.set_rng_state(state["rng"])
    return state["step"]
    # END SOLUTION
