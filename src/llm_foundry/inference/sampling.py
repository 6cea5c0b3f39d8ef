"""Sampling: choosing the next token from logits.

The arguments are checked once, by :func:`llm_foundry.config.sampling.check_sampling`
(re-exported here), with the same bounds at every entry point.
"""

from __future__ import annotations

import torch

from ..config.sampling import GREEDY_TEMPERATURE


def sample_next(logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """Pick one id per row of ``logits`` (``batch, vocab``).

    Args:
        temperature: 0 (or below ``GREEDY_TEMPERATURE``) means greedy (argmax); higher
            flattens the distribution.
        top_k: keep only the k most likely ids (None or 0: all).
        top_p: keep the smallest set of ids whose probability adds up to ``top_p`` (None or 1: all).
        generator: a seeded ``torch.Generator`` for reproducible samples.
    """
    logits = logits.float()
    if temperature < GREEDY_TEMPERATURE:
        return logits.argmax(dim=-1)
    logits = logits / temperature
    if top_k is not None and 0 < top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and 0 < top_p < 1:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        cum = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        # Drop an id once the ids before it already cover top_p (the first always stays).
        drop_sorted = (cum - sorted_logits.softmax(dim=-1)) >= top_p
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)
