"""Online learning: a model that trains on every line it is given and keeps them all.

``OnlineLearner`` (learner.py: pulses of training, growing vocabulary, generation) over a
state folder (state.py: lock, atomic saves, crash recovery), ``ReplayStore`` (replay.py:
durable, append-only inputs), text-file checks (textfiles.py) and the REPL behind
``foundry online`` (repl.py).
"""

from ..config.online import OnlineSettings
from ..utils.paths import default_state_dir
from .learner import OnlineLearner, PulseResult
from .replay import ReplayStore

__all__ = ["ReplayStore", "OnlineLearner", "OnlineSettings", "PulseResult", "default_state_dir"]
