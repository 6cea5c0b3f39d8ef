"""Online learning: a model that trains on every line it is given and keeps them all.

``ReplayStore`` (durable, append-only inputs), ``OnlineLearner`` (pulses of training,
growing vocabulary, atomic saves) and the REPL behind ``foundry online``.
"""

from .replay import ReplayStore
from .learner import OnlineLearner, OnlineSettings, PulseResult, default_state_dir

__all__ = ["ReplayStore", "OnlineLearner", "OnlineSettings", "PulseResult", "default_state_dir"]
