"""Training: one step (step.py), one loop (loop.py), one training state (state.py), and the
trainer built on them, fed by a batch source: a token data folder for pretraining
(trainer.py), a conversation mixture for mid-training/SFT (stages.py); RL (rl.py) supplies
its own loss to the same step and loop."""

from ..utils.errors import TrainingInterrupted
from ..utils.lazy import lazy_exports

_EXPORTS = {"lr_factor": ".schedule", "build_optimizers": ".optim", "optimizer_step": ".optim", "EMA": ".ema",
            "StepParts": ".step", "train_step": ".step", "run_loop": ".loop", "TrainingState": ".state",
            "Trainer": ".trainer", "BatchSource": ".trainer", "TokenFolderSource": ".trainer",
            "ChatSource": ".stages", "stage_trainer": ".stages", "run_stage": ".stages", "run_rl": ".rl"}
__all__ = [*_EXPORTS, "TrainingInterrupted"]
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
