"""The launcher's workers die with it: no training process outlives ``lis-align train``.

``lis-align train --accelerate-config NAME`` (the *launcher*) starts ``accelerate launch`` (the
*agent*: torch's elastic agent runs inside it), which starts one *worker* per process, each in
a session of its own. Killing the launcher alone used to leave the workers training and
writing checkpoints. Three links now tie the tree together (Linux; elsewhere only the third):

1. :func:`launch` starts the agent with a parent-death signal (``prctl(PR_SET_PDEATHSIG,
   SIGKILL)``): when the launcher dies, even by SIGKILL, the kernel kills the agent.
2. :func:`die_with_parent`, called first thing in every worker (``align.train.main`` and
   ``lis-align export`` under a launcher), sets the same signal in the worker, so the agent's
   death kills it; a worker whose agent died before that call exits at once.
3. SIGTERM, SIGINT and SIGHUP to the launcher are forwarded to the agent's process group (the
   agent then stops its workers); whatever still runs after ``grace`` seconds is SIGKILLed,
   and the launcher reaps its child and exits with 128 + the signal number.

A run killed this way resumes with ``training.resume_from_checkpoint=last`` from its newest
complete checkpoint (:func:`align.checkpoint.last_complete_checkpoint`).
"""
from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import threading
import time

LAUNCHER_PID = "LIS_ALIGN_LAUNCHER_PID"  # set for the agent and its workers: who started the tree
PR_SET_PDEATHSIG = 1
FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def set_parent_death_signal(sig: int = signal.SIGKILL) -> bool:
    """Ask the kernel to send ``sig`` to this process when its parent dies; False where unsupported."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def parent_of(pid: int) -> int | None:
    """The parent pid of ``pid`` (from /proc), None when unknown."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            stat = handle.read()
    except OSError:
        return None
    fields = stat[stat.rindex(b")") + 2:].split()
    return int(fields[1])


def die_with_parent() -> None:
    """In a worker: die when the process that started it (the agent) dies.

    Does nothing outside a launch (no ``LOCAL_RANK`` nor launcher) or off Linux. Under ``lis-align train``
    the worker also checks that its agent is still the launcher's child, i.e. that the agent
    did not die before the signal was armed."""
    launched = "LOCAL_RANK" in os.environ or LAUNCHER_PID in os.environ
    if not launched or not set_parent_death_signal(signal.SIGKILL):
        return
    launcher = os.environ.get(LAUNCHER_PID)
    if launcher and parent_of(os.getppid()) != int(launcher):
        os._exit(128 + signal.SIGKILL)  # orphaned already: the agent or the launcher is gone


def check_before_launch(recipe_path: str, overrides) -> None:
    """What the workers would refuse, refused once here in one line (through the elastic agent a
    worker's error arrives as a page of tracebacks): the recipe and its overrides, a ``last``
    resume without a complete checkpoint, the data dir's tables and image paths (images are
    opened by the workers)."""
    from pathlib import Path

    from align.config import load_recipe
    from lis.datadir import load_datadir
    from lis.errors import ConfigError

    recipe = load_recipe(recipe_path, list(overrides))
    if recipe.training.resume_from_checkpoint in ("last", "latest"):
        from align.trainer import resume_argument

        resume_argument(recipe.training.resume_from_checkpoint, recipe.training.output_dir)
    if recipe.data.data_dir and not Path(recipe.data.data_dir).is_dir():
        raise ConfigError(f"{recipe.source}: field 'data.data_dir' is {recipe.data.data_dir!r}, which is not a directory.")
    load_datadir(recipe.data.data_dir, check_images=False)  # tables, ids, time order, image paths


def _arm_child(launcher_pid: int) -> None:
    """preexec_fn of the agent: die with the launcher, or at once if it is already gone."""
    set_parent_death_signal(signal.SIGKILL)
    if os.getppid() != launcher_pid:
        os._exit(128 + signal.SIGKILL)


def launch(cmd: list[str], env: dict | None = None, grace: float = 10.0) -> int:
    """Run ``cmd`` (``accelerate launch ...``) as the agent of a training tree; return its exit status.

    See the module docstring for how the tree dies together. A forwarded signal makes the
    result ``128 + signal`` (143 for SIGTERM, 130 for SIGINT) whatever the agent returned.
    """
    env = dict(os.environ if env is None else env)
    me = os.getpid()
    env[LAUNCHER_PID] = str(me)
    on_linux = sys.platform.startswith("linux")
    child = subprocess.Popen(cmd, env=env, start_new_session=True,
                             preexec_fn=(lambda: _arm_child(me)) if on_linux else None)
    received: list[int] = []

    def forward(signum, frame):
        received.append(signum)
        _signal_group(child.pid, signum)

    previous = _install(FORWARDED, forward)
    deadline = None
    try:
        while True:  # short waits: a signal handler cannot shorten a blocking wait
            try:
                status = child.wait(timeout=0.2)
                break
            except subprocess.TimeoutExpired:
                if received and deadline is None:
                    deadline = time.monotonic() + grace
                if deadline is not None and time.monotonic() > deadline:  # the agent did not stop: end the tree
                    _signal_group(child.pid, signal.SIGKILL)
                    deadline = float("inf")
    finally:
        _restore(previous)
        if child.poll() is None:  # an exception in this process: never leave the agent behind
            _signal_group(child.pid, signal.SIGKILL)
            child.wait()
    if received:
        return 128 + received[0]
    return 128 - status if status < 0 else status  # killed by a signal: the shell's convention


def _signal_group(pgid: int, signum: int) -> None:
    try:
        os.killpg(pgid, signum)
    except ProcessLookupError:
        pass


def _install(signals, handler) -> dict:
    if threading.current_thread() is not threading.main_thread():
        return {}  # only the main thread may set handlers; a library caller keeps its own
    return {sig: signal.signal(sig, handler) for sig in signals}


def _restore(previous: dict) -> None:
    for sig, handler in previous.items():
        signal.signal(sig, handler)
