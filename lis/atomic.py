"""Writes that cannot be half-done: write ``name.tmp`` beside the target, fsync, rename.

A reader that finds a file may trust it; a crash leaves at most a ``.tmp`` behind.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
from pathlib import Path
from typing import Iterator


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success fsync it and rename onto ``path``.

    The body writes the file (or a directory) at the yielded path by any means
    (pandas, safetensors, PIL ...). On an exception the temporary is removed.
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(final.name + ".tmp")
    _remove(tmp)
    try:
        yield tmp
        if tmp.is_file():
            with open(tmp, "rb+") as handle:
                os.fsync(handle.fileno())
        if final.is_dir() and tmp.is_dir():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        _remove(tmp)
        raise


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists():
        path.unlink()


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            handle.write(data)


def write_text(path: str | os.PathLike, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, obj, indent: int = 2) -> None:
    """Strict JSON: NaN and infinities become ``null`` (JSON has no NaN), numpy values plain numbers."""
    text = json.dumps(strict_json(obj), indent=indent, sort_keys=False, allow_nan=False, default=_json_default)
    write_text(path, text + "\n")


def strict_json(obj):
    """``obj`` with every non-finite float (NaN, inf) replaced by None, recursively."""
    if isinstance(obj, dict):
        return {key: strict_json(value) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [strict_json(value) for value in obj]
    if hasattr(obj, "tolist") and not isinstance(obj, (str, bytes)):     # numpy arrays and scalars
        return strict_json(obj.tolist())
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def _json_default(value):
    # numpy scalars and arrays show up in reports; make them plain JSON.
    if hasattr(value, "tolist"):
        return value.tolist()
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
