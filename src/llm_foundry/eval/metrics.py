"""Language-model metrics.

* loss: mean cross-entropy in nats per token;
* perplexity: ``exp(loss)``;
* bits per byte: total bits over the text's UTF-8 bytes, which, unlike the other
  two, compares models with different tokenizers fairly.
"""

from __future__ import annotations

import math
from typing import Iterable

import torch

from ..models import MiniLLM
from ..tokenizers import Tokenizer
from ..tokenizers.special import UNK
from ..utils.device import autocast_context
from ..utils.errors import FoundryError


@torch.no_grad()
def mean_loss(model: MiniLLM, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], amp_dtype: torch.dtype | None = None) -> float:
    """Token-weighted mean loss of ``model`` over ``(x, y)`` batches."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    device = next(model.parameters()).device
    try:
        for x, y in batches:
            with autocast_context(device, amp_dtype):
                _, loss = model(x, y)
            n = int((y != -100).sum())
            total += float(loss) * n
            count += n
    finally:
        model.train(was_training)
    if count == 0:
        raise FoundryError("nothing to evaluate (no target tokens)")
    return total / count


def loss_metrics(loss: float, bytes_per_token: float) -> dict[str, float]:
    """``loss``, ``perplexity`` and ``bits_per_byte`` from a mean loss in nats/token."""
    return {
        "loss": loss,
        "perplexity": math.exp(min(loss, 50.0)),
        "bits_per_byte": loss / (math.log(2) * bytes_per_token) if bytes_per_token > 0 else float("nan"),
    }


def evaluate_text(model: MiniLLM, tokenizer: Tokenizer, text: str, batch_size: int = 8, seq_len: int | None = None,
                  amp_dtype: torch.dtype | None = None) -> dict[str, float]:
    """Score ``text`` in consecutive windows so every token after the first is predicted once.

    Returns the metrics plus ``tokens``, ``bytes`` and ``unknown_chars`` (characters a
    char tokenizer never saw; they are scored as its UNK token).
    """
    ids = tokenizer.encode(text)
    unk = tokenizer.token_id(UNK)
    unknown = sum(1 for i in ids if i == unk) if unk is not None else 0
    t = min(seq_len or model.cfg.max_seq_len, model.cfg.max_seq_len)
    if len(ids) < 2:
        raise FoundryError("text is too short to evaluate (needs at least 2 tokens)")
    device = next(model.parameters()).device
    data = torch.tensor(ids, dtype=torch.long)
    windows = []
    for start in range(0, len(ids) - 1, t):
        chunk = data[start:start + t + 1]
        windows.append((chunk[:-1], chunk[1:]))

    def batches():
        # Windows of equal length batch together; the last, shorter one goes alone.
        full = [w for w in windows if len(w[0]) == t]
        for i in range(0, len(full), batch_size):
            group = full[i:i + batch_size]
            yield torch.stack([g[0] for g in group]).to(device), torch.stack([g[1] for g in group]).to(device)
        for x, y in windows:
            if len(x) != t:
                yield x[None].to(device), y[None].to(device)

    loss = mean_loss(model, batches(), amp_dtype)
    n_bytes = len(text.encode("utf-8"))
    out = loss_metrics(loss, n_bytes / len(ids))
    out.update(tokens=len(ids), bytes=n_bytes, unknown_chars=unknown)
    return out
