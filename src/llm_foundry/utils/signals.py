"""Stop requests: Ctrl-C and SIGTERM become a flag that long jobs check between units of work."""

from __future__ import annotations

import signal

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
