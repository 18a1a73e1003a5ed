"""The bad-input contract, checked in-process (README, "What we guarantee"):

exit status 2, ONE line on stderr that names the file or flag, the field and the bad value (each
case lists the words it must contain), no traceback, and nothing written: every file under the
watched folders keeps its size, modification time and bytes, and no file appears or vanishes.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path


# Lines a command prints on stderr as it goes (not errors): lis score's progress.
PROGRESS = ("lis score: ",)


def snapshot(*roots) -> dict:
    """``{path: (size, mtime_ns, sha256 of the first 64 KiB)}`` of every file or link under ``roots``."""
    state = {}
    for root in roots:
        root = Path(root)
        if not root.exists() and not root.is_symlink():
            continue
        walk = [root] if not root.is_dir() else [Path(d) / n for d, dirs, names in os.walk(root) for n in dirs + names]
        for path in walk:
            if path.is_symlink():
                state[str(path)] = ("link", os.readlink(path))
            elif path.is_dir():
                state[str(path)] = ("dir",)
            elif path.is_file():
                info = path.stat()
                with open(path, "rb") as handle:
                    head = hashlib.sha256(handle.read(1 << 16)).hexdigest()
                state[str(path)] = (info.st_size, info.st_mtime_ns, head)
    return state


def expect_bad_input(main, argv, capsys, must_contain=(), watch=()) -> str:
    """Run ``main(argv)`` and assert the contract; return the one error line."""
    argv = [str(a) for a in argv]
    before = snapshot(*watch)
    capsys.readouterr()
    try:
        code = main(argv)
    except SystemExit as error:  # argparse's own errors exit from inside parse_args
        code = error.code
    err = capsys.readouterr().err
    lines = [line for line in err.strip().splitlines() if line.strip() and not line.startswith(PROGRESS)]
    assert code == 2, f"exit status {code} (want 2); stderr:\n{err}"
    assert "Traceback" not in err, err
    assert len(lines) == 1, f"want one line on stderr, got {len(lines)}:\n{err}"
    line = lines[0]
    assert len(line) <= 1000, f"error line of {len(line)} characters"
    for text in must_contain:
        assert str(text) in line, f"{text!r} not in the error line: {line}"
    assert snapshot(*watch) == before, "a watched file was created, changed or deleted"
    return line
