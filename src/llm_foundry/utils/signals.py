"""Stop requests: Ctrl-C and SIGTERM become a flag that long jobs check between units of work;
during a write that must not stop halfway they wait (:func:`deferred_signals`)."""

from __future__ import annotations

import contextlib
import signal
import threading

from .progress import console


class StopRequest:
    """Turns Ctrl-C and SIGTERM into a request to stop at the next step boundary.

    Stopping between steps (never inside one) is what makes the saved state exact: no
    half-accumulated gradients, no optimizer that stepped while another did not, no RNG
    advanced by a step that did not finish. A second Ctrl-C quits at once; the last
    checkpoint is still intact because every write is atomic.
    """

    def __init__(self, quiet: bool = False):
        self.requested = False
        self.quiet = quiet
        self._previous: dict[int, object] = {}

    def _handler(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        if not self.quiet:
            console.print("\n[yellow]stopping after this step and saving (Ctrl-C again to quit without saving)[/]")

    def __enter__(self) -> "StopRequest":
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[sig] = signal.signal(sig, self._handler)
            except ValueError:  # not the main thread: signals stay as they were
                pass
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


_deferring: list[int] = []  # signals received while deferred (one list: nested blocks share it)


@contextlib.contextmanager
def deferred_signals():
    """Hold Ctrl-C and SIGTERM back for the block, then deliver them.

    Wraps writes that must not stop halfway (a checkpoint swap): a second Ctrl-C during
    the save quits right after it, never inside it. Nested blocks deliver once, at the
    outermost exit. Outside the main thread signals cannot be caught; the block runs as is.
    """
    if threading.current_thread() is not threading.main_thread() or _deferring:
        yield
        return
    _deferring.append(0)  # marks "deferring"; the received signals follow it
    previous = {}
    try:
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, lambda signum, frame: _deferring.append(signum))
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
        received = _deferring[1:]
        _deferring.clear()
        for sig in dict.fromkeys(received):
            signal.raise_signal(sig)
