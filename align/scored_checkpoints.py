"""Which checkpoints of a run are scored, which wait for the scorer, and which may be deleted.

Asynchronous validation (:mod:`align.async_validation`) talks to its scorer process
(:mod:`align.async_scorer`) through files in the run folder only, so either side may die at any
moment without leaving the other waiting on a socket:

* ``RUN/lis_scorer/queue/step-NNNNNNNNN.json`` — a job: ``{"step", "checkpoint"}``, written
  atomically by the trainer (rank 0) after a checkpoint is saved, removed by the scorer once
  the result is in ``evals.jsonl``.
* ``RUN/evals.jsonl`` — one complete line per scored step, appended by the scorer in one
  write; a line without its newline (a writer killed mid-write) is ignored by :func:`read_scored`.
* ``RUN/checkpoint-N/lis_scored.json`` — the scored steps the trainer had fed to its handlers
  when it saved checkpoint N (so a resumed run knows which results its restored state has seen).

Retention (:func:`checkpoints_to_delete`): ``save_total_limit`` counts as in Trainer, but a
checkpoint that is not scored yet, the best so far and the newest one are never deleted.
Nothing here imports torch.
"""
from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path

from align.checkpoint import CHECKPOINT_PREFIX, EVALS

SCORER_DIR = "lis_scorer"
QUEUE_DIR = "queue"
DELIVERED_FILE = "lis_scored.json"
_JOB = re.compile(r"^step-(\d+)\.json$")
_CHECKPOINT = re.compile(rf"^{re.escape(CHECKPOINT_PREFIX)}(\d+)$")


def queue_dir(run_dir) -> Path:
    return Path(run_dir) / SCORER_DIR / QUEUE_DIR


def enqueue(run_dir, step: int, checkpoint) -> Path:
    """Ask the scorer to score ``checkpoint`` (the model at ``step``); atomic, idempotent."""
    from lis.atomic import write_json

    path = queue_dir(run_dir) / f"step-{int(step):09d}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, {"step": int(step), "checkpoint": str(checkpoint)})
    return path


def pending_jobs(run_dir) -> list[dict]:
    """Jobs waiting in the queue, oldest step first (a job file being written is skipped)."""
    jobs = []
    folder = queue_dir(run_dir)
    for path in sorted(folder.glob("step-*.json")) if folder.is_dir() else []:
        if not _JOB.match(path.name):
            continue
        try:
            jobs.append({**json.loads(path.read_text(encoding="utf-8")), "path": str(path)})
        except (OSError, ValueError):  # removed or replaced meanwhile: the next poll sees it
            continue
    return sorted(jobs, key=lambda job: job["step"])


def clear_queue(run_dir) -> None:
    shutil.rmtree(queue_dir(run_dir), ignore_errors=True)


def read_scored(run_dir) -> list[dict]:
    """The complete lines of ``evals.jsonl`` (JSON null -> NaN), in file order.

    A last line without its newline is a write cut short and is skipped; so is a line that does
    not parse (it cannot come from our writers, which write whole lines, but a hand-edited file
    must not stop training).
    """
    path = Path(run_dir) / EVALS
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    entries = []
    for line in text.split("\n")[:-1]:  # the piece after the last newline is incomplete (or empty)
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict) and isinstance(entry.get("step"), int):
            entries.append({k: (math.nan if v is None else v) for k, v in entry.items()})
    return entries


def keep_scored_up_to(run_dir, step: int) -> None:
    """Drop the lines of steps after ``step`` (a resumed run retrains those steps); atomic."""
    from lis.atomic import write_text

    path = Path(run_dir) / EVALS
    if not path.is_file():
        return
    lines = [line for line in path.read_text(encoding="utf-8").split("\n")[:-1] if _line_step(line) is not None]
    kept = [line for line in lines if _line_step(line) <= step]
    if len(kept) != len(lines):
        write_text(path, "".join(line + "\n" for line in kept))


def _line_step(line: str) -> int | None:
    try:
        step = json.loads(line).get("step")
    except (ValueError, AttributeError):
        return None
    return step if isinstance(step, int) else None


def checkpoint_steps(run_dir) -> dict[int, Path]:
    """``{step: folder}`` of the run's ``checkpoint-N`` folders."""
    run_dir = Path(run_dir)
    found = {}
    for path in run_dir.iterdir() if run_dir.is_dir() else []:
        match = _CHECKPOINT.match(path.name)
        if match and path.is_dir():
            found[int(match.group(1))] = path
    return dict(sorted(found.items()))


def checkpoints_to_delete(steps: list[int], limit: int | None, scored: set[int], best: int | None) -> list[int]:
    """The steps whose checkpoints ``save_total_limit=limit`` lets go, oldest first.

    Like Trainer's rotation, at most ``limit`` checkpoints stay, but these are never deleted:
    the newest (to resume from), the best so far, and every one not scored yet (the scorer has
    still to read it). So more than ``limit`` may stay while the scorer lags.
    """
    if not limit or len(steps) <= limit:
        return []
    steps = sorted(steps)
    protected = {steps[-1], best} | {step for step in steps if step not in scored}
    deletable = [step for step in steps if step not in protected]
    excess = len(steps) - max(limit, len(protected))
    return deletable[:max(excess, 0)]


def rotate(run_dir, limit: int | None, scored: set[int], best: int | None) -> list[int]:
    """Delete what :func:`checkpoints_to_delete` allows; returns the deleted steps."""
    folders = checkpoint_steps(run_dir)
    doomed = checkpoints_to_delete(list(folders), limit, scored, best)
    for step in doomed:
        shutil.rmtree(folders[step], ignore_errors=True)
    return doomed


def write_delivered(checkpoint, steps) -> None:
    from lis.atomic import write_json

    write_json(Path(checkpoint) / DELIVERED_FILE, {"delivered": sorted(int(s) for s in steps)})


def read_delivered(checkpoint) -> set[int]:
    """The scored steps a checkpoint's trainer state had seen; empty when unknown."""
    try:
        data = json.loads((Path(checkpoint) / DELIVERED_FILE).read_text(encoding="utf-8"))
        return {int(s) for s in data.get("delivered", [])}
    except (OSError, ValueError, TypeError, AttributeError):
        return set()
