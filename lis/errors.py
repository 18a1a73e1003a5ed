"""The one exception type for bad input.

Raise :class:`DataError` (or :class:`ConfigError`) deep inside with a message that names
the file, the column/field, what was expected and one bad value; the CLI turns it into a
single line on stderr and exit status 2. A stack trace is for bugs, never for bad input.
"""
from __future__ import annotations


class DataError(ValueError):
    """Bad input data: a file, a column, a value. Message is shown to the user as is."""


class ConfigError(DataError):
    """Bad configuration: a recipe field, a CLI option, an incompatible combination."""


def describe_value(value, limit: int = 60) -> str:
    """A short printable form of a bad value for an error message."""
    if hasattr(value, "item") and not hasattr(value, "__len__"):
        value = value.item()  # numpy scalars print as np.float64(nan) otherwise
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def first_line(error: BaseException) -> str:
    """The first line of an exception's message (its type name when empty): third-party errors
    can span pages, and our messages are one line."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
