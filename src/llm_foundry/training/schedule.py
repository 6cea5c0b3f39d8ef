"""Learning-rate schedules as one pure function of progress.

``progress`` runs from 0 to 1 over the run: ``step / max_steps``, or the share of
the time budget used, whichever is further along; so a time-budgeted run still
decays to its final rate just as time runs out.
"""

from __future__ import annotations

import math


def lr_factor(step: int, progress: float, schedule: str, warmup_steps: int, min_lr_ratio: float,
              decay_fraction: float = 0.2) -> float:
    """Multiplier on the peak learning rate at ``step``.

    Args:
        step: optimizer steps done so far.
        progress: share of the run done, in [0, 1].
        schedule: ``cosine``, ``wsd`` (warmup-stable-decay) or ``constant``.
        warmup_steps: linear warmup from ~0 to the peak.
        min_lr_ratio: floor of the decay, as a share of the peak.
        decay_fraction: for ``wsd``, the last share of the run that decays linearly.
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(max(progress, 0.0), 1.0)
    if schedule == "constant":
        return 1.0
    if schedule == "cosine":
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    if schedule == "wsd":
        start = 1.0 - decay_fraction
        if progress < start:
            return 1.0
        return 1.0 - (1 - min_lr_ratio) * (progress - start) / decay_fraction
    raise ValueError(f"unknown schedule {schedule}")
