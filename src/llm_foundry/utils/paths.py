"""Where llm-foundry keeps per-user files, following the XDG base directories."""

from __future__ import annotations

import os
from pathlib import Path


def default_state_dir() -> Path:
    """``$XDG_DATA_HOME/llm-foundry/online`` (``~/.local/share/llm-foundry/online``): the
    online learner's state when ``--state`` is not given."""
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(base) / "llm-foundry" / "online"
