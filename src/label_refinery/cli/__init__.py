"""The ``label-refinery`` command line: ``main`` (subcommands), ``flags`` (the flag table), ``examples``.

Each subcommand parses its flags, builds a config and calls one library function; nothing else
imports this package.
"""

from .commands import build_parser, main

__all__ = ["build_parser", "main"]
