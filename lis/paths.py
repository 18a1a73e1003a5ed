"""Where a command may read and write, judged by where paths really are (symlinks resolved).

* :func:`inside` -- is a path, once every symlink is followed, within a folder? Data dirs and
  imports confine image paths with it, so ``images/x.png -> /etc/passwd`` is outside.
* :func:`check_output_file` / :func:`check_output_dir` -- an ``--out`` may never overwrite or
  replace one of the command's inputs, and a file ``--out`` may not name an existing folder
  (nor a folder ``--out`` an existing file). Called at the command line before any work.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

from lis.errors import ConfigError

def real(path: str | os.PathLike) -> str:
    """The absolute path with every symlink followed (the file need not exist)."""
    return os.path.realpath(os.path.abspath(os.fspath(path)))


def inside(path: str | os.PathLike, root: str | os.PathLike) -> bool:
    """True when ``path`` resolves to ``root`` itself or to something under it."""
    target, base = real(path), real(root)
    return target == base or target.startswith(base.rstrip(os.sep) + os.sep)


def check_output_file(out, flag: str, inputs: Iterable = ()) -> None:
    """Refuse a file ``out`` that is an existing folder, is one of ``inputs`` or lies inside an
    input folder. ``inputs``: paths (files or folders) the command reads; None entries are skipped."""
    if out is None:
        return
    out = Path(out)
    if out.is_dir():
        raise ConfigError(f"{flag}: {out} is an existing directory; give the path of a file to write.")
    for source in _existing(inputs):
        if real(out) == real(source):
            raise ConfigError(f"{flag}: {out} is an input of this command ({source}); writing it would "
                              "overwrite the input. Choose another path.")
        if source.is_dir() and inside(out, source):
            raise ConfigError(f"{flag}: {out} lies inside {source}, an input folder of this command; "
                              "choose a path outside it.")


def check_output_dir(out, flag: str, inputs: Iterable = ()) -> None:
    """Refuse a folder ``out`` that is an existing file or that is, or holds, one of ``inputs``
    (replacing it would delete the input)."""
    if out is None:
        return
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{flag}: {out} is an existing file; give the path of a directory.")
    for source in _existing(inputs):
        if inside(source, out):
            raise ConfigError(f"{flag}: {out} holds {source}, an input of this command; replacing it would "
                              "delete the input. Choose another directory.")


def _existing(inputs: Iterable) -> list[Path]:
    return [Path(p) for p in inputs if p is not None and Path(p).exists()]
