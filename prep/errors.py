"""The one exception type users see: a single clear sentence, never a traceback."""


class PrepError(Exception):
    """A user-facing error: what went wrong, where, and what was expected.

    The CLI prints ``error: <message>`` and exits non-zero; nothing else is
    shown to the user.
    """
