"""The base class of the errors meant for the user rather than for a traceback, for every command.

Where it sits: at the bottom of the package (it imports nothing of deltanet), so that train, eval and the
benchmarks can each raise their own subclass and the command line catches them all in one place.
"""

from __future__ import annotations


class UserError(ValueError):
    """A mistake in the user's input (an option, a file, a checkpoint) or a job that cannot go on.

    Its message is one line, shown as is (no traceback); the `deltanet` command exits with status 2.
    """


def first_line(exc: BaseException) -> str:
    """The exception's type and the first line of its message: a UserError that quotes it stays one line."""
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
