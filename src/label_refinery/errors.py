"""One exception type for mistakes a user can fix.

The CLI prints a :class:`UserError` as one line (``error: ...``) and exits with status 2; anything
else is a bug and keeps its traceback.
"""


class UserError(Exception):
    """Bad input: the message names the problem and the fix."""
