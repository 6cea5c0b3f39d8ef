"""The one exception type the command line turns into a one-line error."""


class FoundryError(Exception):
    """A problem the user can fix (bad input, bad config, missing file).

    The CLI prints ``error: <message>`` on stderr and exits non-zero, without a
    traceback. Library code raises it wherever the cause is the caller's input.
    """
