"""Training: optimizers, schedules, EMA, checkpoints and the Trainer loop (loaded on first use)."""

from ..utils.errors import TrainingInterrupted
from ..utils.lazy import lazy_exports

_EXPORTS = {"lr_factor": ".schedule", "build_optimizers": ".optim", "EMA": ".ema", "Trainer": ".trainer"}
__all__ = [*_EXPORTS, "TrainingInterrupted"]
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
