"""The training state: everything beyond the weights that an exact resume needs.

One versioned layout, written and read only here, shared by every trainer
(pretraining, mid-training/SFT, RL, evolve's local training) and meant for the
online learner too::

    {"format": 2,
     "step": int,                     optimizer steps taken
     "optimizers": [state_dict, ...], moments, in build_optimizers' order
     "ema": EMA.state_dict() | None,
     "scaler": GradScaler.state_dict() | None,
     "raw_weights": state_dict | None, the raw weights when the saved model holds the EMA's
     "rng": {"torch": tensor, "cuda": [tensor] | None, "python": [...] | None},
     "extra": {...}}                  each owner's own counters (tokens seen, records seen, ...)

Files from before the ``format`` number (three unversioned layouts: the trainer's,
the online learner's and evolve's) are read too: their keys beyond the common ones
become ``extra``.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..utils.errors import FoundryError

FORMAT = 2  # 1 is the unversioned layout of before
COMMON_KEYS = ("step", "optimizers", "ema", "scaler", "raw_weights", "rng")


@dataclass
class TrainingState:
    """A training state in memory (see the module docstring for each field)."""

    step: int
    optimizers: list[dict]
    ema: dict | None = None
    scaler: dict | None = None
    raw_weights: dict[str, torch.Tensor] | None = None
    rng: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def capture(cls, step: int, model: torch.nn.Module, optimizers: list[torch.optim.Optimizer], ema=None,
                scaler: torch.amp.GradScaler | None = None, extra: dict[str, Any] | None = None,
                python_rng=None) -> "TrainingState":
        """The state of these pieces now; ``python_rng`` a ``random.Random`` whose state to keep too."""
        rng: dict[str, Any] = {"torch": torch.get_rng_state(),
                               "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}
        if python_rng is not None:
            version, internal, _ = python_rng.getstate()
            rng.update(python=list(internal), python_version=version)
        return cls(step=step, optimizers=[opt.state_dict() for opt in optimizers],
                   ema=ema.state_dict() if ema is not None else None,
                   scaler=scaler.state_dict() if scaler is not None and scaler.is_enabled() else None,
                   # With an EMA the saved model holds the averaged weights; training continues from these.
                   raw_weights=model.state_dict() if ema is not None else None,
                   rng=rng, extra=dict(extra or {}))

    def to_bytes(self) -> bytes:
        """The state serialised with ``torch.save`` (for a checkpoint written as one unit)."""
        buf = io.BytesIO()
        torch.save({"format": FORMAT, "step": self.step, "optimizers": self.optimizers, "ema": self.ema,
                    "scaler": self.scaler, "raw_weights": self.raw_weights, "rng": self.rng, "extra": self.extra}, buf)
        return buf.getvalue()

    def restore(self, model: torch.nn.Module, optimizers: list[torch.optim.Optimizer], ema=None,
                scaler: torch.amp.GradScaler | None = None, base_lrs: list[float] | None = None,
                python_rng=None, rng: bool = True) -> None:
        """Load this state into the pieces: raw weights, optimizers, EMA, scaler and RNG.

        Args:
            base_lrs: each optimizer's peak lr from the current config (it may differ from the saved run's).
            rng: False leaves the random states for a later :meth:`restore_rng` (a caller that
                checks more before it switches over).

        Raises:
            FoundryError: the optimizers do not match the saved ones.
        """
        if len(self.optimizers) != len(optimizers):
            raise FoundryError("saved optimizer state does not match train.optimizer; resume with the same optimizer")
        if self.raw_weights is not None:
            model.load_state_dict(self.raw_weights)
        for k, (opt, sd) in enumerate(zip(optimizers, self.optimizers)):
            opt.load_state_dict(sd)
            if base_lrs is not None:
                for g in opt.param_groups:
                    g["base_lr"] = base_lrs[k]
        if ema is not None and self.ema is not None:
            ema.load_state_dict(self.ema)
        if scaler is not None and self.scaler:
            scaler.load_state_dict(self.scaler)
        if rng:
            self.restore_rng(python_rng)

    def restore_rng(self, python_rng=None) -> None:
        """Put back the saved random states: torch's, CUDA's and (given) ``python_rng``'s."""
        if self.rng.get("torch") is not None:
            torch.set_rng_state(self.rng["torch"].cpu())
        if torch.cuda.is_available() and self.rng.get("cuda") is not None:
            torch.cuda.set_rng_state_all([s.cpu() for s in self.rng["cuda"]])
        if python_rng is not None and self.rng.get("python") is not None:
            python_rng.setstate((self.rng["python_version"], tuple(self.rng["python"]), None))


def load_state(path: str | Path, device: torch.device | str = "cpu") -> TrainingState:
    """Read a ``training_state.pt`` of this format or of the unversioned layouts before it.

    Raises:
        FoundryError: a damaged file, or one written by a newer version.
    """
    path = Path(path)
    try:
        raw = torch.load(path, map_location=device, weights_only=True)
    except FileNotFoundError:
        raise FoundryError(f"training state not found: {path}") from None
    except Exception as e:
        raise FoundryError(f"training state is corrupt: {path} ({str(e).splitlines()[0][:100]})") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("step"), int) or not isinstance(raw.get("optimizers"), list):
        raise FoundryError(f"training state is corrupt: {path} (not a training state)")
    version = raw.get("format", 1)
    if not isinstance(version, int) or version > FORMAT:
        raise FoundryError(f"{path} was written by a newer llm-foundry (state format {version}); "
                           "upgrade llm-foundry to resume it")
    if version == 1:  # the unversioned layouts: what is not common was each owner's own
        extra = {k: v for k, v in raw.items() if k not in COMMON_KEYS}
    else:
        extra = dict(raw.get("extra") or {})
    return TrainingState(step=raw["step"], optimizers=raw["optimizers"], ema=raw.get("ema"), scaler=raw.get("scaler") or None,
                         raw_weights=raw.get("raw_weights"), rng=dict(raw.get("rng") or {}), extra=extra)


# ----------------------------------------------------------------------------- checkpoints
def save_checkpoint(out: str | Path, parts, tokenizer, step: int, extra: dict[str, Any] | None = None,
                    python_rng=None) -> None:
    """Write the run folder ``out``'s checkpoint as one unit: model folder files and training state.

    Args:
        parts: the :class:`~llm_foundry.training.step.StepParts` trained.
        extra: the owner's own counters, kept in the state's ``extra``.

    With an EMA the saved model holds the averaged weights (what generation should use)
    and the state the raw ones (what training continues from).
    """
    from ..models.model_dir import save_checkpoint_dir

    from .lora import has_lora, split_lora

    state = TrainingState.capture(step, parts.model, parts.optimizers, parts.ema, parts.scaler, extra, python_rng)
    weights, files = None, None
    if parts.ema is not None:
        weights = {k: parts.ema.shadow.get(k, v) for k, v in state.raw_weights.items()}
    if has_lora(parts.model):  # the base weights under their plain names, the adapters beside them
        weights, files = split_lora(parts.model, weights)
    save_checkpoint_dir(out, parts.model, tokenizer, step, weights=weights, state_bytes=state.to_bytes(),
                        extra_files=files)


def resume_checkpoint(out: str | Path, parts, weights_step: int, base_lrs: list[float] | None = None,
                      python_rng=None) -> TrainingState:
    """Load ``out``'s training state into ``parts`` (whose model holds ``out``'s weights of ``weights_step``).

    Raises:
        FoundryError: a damaged state, or weights and state of different steps.
    """
    from ..models.model_dir import STATE_FILE

    device = next(parts.model.parameters()).device
    state = load_state(Path(out) / STATE_FILE, device)
    if state.step != weights_step:
        raise FoundryError(f"{out} holds weights of step {weights_step} but training state of step "
                           f"{state.step}: they come from different saves (a save an older version could not finish, "
                           f"or a file replaced by hand)")
    state.restore(parts.model, parts.optimizers, parts.ema, parts.scaler, base_lrs, python_rng)
    return state
