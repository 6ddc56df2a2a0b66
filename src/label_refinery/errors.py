"""One exception type for mistakes a user can fix, and the one way its messages show a value.

The CLI prints a :class:`UserError` as one line (``error: ...``) and exits with status 2; anything
else is a bug and keeps its traceback. A message shows an input value through :func:`brief`, never
through a plain ``repr``: a YAML file of a few hundred bytes built from aliases expands to a value
whose ``repr`` has hundreds of megabytes (issue 28), and a file name may hold bytes that are not
text (``repr`` escapes them).
"""

from __future__ import annotations

import reprlib

LIMIT = 120  # characters of a value shown in a message

_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxstring, _REPR.maxother = 3, LIMIT, LIMIT
_REPR.maxlist = _REPR.maxtuple = _REPR.maxdict = _REPR.maxset = _REPR.maxfrozenset = 6


class UserError(Exception):
    """Bad input: the message names the problem and the fix."""


def brief(value: object, limit: int = LIMIT) -> str:
    """``repr(value)`` cut to at most ``limit`` characters, computed without building the whole repr
    (nested containers show a few items and levels).

    Example:
        >>> brief("x" * 1000, 12)
        "'xxxxxxx...'"
        >>> brief([[1, 2, 3, 4, 5, 6, 7, 8]] * 3)
        '[[1, 2, 3, 4, 5, 6, ...], [1, 2, 3, 4, 5, 6, ...], [1, 2, 3, 4, 5, 6, ...]]'
    """
    text = _REPR.repr(value)  # repr escapes what cannot be printed (control characters, lone surrogates)
    if len(text) <= limit:
        return text
    quote = text[0] if text[0] in "'\"" and text[-1] == text[0] else ""
    return text[: limit - 3 - len(quote)] + "..." + quote
