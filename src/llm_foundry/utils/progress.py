"""Progress bars (rich) that stay quiet when stderr is not a terminal."""

from __future__ import annotations

import contextlib
import sys

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn

console = Console(stderr=True, soft_wrap=True)


@contextlib.contextmanager
def progress_bar(enabled: bool = True, *extra_columns):
    """A rich ``Progress`` on stderr; disabled (but still usable) off a terminal."""
    columns = [TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(), *extra_columns,
               TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn()]
    progress = Progress(*columns, console=console, disable=not (enabled and sys.stderr.isatty()), transient=False)
    with progress:
        yield progress


def rounded(value):
    """A figure as people read it: ``0.9602`` for a loss, ``3e-05`` for a learning rate, ``12345.7`` for
    tokens/s (four significant digits below 100, one decimal above); other values as they are.

    Nested dicts and lists are rounded throughout (a summary line printed as JSON).
    """
    if isinstance(value, float):
        return float(f"{value:.4g}") if abs(value) < 100 else round(value, 1)
    if isinstance(value, dict):
        return {k: rounded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [rounded(v) for v in value]
    return value
