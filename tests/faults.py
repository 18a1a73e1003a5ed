"""Fault injection for tests: run a command, SIGKILL it at a chosen moment, then check what is left.

* :func:`kill_at` starts the command in a session of its own with a unique marker in its
  environment, SIGKILLs the command's own process (not its group: that is what a user's
  ``kill -9 PID`` does) after ``seconds``, and returns whether it was killed before finishing.
* :func:`survivors` lists processes that still carry the marker: the command's children
  (launched workers) must be gone within a few seconds.
* :func:`digest` fingerprints a file or a folder tree, to compare a final path with the
  complete old and the complete new content.
* :func:`kill_moments`: where to kill, drawn from ``FAULT_SEED`` (default 0, so CI kills at the
  same moments every run; a loop over seeds explores others).
"""
from __future__ import annotations

import hashlib
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MARK = "LIS_FAULT_MARK"


def kill_moments(scenario: str, low: float, high: float, count: int = 1) -> list[float]:
    """``count`` kill moments in seconds, uniform in [low, high], reproducible per scenario and FAULT_SEED."""
    rng = random.Random(f"{scenario}-{os.environ.get('FAULT_SEED', '0')}")
    return [rng.uniform(low, high) for _ in range(count)]


def python_command(*args) -> list[str]:
    return [sys.executable, *map(str, args)]


def kill_at(cmd: list[str], seconds: float, env: dict | None = None, log: Path | None = None) -> tuple[bool, str]:
    """Run ``cmd`` from the repository root and SIGKILL it after ``seconds``.

    Returns ``(killed, mark)``: killed is False when it finished first (its exit status must
    then be 0); ``mark`` finds its descendants with :func:`survivors`."""
    def wait(process):
        try:
            process.wait(timeout=seconds)
        except subprocess.TimeoutExpired:
            pass

    return _run_and_kill(cmd, wait, env, log)


def _run_and_kill(cmd: list[str], wait, env: dict | None, log: Path | None) -> tuple[bool, str]:
    """Start ``cmd`` with a fresh mark, call ``wait(process)``, then SIGKILL it unless it has ended."""
    mark = uuid.uuid4().hex
    env = dict(os.environ if env is None else env, **{MARK: mark, "OMP_NUM_THREADS": "1"})
    out = open(log, "wb") if log else subprocess.DEVNULL
    try:
        process = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=out, start_new_session=True)
        wait(process)
        if process.poll() is not None:
            assert process.returncode == 0, (f"{cmd} failed with exit status {process.returncode}"
                                             + (f"; see {log}" if log else ""))
            return False, mark
        process.send_signal(signal.SIGKILL)
        process.wait()
        return True, mark
    finally:
        if log:
            out.close()


def survivors(mark: str) -> list[int]:
    """Pids of live (non-zombie) processes whose environment holds ``mark``."""
    found = []
    needle = f"{MARK}={mark}".encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if needle in (entry / "environ").read_bytes().split(b"\0"):
                state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
                if state != "Z":
                    found.append(int(entry.name))
        except OSError:
            continue
    return found


def wait_until_gone(mark: str, seconds: float = 10.0) -> list[int]:
    """Wait up to ``seconds`` for every process of ``mark`` to end; return those still alive (and kill them)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        left = survivors(mark)
        if not left:
            return []
        time.sleep(0.1)
    left = survivors(mark)
    for pid in left:  # do not leave them running after the failed check
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return left


def digest(path: Path) -> dict | str | None:
    """sha256 of a file, ``{relative path: sha256}`` of a folder's files, None when absent."""
    path = Path(path)
    if path.is_file():
        return hashlib.sha256(path.read_bytes()).hexdigest()
    if not path.is_dir():
        return None
    return {p.relative_to(path).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(path.rglob("*")) if p.is_file()}


def leftovers(folder: Path, name: str) -> list[str]:
    """Temporary names a killed write of ``folder/name`` may leave (``.tmp``, ``.old-*``)."""
    return sorted(p.name for p in Path(folder).iterdir() if p.name.startswith(name + ".") and
                  (p.name.endswith(".tmp") or ".old-" in p.name))


def kill_when(cmd: list[str], ready, delay: float, timeout: float = 600, log: Path | None = None) -> tuple[bool, str]:
    """Run ``cmd`` and SIGKILL it ``delay`` seconds after ``ready()`` first holds (polled every
    millisecond): a kill aimed at a moment, e.g. just as a finished folder is about to replace
    the old one, which a kill at a random time rarely hits."""
    def wait(process):
        deadline = time.monotonic() + timeout
        while process.poll() is None and not ready() and time.monotonic() < deadline:
            time.sleep(0.001)
        time.sleep(delay)

    return _run_and_kill(cmd, wait, None, log)
