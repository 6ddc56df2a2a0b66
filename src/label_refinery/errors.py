"""One exception type for mistakes a user can fix.

The CLI prints a :class:`UserError` as one line (``error: ...``) and exits with status 2; anything
else is a bug and keeps its traceback.
"""


class UserError(Exception):
    """Bad input: the message names the problem and the fix."""


def bounded(value: object, limit: int = 80) -> str:
    """``repr(value)`` cut to ``limit`` characters for an error message: messages never print
    unbounded values (a 580 MB line from a YAML alias bomb, a 128 KiB CSV field)."""
    text = repr(value) if not isinstance(value, str) or len(value) <= 4 * limit else repr(value[: 4 * limit])
    return text if len(text) <= limit else text[: limit - 5] + "...'" + f" ({len(str(value)) if isinstance(value, str) else 'long'})"
