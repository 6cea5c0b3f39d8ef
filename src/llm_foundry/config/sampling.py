"""The one check of sampling arguments, with one set of bounds for every entry point.

``foundry generate``/``chat``, :class:`~llm_foundry.inference.Engine`, :class:`~llm_foundry.inference.Generator`,
the server's request bodies, the online REPL's ``/temp=`` and the online/RL settings all call
:func:`check_sampling`, so the same bad value gives the same error everywhere. It lives in ``config``
(below everything that samples) because settings dataclasses validate with it too.
"""

from __future__ import annotations

import numbers
from typing import Mapping

from ..utils.errors import FoundryError

# As OpenAI's API: above 2 a small model's samples are noise.
MAX_TEMPERATURE = 2.0
# Below this, sampling is greedy: dividing the logits by a tinier number overflows to inf/nan.
GREEDY_TEMPERATURE = 1e-5
# Seeds go to torch.Generator.manual_seed; 63 bits also fit a JSON client's signed int64.
MAX_SEED = 2**63 - 1


def check_sampling(*, temperature: float | None = None, top_k: int | None = None, top_p: float | None = None,
                   max_new_tokens: int | None = None, seed: int | None = None, as_flags: bool = False,
                   names: Mapping[str, str] | None = None) -> None:
    """Raise a one-line :class:`FoundryError` naming the first argument out of bounds.

    The bounds: ``0 <= temperature <= MAX_TEMPERATURE`` (0 or below ``GREEDY_TEMPERATURE``
    is greedy); ``top_k`` an integer ``>= 0`` (0 = off); ``0 < top_p <= 1`` (1 = off);
    ``max_new_tokens`` an integer ``>= 1``; ``seed`` an integer in ``[0, MAX_SEED]``.
    ``None`` is always accepted (off, or not given).

    Args:
        as_flags: name the arguments as command-line options (``--top-p``), not ``top_p``.
        names: the caller's own names for some arguments, e.g. ``{"max_new_tokens": "max_tokens"}``.
    """
    def bad(name: str, rule: str, value) -> None:
        name = (names or {}).get(name) or ("--" + name.replace("_", "-") if as_flags else name)
        raise FoundryError(f"{name} must be {rule} (got {show_value(value)})")

    if temperature is not None and not (_is_real(temperature) and 0 <= temperature <= MAX_TEMPERATURE):
        bad("temperature", f"a number from 0 to {MAX_TEMPERATURE:g} (0 = greedy)", temperature)
    if top_k is not None and not (_is_int(top_k) and top_k >= 0):
        bad("top_k", "an integer >= 0 (0 = off)", top_k)
    if top_p is not None and not (_is_real(top_p) and 0 < top_p <= 1):
        bad("top_p", "a number in (0, 1] (1 = off)", top_p)
    if max_new_tokens is not None and not (_is_int(max_new_tokens) and max_new_tokens >= 1):
        bad("max_new_tokens", "an integer >= 1", max_new_tokens)
    if seed is not None and not (_is_int(seed) and 0 <= seed <= MAX_SEED):
        bad("seed", "an integer from 0 to 2**63 - 1", seed)


def show_value(x: object) -> str:
    """``repr(x)`` for a one-line error: at most 40 characters, and safe for an integer past
    Python's 4,300-digit limit on converting ints to text (whose repr raises)."""
    if _is_int(x) and x.bit_length() > 64:
        return f"an integer of {x.bit_length():,} bits"
    text = repr(x)
    return text if len(text) <= 40 else text[:37] + "..."


def _is_int(x) -> bool:
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def _is_real(x) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool)
