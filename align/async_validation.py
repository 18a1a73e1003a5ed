"""Asynchronous LIS validation (``lis.mode: async``): training never waits for scoring.

:class:`AsyncLISCallback` is the inline :class:`align.lis_callback.LISValidationCallback`
(same set-up, same metrics, same outputs) with the export and scoring moved off the training
path into a scorer process (:mod:`align.async_scorer`) on rank 0's machine:

* **Start** (``on_train_begin``): rank 0 builds the evaluator and the LIS ceiling as inline, then
  starts the scorer with them; the untrained model is saved once (``lis_scorer/step-0``, a
  checkpoint in the usual format) and queued as step 0 of the curve.
* **Every checkpoint** (``on_save``): rank 0 queues it (:mod:`align.scored_checkpoints`).
* **Every logging step** (``on_step_end``): rank 0 reads the lines the scorer finished and
  broadcasts them in one small collective, so every rank feeds the same metrics, in the same
  step, to the ``on_evaluate`` handlers (``EarlyStoppingCallback``: patience counts scored
  evaluations) and to best-checkpoint tracking (``state.best_metric``, ``best_global_step``,
  ``best_model_checkpoint``). The lag (steps between the save and the step the result arrived)
  is recorded in the history. Trainer's own evaluations (``eval_loss``) still run on schedule.
* **The end** (last ``on_epoch_end``): the queue is drained (rank 0 waits for the scorer, the
  other ranks in the broadcast), then Trainer loads the best *scored* checkpoint as usual.
* **Retention**: ``save_total_limit`` is applied by this callback instead of Trainer: a
  checkpoint not scored yet, the best so far and the newest are never deleted.
* **Failure**: a scorer that exits, or that does not finish the oldest job within
  ``scorer_timeout`` seconds (counted once it has loaded its inputs; its start-up may take
  ``STARTUP_SECONDS``), is killed and reported in one line; training continues
  without LIS (``on_failure='continue'``) or stops at that step on every rank (``'stop'``).
* **Resume** (``resume_from_checkpoint``): lines of steps after the resumed one are dropped,
  results the restored state had not seen are fed to the handlers, and only checkpoints without
  a line are queued again.

Time the training processes spend here is in ``seconds['wait']`` (polls, queueing, the step-0
save) and ``seconds['drain']`` (the final wait). Register it like the inline callback, then
call :meth:`attach` with the trainer (``align.train.prepare`` does).
"""
from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import numpy as np
from transformers import EarlyStoppingCallback

from align.checkpoint import CHECKPOINT_PREFIX, EVALS
from align.lis_callback import METRIC_PREFIX, LISValidationCallback, _on_main_then_broadcast
from align.scored_checkpoints import (SCORER_DIR, checkpoint_steps, clear_queue, enqueue, keep_scored_up_to,
                                      read_delivered, read_scored, rotate, write_delivered)
from lis.errors import DataError

logger = logging.getLogger(__name__)

STEP0_DIR = "step-0"
STARTUP_SECONDS = 600.0  # the scorer's start (imports, the evaluator unpickled) on a busy machine
FAILURE_CHOICES = ("continue", "stop")


class ScoredEarlyStopping(EarlyStoppingCallback):
    """``EarlyStoppingCallback`` that counts only evaluations carrying its metric (scored ones).

    Under asynchronous validation Trainer's own evaluations bring ``eval_loss`` only; the LIS
    metrics arrive later. Those evaluations are skipped silently instead of warning each time.
    """

    def on_evaluate(self, args, state, control, metrics, **kwargs):
        if args.metric_for_best_model in (metrics or {}):
            super().on_evaluate(args, state, control, metrics, **kwargs)


class AsyncLISCallback(LISValidationCallback):
    """LIS validation by a scorer process; see the module docstring.

    Extra args (the rest are :class:`LISValidationCallback`'s):
        base_model: the base model folder or Hub id checkpoints are loaded onto.
        scorer_device: where the scorer runs (``cpu``, ``cuda:1``, ...).
        scorer_threads: CPU threads of the scorer (default: what training leaves free).
        scorer_timeout: seconds the oldest queued checkpoint may wait before the scorer counts as hung.
        on_failure: ``continue`` (train on without LIS) or ``stop`` (stop training at that step).
    """

    def __init__(self, *args, base_model: str, scorer_device: str = "cpu", scorer_threads: int = 1,
                 scorer_timeout: float = 600.0, on_failure: str = "continue", **kwargs):
        super().__init__(*args, **kwargs)
        if on_failure not in FAILURE_CHOICES:
            raise DataError(f"lis.on_scorer_failure: must be one of {', '.join(FAILURE_CHOICES)}; got {on_failure!r}.")
        self.base_model = str(base_model)
        self.scorer_device, self.scorer_threads = scorer_device, int(scorer_threads)
        self.scorer_timeout, self.on_failure = float(scorer_timeout), on_failure
        self.trainer = None
        self.scorer = None  # rank 0: align.async_scorer.ScorerProcess
        self.delivered: set[int] = set()  # scored steps fed to the handlers (every rank)
        self.queued: set[int] = set()  # rank 0: steps sent to the scorer
        self.clock = time.monotonic()  # rank 0: since when the oldest queued job has been waiting
        self.failure: str | None = None
        self.keep_limit: int | None = None
        self.stopped: dict | None = None  # why and where early stopping fired
        self.drained = False
        self.seconds.update(wait=0.0, drain=0.0)

    def attach(self, trainer) -> None:
        """Give the callback its trainer (to reach the other handlers and save step 0)."""
        self.trainer = trainer
        trainer.deferred_best_metric = True  # AlignTrainer: evaluations without the metric decide nothing
        handler = trainer.callback_handler
        handler.callbacks = [ScoredEarlyStopping(cb.early_stopping_patience, cb.early_stopping_threshold)
                             if type(cb) is EarlyStoppingCallback else cb for cb in handler.callbacks]

    # ------------------------------------------------------------------ start
    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if self.trainer is None:
            raise DataError("AsyncLISCallback: call attach(trainer) before training (align.train.prepare does).")
        self._set_up()
        # Retention becomes ours: Trainer's would delete checkpoints the scorer has not read yet.
        self.keep_limit, args.save_total_limit = args.save_total_limit, None
        start = time.perf_counter()
        fresh = state.global_step == 0
        if fresh:  # the untrained model, in the checkpoint format (a collective under ZeRO-3)
            self.trainer.save_model(str(self.out_dir / SCORER_DIR / STEP0_DIR))
        resumed = _on_main_then_broadcast(lambda: self._start_main(fresh, state.global_step))
        self.delivered = set(resumed["delivered"])
        self.history = list(resumed["history"])
        self.seconds["wait"] += time.perf_counter() - start

    def _start_main(self, fresh: bool, step: int) -> dict:
        """Rank 0: evals.jsonl and queue made consistent with ``step``, the scorer started, jobs queued."""
        from align.async_scorer import ScorerProcess

        run = self.out_dir
        clear_queue(run)
        delivered, history = set(), []
        if fresh:
            (run / EVALS).unlink(missing_ok=True)
        else:
            keep_scored_up_to(run, step)
            delivered = read_delivered(run / f"{CHECKPOINT_PREFIX}{step}") | {0}
            history = [e for e in _first_per_step(read_scored(run)) if e["step"] in delivered]
        inputs = {"evaluator": self.evaluator, "items": self.items, "lis": self.lis_scores, "builder": self.builder,
                  "trained_until": self.trained_until, "export_batch_size": self.export_batch_size,
                  "model_name": self.model_name}
        self.scorer = ScorerProcess(run, inputs, self.base_model, device=self.scorer_device,
                                    threads=self.scorer_threads)
        self.clock = time.monotonic()
        scored = {e["step"] for e in read_scored(run)}
        todo = {s: p for s, p in checkpoint_steps(run).items() if s <= step}
        if (run / SCORER_DIR / STEP0_DIR).is_dir():
            todo[0] = run / SCORER_DIR / STEP0_DIR
        for s, path in sorted(todo.items()):
            self.queued.add(s)
            if s not in scored:
                enqueue(run, s, path)
        logger.info("LIS scorer started (pid %d, %s, %d threads); %d checkpoint(s) queued", self.scorer.pid,
                    self.scorer_device, self.scorer_threads, len([s for s in todo if s not in scored]))
        return {"delivered": sorted(delivered), "history": history}

    # ------------------------------------------------------------------ during training
    def on_evaluate(self, args, state, control, metrics=None, model=None, **kwargs):
        """Trainer's own evaluation (``eval_loss``): the LIS metrics of a checkpoint arrive later."""

    def on_save(self, args, state, control, **kwargs):
        from align.distributed import is_main_process

        if not is_main_process():
            return
        start = time.perf_counter()
        checkpoint = self.out_dir / f"{CHECKPOINT_PREFIX}{state.global_step}"
        write_delivered(checkpoint, self.delivered)
        if self.failure is None and checkpoint.is_dir():
            if not self._waiting():
                self.clock = time.monotonic()
            self.queued.add(state.global_step)
            enqueue(self.out_dir, state.global_step, checkpoint)
        self._rotate(state)
        self.seconds["wait"] += time.perf_counter() - start

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step % max(int(args.logging_steps or 1), 1) == 0:
            self._poll(args, state, control, drain=False)

    def on_epoch_end(self, args, state, control, **kwargs):
        last = state.global_step >= state.max_steps or control.should_training_stop
        if last and not self.drained:
            self.drained = True
            self._poll(args, state, control, drain=True)

    def _poll(self, args, state, control, drain: bool) -> None:
        from align.distributed import is_main_process

        start = time.perf_counter()
        payload = _on_main_then_broadcast(lambda: self._collect(drain))
        for entry in payload["results"]:
            self._deliver(entry, args, state, control)
        if payload["failure"] and self.failure is None:
            self._fail(payload["failure"], state, control)
        if is_main_process() and payload["results"]:
            self._rotate(state)
        self.seconds["drain" if drain else "wait"] += time.perf_counter() - start

    def _waiting(self) -> list[int]:
        """Rank 0: queued steps without a line yet."""
        scored = {e["step"] for e in read_scored(self.out_dir)}
        return sorted(self.queued - scored)

    def _collect(self, drain: bool) -> dict:
        """Rank 0: new results and, if any, the scorer's failure; with ``drain``, wait for all of them."""
        results, failure = [], None
        while True:
            # The scorer first, then its lines: a scorer found dead has written every line it ever
            # will, so none arrives after its failure (retention then treats the rest as final).
            failure = self._check_scorer()
            fresh = [e for e in _first_per_step(read_scored(self.out_dir)) if e["step"] not in self.delivered
                     and e["step"] not in {r["step"] for r in results}]
            if fresh:
                self.clock = time.monotonic()  # progress: the next job's time starts now
            results += fresh
            if failure or self.failure is not None or not drain or not self._waiting():
                break
            time.sleep(0.2)
        return {"results": sorted(results, key=lambda e: e["step"]), "failure": failure}

    def _check_scorer(self) -> str | None:
        if self.failure is not None or self.scorer is None:
            return None
        waiting = self._waiting()
        status = self.scorer.exit_status()
        if status is not None:
            if not waiting and (self.out_dir / SCORER_DIR / "stop").exists():
                return None
            what = f"exited with status {status}" + (f" (killed by signal {-status})" if status < 0 else "")
        elif not self.scorer.is_ready():
            limit = max(self.scorer_timeout, STARTUP_SECONDS)
            if time.monotonic() - self.scorer.started <= limit:
                return None
            self.scorer.kill()
            what = f"did not start within {limit:g} s and was killed"
        elif waiting and time.monotonic() - max(self.clock, self.scorer.ready_at) > self.scorer_timeout:
            self.scorer.kill()
            what = f"did not score checkpoint-{waiting[0]} within lis.scorer_timeout={self.scorer_timeout:g} s and was killed"
        else:
            return None
        last = self.scorer.last_log_line()
        return (f"LIS scorer (pid {self.scorer.pid}) {what}; {len(waiting)} checkpoint(s) unscored "
                f"({', '.join(map(str, waiting[:5]))}{'...' if len(waiting) > 5 else ''}); "
                f"log {self.scorer.log_path}" + (f": {last}" if last else ""))

    def _deliver(self, entry: dict, args, state, control) -> None:
        """Feed one scored step to history, handlers and best-checkpoint tracking (every rank alike)."""
        from align.distributed import is_main_process

        step = int(entry["step"])
        self.delivered.add(step)
        scores = {k: float(v) for k, v in entry.items() if k.startswith(METRIC_PREFIX)}
        lag = int(state.global_step - step)
        self.history.append({"step": step, **scores, "lag_steps": lag})
        self.history.sort(key=lambda h: h["step"])
        if is_main_process():
            eta = scores.get("eval_lis_efficiency", math.nan)
            logger.info("step %d scored (%d steps later): AIS AUC gain %+.4f [%+.4f, %+.4f], eta %s", step, lag,
                        scores["eval_ais_auc"], scores["eval_ais_auc_lo"], scores["eval_ais_auc_hi"],
                        "n/a" if math.isnan(eta) else f"{eta:.2f}")
        if step == 0:  # the untrained model has no checkpoint to keep: a point of the curve only
            return
        was_stopping = control.should_training_stop
        # Handlers compare with the best *before* this result, as after Trainer's own evaluate().
        self.trainer.callback_handler.call_event("on_evaluate", args, state, control, metrics=dict(scores))
        self._track_best(args, state, step, scores)
        if control.should_training_stop and not was_stopping and self.stopped is None:
            self.stopped = {"step": int(state.global_step), "reason": "early_stopping", "last_scored_step": step}

    def _track_best(self, args, state, step: int, scores: dict) -> None:
        metric = args.metric_for_best_model
        value = scores.get(metric)
        if value is None or not math.isfinite(value):
            return
        better = np.greater if args.greater_is_better else np.less
        if state.best_metric is None or better(value, state.best_metric):
            state.best_metric = value
            state.best_global_step = step
            state.best_model_checkpoint = str(Path(args.output_dir) / f"{CHECKPOINT_PREFIX}{step}")

    def _fail(self, message: str, state, control) -> None:
        from align.distributed import is_main_process

        self.failure = message
        action = ("stopping training at step %d" % state.global_step if self.on_failure == "stop"
                  else "training continues without LIS validation")
        if is_main_process():
            logger.error("lis-align: %s; %s (lis.on_scorer_failure: %s).", message, action, self.on_failure)
            if self.scorer is not None:
                self.scorer.kill()
        if self.on_failure == "stop":
            control.should_training_stop = True
            self.stopped = {"step": int(state.global_step), "reason": "scorer_failure", "last_scored_step":
                            max(self.delivered, default=None)}

    def _rotate(self, state) -> None:
        # Delivered, not merely written: a line the handlers have not seen yet may still make its
        # checkpoint the best one, so that checkpoint must stay until it has been delivered.
        scored = set(self.delivered)
        if self.failure is not None:  # nothing more will be scored: plain rotation
            scored |= set(checkpoint_steps(self.out_dir))
        deleted = rotate(self.out_dir, self.keep_limit, scored, state.best_global_step)
        if deleted:
            logger.info("save_total_limit=%s: deleted scored checkpoint(s) %s", self.keep_limit, deleted)

    # ------------------------------------------------------------------ the end
    def on_train_end(self, args, state, control, **kwargs):
        from align.distributed import is_main_process

        if is_main_process() and self.scorer is not None:
            self.scorer.stop(grace=10.0)
            self._rotate(state)
        super().on_train_end(args, state, control, **kwargs)


def _first_per_step(entries: list[dict]) -> list[dict]:
    seen, out = set(), []
    for entry in entries:
        if entry["step"] not in seen:
            seen.add(entry["step"])
            out.append(entry)
    return out


def make_async_callback(recipe, source, items: list[dict], base_model: str, **common) -> AsyncLISCallback:
    """The :class:`AsyncLISCallback` of a recipe (``lis.mode: async``); ``common``: the inline callback's arguments."""
    import os

    from align.async_scorer import free_cpu_threads

    on_gpu = str(recipe.lis.scorer_device).startswith("cuda")
    here = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    threads = (recipe.training.cpu_threads or 1) if on_gpu else free_cpu_threads(here, recipe.training.cpu_threads)
    return AsyncLISCallback(source, items, recipe.training.output_dir, base_model=base_model,
                            scorer_device=recipe.lis.scorer_device, scorer_threads=threads,
                            scorer_timeout=recipe.lis.scorer_timeout, on_failure=recipe.lis.on_scorer_failure,
                            **common)
