"""Assertions for module tests whose failures teach: the call, what was expected, what came back,
and the line of the learner's own file where the function lives.

    from llm_foundry.lab.testing import check_equal, check_close
    check_equal("merge([1, 2, 1, 2], (1, 2), 9)", merge([1, 2, 1, 2], (1, 2), 9), [9, 9], where=merge)
"""

from __future__ import annotations

import inspect
from typing import Any, Callable


def learner_line(obj: Callable | None) -> str:
    """``file.py, line N`` of a function or class (empty when unknown)."""
    if obj is None:
        return ""
    try:
        file = inspect.getsourcefile(obj)
        _, line = inspect.getsourcelines(obj)
    except (TypeError, OSError):
        return ""
    return f" (your {file.rsplit('/', 1)[-1]}, line {line})" if file else ""


def check_equal(call: str, actual: Any, expected: Any, where: Callable | None = None, hint: str = "") -> None:
    """Fail unless ``actual == expected``, naming the call, both values and the learner's line."""
    if actual != expected:
        raise AssertionError(f"{call}{learner_line(where)}: expected {expected!r}, got {actual!r}"
                             + (f". {hint}" if hint else ""))


def check_close(call: str, actual: Any, expected: Any, atol: float = 1e-5, rtol: float = 1e-5,
                where: Callable | None = None, hint: str = "") -> None:
    """Fail unless tensors ``actual`` and ``expected`` have the same shape and are close: the
    message gives the shapes or the largest difference and where it is (as a ``cmp()`` against
    autograd does)."""
    import torch

    head = f"{call}{learner_line(where)}"
    if not isinstance(actual, torch.Tensor):
        raise AssertionError(f"{head}: expected a tensor, got {type(actual).__name__}")
    if actual.shape != expected.shape:
        raise AssertionError(f"{head}: expected shape {tuple(expected.shape)}, got {tuple(actual.shape)}"
                             + (f". {hint}" if hint else ""))
    diff = (actual.detach().double() - expected.detach().double()).abs()
    bound = atol + rtol * expected.detach().double().abs()
    if not bool((diff <= bound).all()):
        worst = int(diff.argmax())
        index = tuple(int(i) for i in torch.unravel_index(torch.tensor(worst), diff.shape))
        raise AssertionError(f"{head}: max difference {float(diff.max()):.3g} at {index} "
                             f"(expected {float(expected.flatten()[worst]):.6g}, got {float(actual.flatten()[worst]):.6g}; "
                             f"tolerance {atol:g} + {rtol:g}·|expected|)" + (f". {hint}" if hint else ""))
