"""Strict JSON for everything ``align`` writes or prints: ``null`` for NaN/inf, never an object repr.

Python's ``json`` writes ``NaN`` and ``Infinity`` by default, which no other JSON reader
accepts, and ``default=str`` turns any object into its repr. :func:`dumps` refuses both: a
non-finite float becomes ``null`` (a metric that could not be computed, such as eta while the
LIS interval includes 0), numpy scalars and arrays become plain numbers and lists, and anything
else is a ``TypeError`` naming its type.
"""
from __future__ import annotations

import json
import math


def finite(value):
    """``value`` with every NaN/inf float (at any depth of dicts, lists and tuples) replaced by None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(item) for item in value]
    if isinstance(value, (str, bytes, int, bool)) or value is None:
        return value
    if hasattr(value, "tolist"):  # numpy scalars and arrays, torch tensors
        return finite(value.tolist())
    if hasattr(value, "item"):
        return finite(value.item())
    return value


def dumps(value, indent: int | None = None) -> str:
    """Strict JSON text of ``value`` (see the module docstring)."""
    return json.dumps(finite(value), indent=indent, allow_nan=False, default=_refuse)


def write(path, value) -> None:
    """Write ``value`` to ``path`` as strict, indented JSON, atomically (``path.tmp`` then rename)."""
    from lis.atomic import write_text

    write_text(path, dumps(value, indent=2) + "\n")


def _refuse(value):
    raise TypeError(f"not JSON serialisable: {type(value).__name__} (align writes plain data only)")
