"""Pieces the benchmark scripts share (they import it as ``common``: ``python bench/X.py``
puts this folder first on the import path)."""

from __future__ import annotations

import statistics
import time
from typing import Callable


def median_time(fn: Callable[[], object], reps: int, warmup: int = 1) -> float:
    """Median seconds of ``reps`` calls of ``fn`` after ``warmup`` untimed ones
    (kernel selection, allocations, compilation)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def random_byte_model(preset: str):
    """``(model, tokenizer)``: a preset's MiniLLM with random weights (seed 0) over the byte
    tokenizer, in eval mode. Decoding speed does not depend on what the weights learned."""
    import torch

    from llm_foundry import MiniLLM
    from llm_foundry.config import load_config
    from llm_foundry.tokenizers import ByteTokenizer

    cfg, _ = load_config(preset)
    tok = ByteTokenizer()
    cfg.vocab_size = tok.vocab_size
    torch.manual_seed(0)
    return MiniLLM(cfg).eval(), tok
