"""Data from the local knowledge base: hard passages, filtered self-generated text, text stats.

* Hard-example mining: score a seeded sample of training windows with the champion
  and keep the ones it predicts worst.
* Self-generation: the champion continues prompts cut from the training text; a
  sample is kept only if it passes a quality filter (valid text, not repetitive) and
  a novelty filter (not copied from the corpus, not a near-duplicate of kept text).
* Diversity and repetition of generated text, used in the candidates' scores.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..inference.generator import Generator
from ..models import MiniLLM
from ..utils.device import autocast_context


@torch.no_grad()
def window_losses(model: MiniLLM, tokens: np.ndarray, offsets: np.ndarray, seq_len: int,
                  amp_dtype: torch.dtype | None = None, batch_size: int = 16) -> np.ndarray:
    """Mean loss of ``model`` on each window ``tokens[off : off + seq_len + 1]``."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out = []
    try:
        for i in range(0, len(offsets), batch_size):
            rows = np.stack([tokens[o:o + seq_len + 1] for o in offsets[i:i + batch_size]]).astype(np.int64)
            data = torch.from_numpy(rows).to(device)
            x, y = data[:, :-1], data[:, 1:]
            with autocast_context(device, amp_dtype):
                logits, _ = model(x)
            loss = F.cross_entropy(logits.float().transpose(1, 2), y, reduction="none").mean(dim=1)
            out.append(loss.cpu().numpy())
    finally:
        model.train(was_training)
    return np.concatenate(out) if out else np.zeros(0)


def mine_hard_windows(model: MiniLLM, tokens: np.ndarray, seq_len: int, n_scored: int, keep: int, seed: int,
                      amp_dtype: torch.dtype | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Offsets of the ``keep`` windows (of ``n_scored`` random ones) with the highest loss, and their losses."""
    rng = np.random.default_rng([seed, 7])
    n_scored = max(1, min(n_scored, len(tokens) - seq_len - 1))
    offsets = rng.integers(0, len(tokens) - seq_len - 1, size=n_scored)
    losses = window_losses(model, tokens, offsets, seq_len, amp_dtype)
    order = np.argsort(-losses)[:max(1, min(keep, n_scored))]
    return offsets[order], losses[order]


# ------------------------------------------------------------------ text statistics
def _ngrams(text: str, n: int) -> list[str]:
    return [text[i:i + n] for i in range(max(0, len(text) - n + 1))]


def distinct_n(text: str, n: int = 2) -> float:
    """Share of distinct character n-grams (1 = no n-gram repeats; low = monotone text)."""
    grams = _ngrams(text, n)
    return len(set(grams)) / len(grams) if grams else 0.0


def repetition(text: str, n: int = 4) -> float:
    """Share of character n-grams that already occurred earlier in ``text`` (0 = none)."""
    grams = _ngrams(text, n)
    return 1.0 - len(set(grams)) / len(grams) if grams else 1.0


@dataclass
class SelfGenFilter:
    """Thresholds of the self-generated text filters.

    Attributes:
        min_chars: shorter samples carry too little to learn from.
        max_bad_chars: share of U+FFFD (broken UTF-8 from a byte model) allowed.
        max_repetition: share of repeated 4-grams allowed (quality).
        max_copied: share of 8-grams found verbatim in the corpus allowed (novelty).
        max_known: share of 8-grams already in kept samples allowed (novelty).
    """

    min_chars: int = 24
    max_bad_chars: float = 0.02
    max_repetition: float = 0.5
    max_copied: float = 0.6
    max_known: float = 0.5

    def check(self, text: str, corpus: str, kept: list[str]) -> str | None:
        """Why ``text`` is rejected, or None if it passes."""
        text = text.strip()
        if len(text) < self.min_chars:
            return "too short"
        if text.count("\ufffd") > self.max_bad_chars * len(text):
            return "broken characters"
        if repetition(text) > self.max_repetition:
            return "repetitive"
        grams = _ngrams(text, 8)[::2]
        if grams:
            if sum(g in corpus for g in grams) / len(grams) > self.max_copied:
                return "copied from the corpus"
            known = set(g for k in kept for g in _ngrams(k, 8))
            if sum(g in known for g in grams) / len(grams) > self.max_known:
                return "near-duplicate"
        return None


def generate_samples(model: MiniLLM, tokenizer, prompts: list[str], max_tokens: int, temperature: float,
                     seed: int) -> list[str]:
    """One continuation per prompt (seeded), the prompt not included."""
    gen = Generator(model, tokenizer, precision="fp32")
    try:
        return [gen.generate(p, max_new_tokens=max_tokens, temperature=temperature, top_k=50, seed=seed + i)
                for i, p in enumerate(prompts)]
    finally:
        model.train()


def prompts_from(tokens: np.ndarray, tokenizer, n: int, prompt_tokens: int, seed: int) -> list[str]:
    """``n`` prompts decoded from seeded random places of ``tokens``, cut at a line start where possible."""
    rng = np.random.default_rng([seed, 11])
    out = []
    for off in rng.integers(0, max(1, len(tokens) - 4 * prompt_tokens), size=n):
        text = tokenizer.decode(tokens[off:off + 4 * prompt_tokens].tolist())
        text = text.replace("\ufffd", "")
        nl = text.find("\n")
        if 0 <= nl < len(text) - 8:
            text = text[nl + 1:]
        out.append(text[:max(4, prompt_tokens // 3)] if tokenizer.kind == "byte" else text[:prompt_tokens])
    return out
