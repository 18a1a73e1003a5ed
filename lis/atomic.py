"""Writes that cannot be half-done: write ``name.tmp`` beside the target, fsync, rename.

A reader that finds a file may trust it; a crash leaves at most a ``.tmp`` behind.

Folders are replaced whole too (:func:`replace_dir`): the new folder is built beside the old
one and the two are swapped in one step (Linux ``renameat2(RENAME_EXCHANGE)``), then the old
one is deleted, so a reader sees the old or the new folder, never a mix or half of one.
Where the exchange is not available the old folder is first renamed to ``name.old-XXXX``,
the new one renamed in, and the old deleted last; a run killed between those two renames
leaves ``name.old-XXXX``, which the next write of ``name`` puts back (:func:`recover`) before
anything else. Leftover ``name.tmp`` folders of killed runs are deleted on the next write.
"""
from __future__ import annotations

import contextlib
import ctypes
import errno
import glob
import json
import math
import os
import shutil
import uuid
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
    recover(final)
    _remove(tmp)
    try:
        yield tmp
        if tmp.is_file():
            if final.is_dir():
                from lis.errors import DataError

                raise DataError(f"{final}: is a directory; give the path of a file to write.")
            with open(tmp, "rb+") as handle:
                os.fsync(handle.fileno())
            os.replace(tmp, final)
        elif tmp.is_dir() and final.is_dir():
            replace_dir(tmp, final)
        else:
            os.replace(tmp, final)
        _fsync_dir(final.parent)
    except BaseException:
        _remove(tmp)
        raise


def replace_dir(new: str | os.PathLike, final: str | os.PathLike) -> None:
    """Put the finished folder ``new`` in place of ``final`` (which may not exist); see the module doc.

    ``new`` must be on the same file system as ``final`` (build it beside, e.g. ``final.tmp``).
    """
    new, final = Path(new), Path(final)
    recover(final)
    if not final.exists():
        os.replace(new, final)
    elif _exchange(new, final):
        _remove(new)  # it now holds the old folder
    else:
        old = final.with_name(f"{final.name}.old-{uuid.uuid4().hex[:8]}")
        os.replace(final, old)
        os.replace(new, final)
        _remove(old)
    _fsync_dir(final.parent)


def recover(final: str | os.PathLike) -> None:
    """Undo what a killed :func:`replace_dir` left: put ``final.old-*`` back when ``final`` is
    missing (killed between the two renames), else delete the stale old copies."""
    final = Path(final)
    for old in sorted(final.parent.glob(glob.escape(final.name) + ".old-*")):
        if not final.exists() and old.is_dir():
            os.replace(old, final)
        else:
            _remove(old)


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one atomic step (Linux renameat2); False where the system cannot."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP):
        return False  # kernel or file system without RENAME_EXCHANGE: fall back to two renames
    raise OSError(code, os.strerror(code), str(b))


def _fsync_dir(directory: Path) -> None:
    """Make a rename durable (best effort: some file systems refuse fsync on a folder)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


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
    write_text(path, json_text(obj, indent))


def json_text(obj, indent: int = 2) -> str:
    """The text :func:`write_json` writes (so a caller can serialise first and write later)."""
    return json.dumps(strict_json(obj), indent=indent, sort_keys=False, allow_nan=False, default=_json_default) + "\n"


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
