"""The errors of `deltanet train` that are meant for the user, not for a traceback.

Where it sits: at the bottom of deltanet.train, below config, tokenizers, corpus and packing. One base class,
`TrainError`, so that the command catches the user's mistakes in one place and shows each as a one-line
message; `ConfigError` and `DataError` say whether the settings or the data were at fault.
"""

from __future__ import annotations


class TrainError(ValueError):
    """A mistake in the user's input or a run that cannot go on.

    Its message is one line, shown as is (no traceback); `deltanet train` exits with status 2.
    """


class ConfigError(TrainError):
    """A bad setting (config file, command-line option): its message is one line, shown as is."""


class DataError(TrainError):
    """Bad data input (a source, a record, a tokenizer): its message is one line, shown as is."""


def first_line(exc: BaseException) -> str:
    """The exception's type and the first line of its message: a TrainError that quotes it stays one line."""
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
