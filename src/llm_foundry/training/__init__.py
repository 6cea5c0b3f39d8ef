"""Training: optimizers, schedules, EMA, checkpoints and the Trainer loop."""

from .schedule import lr_factor
from .optim import build_optimizers
from .ema import EMA
from .checkpoint import save_model_dir, load_model_dir, load_model_config, ModelBundle
from .trainer import Trainer, TrainingInterrupted

__all__ = ["lr_factor", "build_optimizers", "EMA", "save_model_dir", "load_model_dir", "load_model_config",
           "ModelBundle", "Trainer", "TrainingInterrupted"]
