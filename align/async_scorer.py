"""The LIS scorer process of asynchronous validation: checkpoints in, ``evals.jsonl`` lines out.

    python -m align.async_scorer RUN_DIR/lis_scorer

runs beside training on rank 0's machine (started by :class:`ScorerProcess`, never by hand).
For each job in the queue (:mod:`align.scored_checkpoints`), oldest first, it

1. loads the checkpoint exactly as ``lis-align export`` does (:func:`align.export.load_export_model`:
   base model + PEFT adapter + head + the batcher settings of ``lis_align.json``),
2. embeds the items the evaluator needs through the one embedding loop
   (:func:`align.export.export_embeddings`),
3. scores the table with the same code as inline validation
   (:meth:`align.lis_callback.LISValidationCallback._score`, the evaluator pickled by rank 0 after
   it computed the LIS ceiling) and appends the line to ``evals.jsonl`` and TensorBoard
   (:meth:`~align.lis_callback.LISValidationCallback._log`: one write of a whole line),
4. removes the job.

So a checkpoint gets the same metrics in both modes. The process runs on ``lis.scorer_device``
with the CPU threads training leaves free, at a lower CPU priority than training, dies with
its parent (parent-death signal), and stops when ``RUN_DIR/lis_scorer/stop`` appears and the
queue is empty. Its log is ``RUN_DIR/lis_scorer/scorer.log``.

Testing hooks (environment, read by the scorer): ``LIS_ALIGN_SCORER_DELAY=S`` sleeps S seconds
before each job (a slow scorer); ``LIS_ALIGN_SCORER_DIE_AT=N`` SIGKILLs itself when it takes the
job of step N; ``LIS_ALIGN_SCORER_HANG_AT=N`` stops working at step N (a hung scorer).
"""
from __future__ import annotations

import atexit
import logging
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

from align.scored_checkpoints import SCORER_DIR, pending_jobs

logger = logging.getLogger("align.async_scorer")

INPUTS_FILE = "inputs.pkl"
SPEC_FILE = "spec.json"
STOP_FILE = "stop"
READY_FILE = "ready"  # written once the evaluator is loaded: the time-out clock starts then
LOG_FILE = "scorer.log"
POLL_SECONDS = 0.2
DELAY_ENV, DIE_ENV, HANG_ENV = "LIS_ALIGN_SCORER_DELAY", "LIS_ALIGN_SCORER_DIE_AT", "LIS_ALIGN_SCORER_HANG_AT"
# A launcher's variables would make the scorer believe it is a rank of the training job.
_LAUNCH_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
                     "GROUP_RANK", "ROLE_RANK", "TORCHELASTIC_RUN_ID", "ACCELERATE_USE_CPU",
                     "ACCELERATE_USE_DEEPSPEED", "LIS_ALIGN_LAUNCHER_PID")


def free_cpu_threads(training_processes_here: int, training_threads: int | None) -> int:
    """CPU threads the scorer may use: the cores this machine's training processes leave free (>= 1)."""
    return max(1, (os.cpu_count() or 1) - training_processes_here * (training_threads or 1))


class ScorerProcess:
    """Rank 0's handle on the scorer: start, check, stop, kill. Files only, no pipes to block on."""

    def __init__(self, run_dir, inputs: dict, base_model: str, device: str = "cpu", threads: int = 1):
        from lis.atomic import write_bytes, write_json

        self.run_dir = Path(run_dir)
        self.dir = self.run_dir / SCORER_DIR
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / STOP_FILE).unlink(missing_ok=True)
        (self.dir / READY_FILE).unlink(missing_ok=True)
        self.ready_at: float | None = None
        write_bytes(self.dir / INPUTS_FILE, pickle.dumps(inputs, protocol=pickle.HIGHEST_PROTOCOL))
        write_json(self.dir / SPEC_FILE, {"run_dir": str(self.run_dir), "base_model": str(base_model),
                                          "device": device, "threads": int(threads), "parent_pid": os.getpid()})
        env = {k: v for k, v in os.environ.items() if k not in _LAUNCH_VARIABLES}
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), TOKENIZERS_PARALLELISM="false")
        self.log_path = self.dir / LOG_FILE
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "align.async_scorer", str(self.dir)], env=env,
                                         stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        self.started = time.monotonic()
        atexit.register(self.kill)  # a training that raised must not leave its scorer polling

    @property
    def pid(self) -> int:
        return self.proc.pid

    def is_ready(self) -> bool:
        """True once the scorer has loaded its inputs (``ready_at``: when this side first saw it)."""
        if self.ready_at is None and (self.dir / READY_FILE).exists():
            self.ready_at = time.monotonic()
        return self.ready_at is not None

    def exit_status(self) -> int | None:
        """None while running, else its exit status (negative: killed by that signal)."""
        return self.proc.poll()

    def last_log_line(self) -> str:
        try:
            lines = [line for line in self.log_path.read_text(errors="replace").splitlines() if line.strip()]
        except OSError:
            return ""
        errors = [line for line in lines if "Error" in line]
        return (errors or lines or [""])[-1].strip()[:300]

    def stop(self, grace: float = 10.0) -> None:
        """Ask it to finish (after the queue empties), then kill what is left after ``grace`` seconds."""
        if self.proc.poll() is None:
            (self.dir / STOP_FILE).touch()
            try:
                self.proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                self.kill()

    def kill(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                self.proc.kill()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:  # an unkillable process (D state): do not hang on it
            pass


# --- the scorer process -----------------------------------------------------------------------
def main(argv=None) -> int:
    import json

    argv = sys.argv[1:] if argv is None else argv
    scorer_dir = Path(argv[0])
    spec = json.loads((scorer_dir / SPEC_FILE).read_text())
    from align.launcher import set_parent_death_signal

    set_parent_death_signal(signal.SIGKILL)  # rank 0 gone (even SIGKILLed): no orphaned scorer
    if os.getppid() != spec["parent_pid"]:
        return 3  # the parent died before the signal was armed
    logging.basicConfig(level=logging.INFO, format="[lis scorer] %(asctime)s %(levelname)s %(message)s")
    _lower_priority()
    import torch

    torch.set_num_threads(int(spec["threads"]))
    with open(scorer_dir / INPUTS_FILE, "rb") as handle:
        inputs = pickle.load(handle)
    callback = _scoring_callback(inputs, spec["run_dir"])
    (scorer_dir / READY_FILE).touch()
    logger.info("ready: %d items to embed per checkpoint, device %s, %d threads", len(inputs["items"]),
                spec["device"], spec["threads"])
    while True:
        jobs = pending_jobs(spec["run_dir"])
        if not jobs:
            if (scorer_dir / STOP_FILE).exists():
                logger.info("queue empty and training done: exiting")
                return 0
            time.sleep(POLL_SECONDS)
            continue
        score_job(jobs[0], callback, inputs, spec)


def _scoring_callback(inputs: dict, run_dir: str):
    """An inline LIS callback holding the evaluator: its ``_score`` and ``_log`` are THE scoring code."""
    from align.lis_callback import LISValidationCallback

    callback = LISValidationCallback(None, inputs["items"], run_dir, builder=inputs["builder"],
                                     evaluator=inputs["evaluator"], trained_until=inputs["trained_until"],
                                     export_batch_size=inputs["export_batch_size"], model_name=inputs["model_name"])
    callback.lis_scores, callback.items = inputs["lis"], inputs["items"]
    return callback


def score_job(job: dict, callback, inputs: dict, spec: dict) -> dict:
    """Export and score one checkpoint, append its line, remove the job; returns the scores."""
    from align.export import export_embeddings, load_export_model

    step = int(job["step"])
    _testing_hooks(step)
    start = time.perf_counter()
    embedder, batcher = load_export_model(spec["base_model"], job["checkpoint"], device=spec["device"])
    loaded = time.perf_counter()
    table = export_embeddings(embedder, batcher, inputs["items"], batch_size=inputs["export_batch_size"],
                              manifest={"model": inputs["model_name"], "step": step,
                                        "trained_until": inputs["trained_until"]}, progress=False)
    exported = time.perf_counter()
    scores = callback._score(table, step)
    callback._log(step, scores)
    Path(job["path"]).unlink(missing_ok=True)
    logger.info("step %d scored: load %.1f s, export %.1f s, scoring %.1f s", step, loaded - start,
                exported - loaded, time.perf_counter() - exported)
    return scores


def _testing_hooks(step: int) -> None:
    delay = float(os.environ.get(DELAY_ENV, "0") or 0)
    if delay > 0:
        time.sleep(delay)
    if os.environ.get(DIE_ENV) == str(step):
        logger.error("testing hook %s=%d: killing myself", DIE_ENV, step)
        os.kill(os.getpid(), signal.SIGKILL)
    if os.environ.get(HANG_ENV) == str(step):
        logger.error("testing hook %s=%d: hanging", HANG_ENV, step)
        while True:
            time.sleep(60)


def _lower_priority() -> None:
    """Training first: the scorer takes the CPU time training leaves."""
    try:
        os.nice(5)
    except (OSError, AttributeError):
        pass


if __name__ == "__main__":
    sys.exit(main())
