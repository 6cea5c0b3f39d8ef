"""Module 8: mid-training, rebuilt — the data mixture (weights -> counts, an order fixed by the seed,
draws with replacement) and the learning-rate schedule of a stage.

Ours: ``src/llm_foundry/data/synthetic.py`` (``make_mixture``: exact counts from weights, shuffled by
the seed — each example at most once, "without replacement"), ``data/chat_batches.py``
(``ChatMixture``: every conversation of a packed row drawn by weight — "with replacement", a source
can come up again and again), ``training/schedule.py`` (``lr_factor``: warm-up, then cosine, wsd or
constant) and ``training/stages.py`` (the ``midtrain`` stage: module 7's trainer on the mixture,
starting from the base model's weights).
"""

from __future__ import annotations

import math
import random

import numpy as np


def mixture_counts(weights: dict[str, float], n: int) -> dict[str, int]:
    """How many of ``n`` examples each source gets: ``floor(n · w / total)``, and the few left over
    by the rounding go one each to the sources with the largest weights first (ties in the order
    given), cycling if needed — exactly as ``make_mixture`` does, so the counts add up to ``n``."""
    # BEGIN SOLUTION counts
    # STUB: # floor(n * w / total) for each source, then hand out the remainder one by one,
    # STUB: # largest weights first (sorted is stable: ties keep their order), cycling
    # STUB: raise NotImplementedError("counts")
    total = sum(weights.values())
    names = list(weights)
    counts = {name: int(n * weights[name] / total) for name in names}
    by_weight = sorted(names, key=lambda name: -weights[name])
    for i in range(n - sum(counts.values())):
        counts[by_weight[i % len(names)]] += 1
    return counts
    # END SOLUTION


def mixture_order(weights: dict[str, float], n: int, seed: int) -> list[str]:
    """The source of each of ``n`` examples, in training order: ``mixture_counts`` of each, laid
    out source after source, then shuffled by ``random.Random(f"mixture:train:{seed}")`` — the
    generator ``make_mixture`` uses, so the order is ours for the same seed. Without replacement:
    every count is exact."""
    # BEGIN SOLUTION order
    # STUB: raise NotImplementedError("order")
    order = [name for name, count in mixture_counts(weights, n).items() for _ in range(count)]
    random.Random(f"mixture:train:{seed}").shuffle(order)
    return order
    # END SOLUTION


def draw_sources(weights: dict[str, float], n: int, seed: int) -> list[str]:
    """``n`` sources drawn one by one with probability ``w / total`` — with replacement, as
    ``ChatMixture`` picks the next conversation of a row — from ``np.random.default_rng(seed)``.
    The counts now vary around ``n · w / total``; the same seed gives the same draws."""
    # BEGIN SOLUTION draw
    # STUB: raise NotImplementedError("draw")
    names = list(weights)
    probs = np.array([weights[name] for name in names], dtype=np.float64)
    probs /= probs.sum()
    rng = np.random.default_rng(seed)
    return [names[int(rng.choice(len(names), p=probs))] for _ in range(n)]
    # END SOLUTION


def lr_factor(step: int, progress: float, schedule: str, warmup_steps: int, min_lr_ratio: float,
              decay_fraction: float = 0.2) -> float:
    """The multiplier on the peak learning rate at ``step`` (steps done so far), as
    ``training/schedule.py`` computes it.

    Args:
        progress: the share of the run done, in [0, 1] (steps, or the time budget used).
        schedule: ``cosine`` (to ``min_lr_ratio``), ``wsd`` (stable, then a linear decay over the
            last ``decay_fraction`` of the run) or ``constant``.
        warmup_steps: a linear warm-up first: ``(step + 1) / warmup_steps``, whatever the schedule.
    """
    # BEGIN SOLUTION lr
    # STUB: # warm-up first (step < warmup_steps: (step + 1) / warmup_steps); then, with progress clamped to [0, 1]:
    # STUB: # constant 1; cosine from 1 down to min_lr_ratio; wsd 1 until 1 - decay_fraction, then linear to min_lr_ratio
    # STUB: raise NotImplementedError("lr")
    if step < warmup_steps:
        return (step + 1) / warmup_steps  # never 0: the first step already learns
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
    # END SOLUTION
