"""Re-exports that load on first use (PEP 562), so light commands skip PyTorch.

Importing PyTorch takes seconds on a slow CPU; `foundry --help` or `foundry prepare`
should not pay it because a package's ``__init__`` re-exports a class that needs it.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable


def lazy_exports(package: str, exports: dict[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``__getattr__`` and ``__dir__`` for ``package`` that import ``name`` from the relative
    module ``exports[name]`` when it is first looked up.

    Example, in a package's ``__init__.py``::

        __getattr__, __dir__ = lazy_exports(__name__, {"Trainer": ".trainer"})
    """
    namespace = importlib.import_module(package).__dict__

    def __getattr__(name: str) -> Any:
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(exports[name], package), name)
        namespace[name] = value  # later look-ups find it without this function
        return value

    def __dir__() -> list[str]:
        return sorted({*namespace, *exports})

    return __getattr__, __dir__
