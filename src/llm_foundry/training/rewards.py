"""RL rewards: the task checkers, or a function of the user's own (``foundry rl --reward module:function``).

``rl.py`` scores each sampled completion with a :data:`Reward`: the built-in
:func:`checker_reward` (the task's checker: 1 right, 0 wrong), or what :func:`load_reward`
makes of the user's function, which may score anything (length, format, a regex, a call to
their own checker) as long as it returns a real number.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from ..utils.errors import FoundryError

Reward = Callable[[object, str], float]  # (a task Example, its completion's text) -> reward


def checker_reward(example, text: str) -> float:
    """The built-in reward: the task's checker (1 right, 0 wrong)."""
    from ..eval.answers import score_answer

    return score_answer(example.task, text, example.answer)


def _import_reward_module(where: str):
    """The module of a ``--reward`` spec: a ``.py`` file (by path) or an importable module name."""
    import importlib
    import importlib.util
    import sys

    if where.endswith(".py") or "/" in where or "\\" in where:
        path = Path(where)
        if not path.is_file():
            raise FoundryError(f"--reward: file not found: {path}")
        spec = importlib.util.spec_from_file_location(f"foundry_reward_{path.stem}", path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses and pickling look their module up
        spec.loader.exec_module(module)
        return module
    return importlib.import_module(where)


def load_reward(spec: str) -> Reward:
    """A user's reward function from ``MODULE:FUNCTION`` or ``path/to/file.py:FUNCTION``.

    The function is ``f(prompt, completion) -> float`` (the prompt's last user turn and the
    completion's text, special tokens kept as the checkers see them) or the checkers' own
    ``f(task, completion, answer) -> float``; it may return any real number.

    Raises:
        FoundryError: one line when it cannot be imported, is missing or not callable, or takes
            other arguments; when called, one line if it raises or returns a non-number.
    """
    import inspect
    import math
    import numbers

    where, sep, name = spec.strip().rpartition(":")
    if not sep or not where or not name:
        raise FoundryError(f"--reward must be MODULE:FUNCTION or path/to/file.py:FUNCTION, got {spec!r}")
    try:
        module = _import_reward_module(where)
    except FoundryError:
        raise
    except BaseException as e:  # the user's module may raise anything, SystemExit included
        if isinstance(e, KeyboardInterrupt):
            raise
        raise FoundryError(f"--reward: cannot import {where}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None
    fn = getattr(module, name, None)
    if fn is None:
        raise FoundryError(f"--reward: {where} has no '{name}'")
    if not callable(fn):
        raise FoundryError(f"--reward: {where}:{name} is not callable (a {type(fn).__name__})")
    try:
        params = [p for p in inspect.signature(fn).parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty]
        arity = len(params)
    except (TypeError, ValueError):  # a builtin without a signature: assume (prompt, completion)
        arity = 2
    if arity not in (2, 3):
        raise FoundryError(f"--reward: {where}:{name} takes {arity} arguments; write f(prompt, completion) "
                           "or f(task, completion, answer)")

    def reward(example, text: str) -> float:
        args = (example.prompt[-1]["content"], text) if arity == 2 else (example.task, text, example.answer)
        try:
            value = fn(*args)
        except Exception as e:
            raise FoundryError(f"--reward {where}:{name} raised {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
            raise FoundryError(f"--reward {where}:{name} returned {value!r} ({type(value).__name__}), not a finite number")
        return float(value)

    return reward
