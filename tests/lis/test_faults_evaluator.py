"""SIGKILL ``synth``, ``data import --overwrite`` and ``lis score`` while they replace a previous
output: every final path holds the complete old or the complete new content, no process
survives, and the next run cleans up what the killed one left. Kill moments come from
``FAULT_SEED`` (tests/faults.py): CI kills once per scenario at fixed moments; a loop over
seeds explores others."""
from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.faults import digest, kill_at, kill_moments, kill_when, leftovers, python_command, wait_until_gone

pytestmark = pytest.mark.slow
KILLS = 1  # kills per scenario in CI (each at a moment drawn from FAULT_SEED)


def _copy(source: Path, target: Path) -> None:
    if target.is_dir():
        shutil.rmtree(target)
    elif target.exists():
        target.unlink()
    if source.is_dir():
        shutil.copytree(source, target)
    else:
        shutil.copyfile(source, target)


def _run_to_completion(cmd, log) -> float:
    start = time.monotonic()
    killed, mark = kill_at(cmd, 900, log=log)
    assert not killed and not wait_until_gone(mark)
    return time.monotonic() - start


STARTUP = 3.0  # seconds a fresh `python -m lis` takes to import before it works (a busy 2-core machine)


def replace_under_fire(name: str, tmp: Path, targets: list[Path], cmd: list[str], check, make_new,
                       ready=None) -> None:
    """``targets`` hold the old content. ``make_new()`` writes the new content in this process
    (what ``cmd`` writes, faster), timing the work; then, the old content restored each time,
    ``cmd`` is killed at moments within its likely duration and ``check(finals, olds, news)``
    is called on the digests of the targets."""
    saved = [tmp / f"saved-{k}" for k in range(len(targets))]
    for target, copy in zip(targets, saved):
        _copy(target, copy)
    olds = [digest(t) for t in targets]
    start = time.monotonic()
    make_new()
    duration = STARTUP + time.monotonic() - start
    news = [digest(t) for t in targets]
    assert all(new is not None for new in news) and news != olds
    for k, moment in enumerate(kill_moments(name, 0.3 * duration, 1.1 * duration, KILLS)):
        for target, copy in zip(targets, saved):
            _copy(copy, target)
        for target in targets:  # a leftover of the previous kill must not count as this one's
            for name_left in leftovers(target.parent, target.name):
                _copy_away = target.parent / name_left
                shutil.rmtree(_copy_away) if _copy_away.is_dir() else _copy_away.unlink()
        killed, mark = kill_at(cmd, moment, log=tmp / f"{name}-kill{k}.log")
        assert wait_until_gone(mark, 5) == [], "a process of the killed command is still running"
        check([digest(t) for t in targets], olds, news)
    if ready is not None:  # and once just as the new folder is finished: the moment of the swap
        for target, copy in zip(targets, saved):
            _copy(copy, target)
        delay = kill_moments(name + "-swap", 0.0, 0.05)[0]
        killed, mark = kill_when(cmd, ready, delay, log=tmp / f"{name}-swap.log")
        assert wait_until_gone(mark, 5) == []
        check([digest(t) for t in targets], olds, news)


def whole_old_or_new(finals, olds, news):
    for final, old, new in zip(finals, olds, news):
        assert final in (old, new), "a final path holds neither the complete old nor the complete new content"


def test_synth_killed_while_replacing_a_world(tmp_path):
    from lis.synth import simulate

    out = tmp_path / "world"
    simulate("tiny", 0, out, progress=False)
    cmd = python_command("-m", "lis", "synth", "--preset", "tiny", "--seed", "1", "--out", out, "--quiet")
    replace_under_fire("synth", tmp_path, [out], cmd, whole_old_or_new, lambda: simulate("tiny", 1, out, progress=False),
                       ready=lambda: (tmp_path / "world.tmp" / "synth.json").exists())  # written last
    _run_to_completion(cmd, tmp_path / "again.log")  # the next run cleans up after the killed one
    assert leftovers(tmp_path, "world") == [] and (out / "synth.json").is_file()


def _events(root: Path, n_items: int, seed: int) -> Path:
    from PIL import Image

    rng = np.random.default_rng(seed)
    (root / "pics").mkdir(parents=True, exist_ok=True)
    for k in range(n_items):
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(root / "pics" / f"p{k}.png")
    frame = pd.DataFrame({"user_id": [f"u{k % 7}" for k in range(3 * n_items)],
                          "item_id": [f"i{k % n_items}" for k in range(3 * n_items)],
                          "timestamp": np.arange(3 * n_items) + 1_700_000_000, "label": [k % 2 for k in range(3 * n_items)],
                          "image": [f"pics/p{k % n_items}.png" for k in range(3 * n_items)]})
    path = root / f"events{seed}.csv"
    frame.to_csv(path, index=False)
    return path


def test_data_import_overwrite_killed_while_replacing(tmp_path):
    from lis.importers import import_interactions_csv

    out = tmp_path / "imported"
    import_interactions_csv(_events(tmp_path / "a", 60, 0), out)
    events = _events(tmp_path / "b", 400, 1)
    cmd = python_command("-m", "lis", "data", "import", "csv", events, "--out", out, "--overwrite")
    replace_under_fire("import", tmp_path, [out], cmd, whole_old_or_new,
                       lambda: import_interactions_csv(events, out, overwrite=True),
                       ready=lambda: (tmp_path / "imported.tmp" / "log.parquet").exists())  # written last
    _run_to_completion(cmd, tmp_path / "again.log")
    assert leftovers(tmp_path, "imported") == []


def test_lis_score_killed_while_replacing_a_report(tmp_path):
    """The three files are each whole, and a new report.json never sits beside an old .md or .png."""
    from lis.cli import main
    from lis.report import report_is_whole
    from lis.synth import simulate

    data = tmp_path / "data"
    simulate("tiny", 0, data, progress=False)
    out = tmp_path / "report.json"
    args = ["lis", "score", "--data", data, "--builder", "random", "--lis-mode", "pairs", "--bootstrap", "10",
            "--no-segments", "--oracle-steps", "5", "--out", out]
    assert main([str(a) for a in args] + ["--seed", "0"]) == 0
    targets = [out, out.with_suffix(".md"), out.with_suffix(".png")]

    def check(finals, olds, news):
        whole_old_or_new(finals, olds, news)
        if finals[0] == news[0]:  # report.json is written last, naming the other two
            assert finals == news and report_is_whole(out)

    replace_under_fire("score", tmp_path, targets, python_command("-m", "lis", *args, "--seed", "1"), check,
                       lambda: main([str(a) for a in args] + ["--seed", "1"]))
