"""Record every file a process writes, renames or removes under one folder (for the multi-node tests).

``install(root)`` returns a list that fills with ``"EVENT relative/path"`` entries. Two sources:
a Python audit hook (``sys.addaudithook``: ``open`` for writing, ``os.rename``/``os.replace``,
``os.remove``, ``shutil.rmtree``) and wrappers around the two native writers that bypass
Python's ``open`` (torch.save's zip writer, safetensors' Rust writer). Install it before
anything writes; torch and safetensors are imported here.
"""
from __future__ import annotations

import os
import sys

WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC


def install(root) -> list[str]:
    root = os.path.abspath(os.fspath(root))
    seen: list[str] = []

    def under(path) -> str | None:
        if isinstance(path, int):  # a file descriptor
            return None
        p = os.path.abspath(os.fsdecode(path))
        return os.path.relpath(p, root) if p == root or p.startswith(root + os.sep) else None

    def hook(event, args):
        if event == "open":
            path, mode, flags = args
            writing = any(c in mode for c in "wax+") if isinstance(mode, str) else bool((flags or 0) & WRITE_FLAGS)
            rel = under(path) if writing and path is not None else None
        elif event == "os.rename":
            rel = under(args[1])
        elif event in ("os.remove", "shutil.rmtree"):
            rel = under(args[0])
        else:
            return
        if rel is not None:
            seen.append(f"{event} {rel}")

    sys.addaudithook(hook)

    import safetensors.torch
    import torch.serialization

    def spy(fn, path_arg: int):
        def wrapper(*args, **kwargs):
            path = args[path_arg] if len(args) > path_arg else None
            rel = under(path) if isinstance(path, (str, os.PathLike)) else None
            if rel is not None:
                seen.append(f"{fn.__name__} {rel}")
            return fn(*args, **kwargs)

        return wrapper

    torch.serialization._open_zipfile_writer = spy(torch.serialization._open_zipfile_writer, 0)
    safetensors.torch.serialize_file = spy(safetensors.torch.serialize_file, 1)
    return seen
