"""The one exception type for bad input.

Raise :class:`DataError` (or :class:`ConfigError`) deep inside with a message that names
the file, the column/field, what was expected and one bad value; the CLI turns it into a
single line on stderr and exit status 2. A stack trace is for bugs, never for bad input.
"""
from __future__ import annotations

import re


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


MAX_MESSAGE = 600  # characters of a one-line error; beyond it the middle is cut
MAX_WORD = 120  # a longer run without spaces (a 5,000-character id) is shortened in the middle


def one_line(text: str) -> str:
    """``text`` as one readable line: line breaks joined with " | ", very long words and the
    whole message shortened in the middle (a bad value can be any size; the message is not)."""
    parts = [" ".join(line.split()) for line in str(text).strip().splitlines()]
    text = " | ".join(part for part in parts if part)
    text = re.sub(r"\S{%d,}" % (MAX_WORD + 1), lambda m: _middle(m.group(0), MAX_WORD), text)
    return _middle(text, MAX_MESSAGE) or "error"


def _middle(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    keep = limit - 5
    return f"{text[: keep - keep // 4]} ... {text[len(text) - keep // 4:]}"


def first_line(error: BaseException) -> str:
    """The first line of an exception's message (its type name when empty): third-party errors
    can span pages, and our messages are one line."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
