"""The errors of `deltanet train` that are meant for the user, not for a traceback.

Where it sits: at the bottom of deltanet.train, below config, tokenizers, corpus and packing. One base class,
`TrainError`, so that the command catches the user's mistakes in one place and shows each as a one-line
message; `ConfigError` and `DataError` say whether the settings or the data were at fault.
"""

from __future__ import annotations

from deltanet.errors import UserError, first_line

__all__ = ["ConfigError", "DataError", "TrainError", "first_line"]


class TrainError(UserError):
    """A mistake in the user's input or a run that cannot go on.

    Its message is one line, shown as is (no traceback); `deltanet train` exits with status 2.
    """


class ConfigError(TrainError):
    """A bad setting (config file, command-line option): its message is one line, shown as is."""


class DataError(TrainError):
    """Bad data input (a source, a record, a tokenizer): its message is one line, shown as is."""
