"""One exception type for mistakes a user can fix.

The CLI prints a :class:`UserError` as one line (``error: ...``) and exits with status 2; anything
else is a bug and keeps its traceback.
"""

import reprlib


class UserError(Exception):
    """Bad input: the message names the problem and the fix."""


def bounded(value: object, limit: int = 80) -> str:
    """``repr(value)`` cut to about ``limit`` characters for an error message, without building the
    whole repr: messages never print unbounded values (a YAML alias bomb, a 128 KiB CSV field)."""
    short = reprlib.Repr()
    short.maxstring = short.maxother = limit
    return short.repr(value)
