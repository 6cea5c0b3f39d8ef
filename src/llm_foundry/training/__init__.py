"""Training: one step (step.py), one loop (loop.py), one training state (state.py), and the
trainers built on them: pretraining (trainer.py), mid-training/SFT (stages.py), RL (rl.py)."""

from ..utils.errors import TrainingInterrupted
from ..utils.lazy import lazy_exports

_EXPORTS = {"lr_factor": ".schedule", "build_optimizers": ".optim", "EMA": ".ema", "Trainer": ".trainer"}
__all__ = [*_EXPORTS, "TrainingInterrupted"]
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
