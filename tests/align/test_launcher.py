"""The launcher's process tree dies together (align/launcher.py), shown with stand-in processes:
an "agent" that starts a "worker" in a session of its own, as torch's elastic agent does.
(tests/align/test_faults_training.py kills a real two-process ``lis-align train``.)"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="parent-death signals are Linux's")

WORKER = """
import os, sys, time
os.environ["LOCAL_RANK"] = "0"
from align.launcher import die_with_parent
die_with_parent()
open(sys.argv[1] + "/worker", "w").write(str(os.getpid()))
time.sleep(120)
"""

AGENT = """
import os, signal, subprocess, sys, time
worker = subprocess.Popen([sys.executable, "-c", sys.argv[2], sys.argv[1]], start_new_session=True)
def stop(signum, frame):  # as torch's agent does: stop the worker, then exit
    os.kill(worker.pid, signal.SIGTERM); os._exit(128 + signum)
signal.signal(signal.SIGTERM, stop)
open(sys.argv[1] + "/agent", "w").write(str(os.getpid()))
worker.wait()
"""

LAUNCHER = """
import sys
from align.launcher import launch
sys.exit(launch([sys.executable, "-c", sys.argv[2], sys.argv[1], sys.argv[3]], grace=3))
"""


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def wait_for(predicate, seconds: float = 15.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


@pytest.fixture
def tree(tmp_path):
    """A running launcher -> agent -> worker; yields (launcher Popen, agent pid, worker pid)."""
    launcher = subprocess.Popen([sys.executable, "-c", LAUNCHER, str(tmp_path), AGENT, WORKER], cwd=REPO,
                                start_new_session=True)
    assert wait_for(lambda: (tmp_path / "worker").is_file() and (tmp_path / "agent").is_file(), 60)
    time.sleep(0.1)
    pids = int((tmp_path / "agent").read_text()), int((tmp_path / "worker").read_text())
    yield launcher, *pids
    for pid in (launcher.pid, *pids):  # never leave a process behind, even when a test fails
        if alive(pid):
            os.kill(pid, signal.SIGKILL)
    launcher.wait()


def test_sigkill_of_the_launcher_kills_agent_and_worker(tree):
    launcher, agent, worker = tree
    os.kill(launcher.pid, signal.SIGKILL)
    assert launcher.wait(10) == -signal.SIGKILL
    assert wait_for(lambda: not alive(agent) and not alive(worker), 5)


def test_sigterm_is_forwarded_and_the_launcher_exits_143(tree):
    launcher, agent, worker = tree
    os.kill(launcher.pid, signal.SIGTERM)
    assert launcher.wait(15) == 143
    assert wait_for(lambda: not alive(agent) and not alive(worker), 5)


def test_an_agent_that_ignores_sigterm_is_killed_after_the_grace_period(tree):
    launcher, agent, worker = tree
    os.kill(agent, signal.SIGSTOP)  # a stopped agent cannot act on the forwarded signal
    os.kill(launcher.pid, signal.SIGTERM)
    assert launcher.wait(20) == 143
    assert wait_for(lambda: not alive(agent) and not alive(worker), 5)


def test_a_killed_agent_takes_its_worker_and_the_launcher_reports_137(tree):
    launcher, agent, worker = tree
    os.kill(agent, signal.SIGKILL)
    assert launcher.wait(10) == 137
    assert wait_for(lambda: not alive(worker), 5)


def test_a_worker_whose_launcher_is_gone_exits_at_once(tmp_path):
    env = dict(os.environ, LIS_ALIGN_LAUNCHER_PID="1", LOCAL_RANK="0")  # its parent's parent is not pid 1
    done = subprocess.run([sys.executable, "-c", WORKER, str(tmp_path)], cwd=REPO, env=env, timeout=60)
    assert done.returncode == 128 + signal.SIGKILL and not (tmp_path / "worker").exists()
