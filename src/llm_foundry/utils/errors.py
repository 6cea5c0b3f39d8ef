"""The one exception type the command line turns into a one-line error."""


class FoundryError(Exception):
    """A problem the user can fix (bad input, bad config, missing file).

    The CLI prints ``error: <message>`` on stderr and exits non-zero, without a
    traceback. Library code raises it wherever the cause is the caller's input.
    """


class TrainingInterrupted(Exception):
    """Raised after Ctrl-C or SIGTERM, once the checkpoint has been saved.

    The CLI prints ``interrupted: ...; continue with --resume`` and exits 130.
    """

    def __init__(self, step: int):
        super().__init__(f"training interrupted at step {step}; checkpoint saved")
        self.step = step
