"""The errors of `deltanet generate` and `deltanet eval` that are meant for the user, not for a traceback."""

from __future__ import annotations

from deltanet.errors import UserError, first_line

__all__ = ["EvalError", "first_line"]


class EvalError(UserError):
    """A bad checkpoint, task, option or input file. Its message is one line, shown as is; the command
    exits with status 2. (The data and tokenizer errors of deltanet.train, which the evaluations share, are
    UserErrors too: the command line catches both.)"""
