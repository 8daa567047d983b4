"""The one exception type users see: a single clear sentence, never a traceback."""


class PrepError(Exception):
    """A user-facing error: what went wrong, where, and what was expected.

    The CLI prints ``error: <message>`` and exits non-zero; nothing else is
    shown to the user.
    """


def file_error_sentence(err: OSError) -> str:
    """One sentence for an operating-system error on a file the command reads or writes (no permission, a folder where a
    file should be, a file where a folder should be, a full disk), naming the path."""
    what = (err.strerror or str(err)).rstrip(".")
    where = getattr(err, "filename2", None) or err.filename  # a rename's target, not the temporary file written first
    return (f"{where}: {what[0].lower() + what[1:]}; expected a file or folder this user may read, and a folder it may "
            "write to for the outputs.")
