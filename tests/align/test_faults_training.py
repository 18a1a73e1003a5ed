"""SIGKILL ``export``, ``publish --dry-run`` and a two-process ``lis-align train`` at a moment drawn
from ``FAULT_SEED`` (tests/faults.py): every final path holds the complete old or the complete
new content, no process survives the launcher, and a killed run resumes from its last complete
checkpoint."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.align.test_publish import run_dir  # noqa: F401  (a module-scoped fixture: a run folder to publish)
from tests.align.train_helpers import FAST
from tests.faults import (MARK, REPO, digest, kill_at, kill_moments, leftovers, python_command, survivors,
                          wait_until_gone)

pytestmark = pytest.mark.slow


def _restore(saved: Path, target: Path) -> None:
    if target.is_dir():
        shutil.rmtree(target)
    elif target.exists():
        target.unlink()
    (shutil.copytree if saved.is_dir() else shutil.copyfile)(saved, target)
    for name in leftovers(target.parent, target.name):
        left = target.parent / name
        shutil.rmtree(left) if left.is_dir() else left.unlink()


STARTUP = 8.0  # seconds a fresh `python -m align.cli` spends importing torch and transformers (busy 2 cores)


def kill_while_replacing(name: str, tmp: Path, target: Path, cmd: list[str], make_new) -> None:
    """``target`` holds the old content; ``make_new()`` writes the new one in this process (what
    ``cmd`` writes, without its start-up), timing the work; then, the old content restored, ``cmd``
    is killed within its likely duration and ``target`` must hold the old or the new content whole."""
    saved = tmp / f"saved-{name}"
    (shutil.copytree if target.is_dir() else shutil.copyfile)(target, saved)
    old = digest(target)
    start = time.monotonic()
    make_new()
    duration = STARTUP + time.monotonic() - start
    new = digest(target)
    assert new is not None and new != old
    for k, moment in enumerate(kill_moments(name, 0.3 * duration, 1.05 * duration)):
        _restore(saved, target)
        killed, mark = kill_at(cmd, moment, log=tmp / f"{name}-kill{k}.log")
        assert wait_until_gone(mark, 5) == []
        assert digest(target) in (old, new), f"{target} holds neither the complete old nor the complete new content"


def test_export_killed_while_replacing_a_table(tmp_path, data_dir, base_model):
    from align.cli import main

    out = tmp_path / "emb.safetensors"
    ids = tmp_path / "ids.txt"
    ids.write_text("i0\ni1\ni2\n")
    args = ["export", "--model", base_model, "--data", data_dir, "--out", out, "--no-progress"]
    assert main([str(a) for a in args] + ["--ids-file", str(ids)]) == 0  # the old table: three items
    kill_while_replacing("export", tmp_path, out, python_command("-m", "align.cli", *args),
                         lambda: main([str(a) for a in args]))


def test_publish_dry_run_killed_while_replacing_the_folder(tmp_path, run_dir):  # noqa: F811
    from align.cli import main
    from align.publish import assemble

    run = Path(shutil.copytree(run_dir, tmp_path / "run"))
    assemble(run, repo_id="someone/old-name")  # the old folder: its card names another repo
    args = ["publish", str(run), "--repo-id", "someone/new-name", "--dry-run", "--n-probe", "2"]
    kill_while_replacing("publish", tmp_path, run / "publish", python_command("-m", "align.cli", *args),
                         lambda: main(args))


# ----------------------------------------------------------------------------- two-process train
def _train_command(data_dir, base_model, out, *extra):
    return python_command("-m", "align.cli", "train", "recipes/configs/tiny_cpu.yaml", f"data.data_dir={data_dir}",
                          f"model.path={base_model}", f"training.output_dir={out}", *FAST, "training.max_steps=60",
                          *extra, "--accelerate-config", "cpu_2proc")


def _checkpoints(out: Path) -> list[Path]:
    return sorted(out.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))


def test_two_process_train_killed_leaves_no_worker_and_resumes_from_the_last_complete_checkpoint(
        tmp_path, data_dir, base_model):
    from align.checkpoint import last_complete_checkpoint, read_json
    from align.config import load_recipe
    from align.train import run_training

    out = tmp_path / "run"
    env = dict(os.environ, **{MARK: "train-" + tmp_path.name, "OMP_NUM_THREADS": "1"})
    log = open(tmp_path / "train.log", "wb")
    launcher = subprocess.Popen(_train_command(data_dir, base_model, out), cwd=REPO, env=env, stdout=log, stderr=log,
                                start_new_session=True)
    try:
        deadline = time.monotonic() + 600
        while not _checkpoints(out) and launcher.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert launcher.poll() is None, f"training ended before its first checkpoint; see {tmp_path / 'train.log'}"
        time.sleep(kill_moments("train", 0.0, 4.0)[0])  # into the next steps, evaluations and saves
        launcher.send_signal(signal.SIGKILL)  # the launcher alone, as `kill -9 PID` does
        launcher.wait()
        workers = survivors(env[MARK])
        assert wait_until_gone(env[MARK], 10) == [], f"workers {workers} outlived the launcher"
    finally:
        log.close()
        if launcher.poll() is None:
            os.killpg(launcher.pid, signal.SIGKILL)
        wait_until_gone(env[MARK], 10)
    # Every path is whole: complete checkpoints load, best/ and run.json appear only whole.
    complete = last_complete_checkpoint(out)
    assert complete is not None
    state = read_json(complete / "trainer_state.json")
    assert state["global_step"] == int(complete.name.split("-")[1])
    if (out / "best").exists():
        assert (out / "best" / "embeddings.safetensors").is_file() and (out / "best" / "lis_align.json").is_file()
    if (out / "run.json").exists():
        json.loads((out / "run.json").read_text())
    # Resume here (one process) from the newest complete checkpoint, three steps further.
    step = state["global_step"]
    recipe = load_recipe("recipes/configs/tiny_cpu.yaml", [
        f"data.data_dir={data_dir}", f"model.path={base_model}", f"training.output_dir={out}", *FAST,
        f"training.max_steps={step + 3}", "training.resume_from_checkpoint=last"])
    from transformers import TrainerCallback

    class Steps(TrainerCallback):
        seen: list = []

        def on_step_end(self, args, state, control, **kwargs):
            self.seen.append(state.global_step)

    result = run_training(recipe, callbacks=[Steps()])
    assert Steps.seen == [step + 1, step + 2, step + 3]  # it went on from the checkpoint, not from 0
    assert result["global_step"] == step + 3
    assert (out / "best" / "embeddings.safetensors").is_file() and not (out / "best.tmp").exists()


def test_fault_helpers_find_a_process_by_its_mark(tmp_path):
    killed, mark = kill_at([sys.executable, "-c", "import time; time.sleep(30)"], 0.5)
    assert killed and wait_until_gone(mark, 5) == []
