"""LIS as the training objective: a ``transformers.TrainerCallback`` that scores every evaluation.

:class:`LISValidationCallback` plugs into any ``Trainer`` whose model exposes an item embedder
(``model.embedder``, an :class:`align.embedder.ItemEmbedder`):

* **Once, at the start** (``on_train_begin``): rank 0 builds the :class:`lis.evaluator.LISEvaluator`
  (unless one is passed in), computes the LIS of the training builder and logs it. When the LIS
  interval includes 0 the run warns that the preference data has no headroom, and
  ``require_headroom=True`` stops before the first step (a :class:`lis.errors.DataError` on
  every rank). The untrained model is scored too, as step 0 of the curve.
* **At every evaluation** (``on_evaluate``): every rank exports its shard of the items the
  evaluator needs (:func:`align.export.export_embeddings`: the same number of forward passes per
  rank, so ZeRO-3 cannot hang), rank 0 scores the table with the evaluator's probe, and the
  metrics are broadcast so every rank adds the same numbers to the Trainer's metrics dict:
  ``eval_ais_auc``, ``eval_ais_gauc``, ``eval_lis_auc``, ``eval_lis_efficiency`` and their
  ``_lo``/``_hi`` interval bounds. Because the dict is the one ``Trainer`` passes on to
  best-checkpoint selection and to callbacks after this one, ``metric_for_best_model``,
  ``EarlyStoppingCallback``, ``load_best_model_at_end`` and ``save_total_limit`` work unchanged,
  and every rank takes the same stop decision. Register it *before* ``EarlyStoppingCallback``.
* **Outputs** (rank 0, all written atomically, in ``out_dir``): ``evals.jsonl`` (one line per
  evaluation), TensorBoard scalars under ``runs/lis``, and at the end ``lis_report.json``/``.md``
  (the evaluator's report for the best step's table) and ``lis_curve.png`` (AIS and eta against
  step with the LIS ceiling, eval_loss, the best and the early-stop step: :mod:`align.lis_curve`).

Limits: ``eval_lis_efficiency`` is NaN while the LIS interval includes 0 (never "best");
``max_eval_items`` restricts the items exported (and so the impressions scored) for speed; the
evaluator runs on rank 0's CPU while the other ranks wait in a broadcast.
"""
from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path

from transformers import TrainerCallback

from align.checkpoint import EVALS, LIS_CURVE, LIS_REPORT, LIS_REPORT_MD
from align.lis_curve import eval_loss_points, write_curve
from align.strict_json import finite
from lis.atomic import write_text
from lis.errors import DataError

logger = logging.getLogger(__name__)

METRIC_PREFIX = "eval_"


class LISValidationCallback(TrainerCallback):
    """Adds AIS / LIS / efficiency of the model's item embeddings to every evaluation.

    Args:
        batcher: what the exporter collates items with (an ``ItemBatcher`` or ``ItemCache``).
        items: catalogue items (dicts with ``item_id``, ``text``, ``image``); only those the
            evaluator needs are exported.
        out_dir: where ``evals.jsonl``, ``lis_report.*`` and ``lis_curve.png`` go.
        builder: the builder whose LIS is the ceiling (the training data's builder).
        evaluator: a ready :class:`lis.evaluator.LISEvaluator` (rank 0), or None to build one
            from ``evaluator_factory()`` at the start of training, on rank 0 only.
        require_headroom: stop before training when the LIS interval includes 0.
        trained_until: the manifest's ``trained_until`` for exported tables (last fit-window time).
        export_batch_size: items per forward pass during export.
        max_eval_items: export at most this many items (the most frequent in the evaluation window).
        matryoshka_dims: also score each of these prefix dimensions (re-normalised) and add
            ``eval_ais_auc_dD`` with ``_lo``/``_hi`` (``loss.matryoshka_dims``).
    """

    def __init__(self, batcher, items: list[dict], out_dir, builder: str = "co_engagement", evaluator=None,
                 evaluator_factory=None, require_headroom: bool = False, trained_until: int | None = None,
                 export_batch_size: int = 64, max_eval_items: int | None = None, model_name: str = "model",
                 matryoshka_dims=None):
        self.batcher = batcher
        self.all_items = items
        self.out_dir = Path(out_dir)
        self.builder = builder
        self.evaluator = evaluator
        self.evaluator_factory = evaluator_factory
        self.require_headroom = require_headroom
        self.trained_until = trained_until
        self.export_batch_size = export_batch_size
        self.max_eval_items = max_eval_items
        self.model_name = model_name
        self.matryoshka_dims = sorted({int(d) for d in matryoshka_dims or ()}, reverse=True)
        self.lis_scores: dict | None = None
        self.items: list[dict] | None = None
        self.history: list[dict] = []
        self.seconds = {"export": 0.0, "score": 0.0, "setup": 0.0}
        self._writer = None

    # ------------------------------------------------------------------ set-up
    def _set_up(self) -> None:
        """Every rank: the LIS of the builder and the items to export, computed on rank 0 and broadcast."""
        start = time.perf_counter()
        setup = _on_main_then_broadcast(self._setup_main)
        self.lis_scores, needed = setup["lis"], set(setup["items"])
        self.items = [item for item in self.all_items if str(item["item_id"]) in needed]
        self.seconds["setup"] += time.perf_counter() - start
        if setup.get("error"):
            raise DataError(setup["error"])

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        from align.distributed import is_main_process

        self._set_up()
        if state.global_step == 0:
            if is_main_process():  # a fresh run starts a fresh log; a resumed one appends
                (self.out_dir / EVALS).unlink(missing_ok=True)
            self._evaluate(model, step=0)

    def _setup_main(self) -> dict:
        """Rank 0: evaluator, LIS of the builder, the items to export. Errors travel to all ranks."""
        if self.evaluator is None:
            self.evaluator = self.evaluator_factory()
        lis = self.evaluator.lis(self.builder)
        lo, hi = lis["auc_gain_ci"]
        logger.info("LIS of builder '%s': AUC gain %+.4f [%+.4f, %+.4f] (%d pairs)", self.builder,
                    lis["auc_gain"], lo, hi, lis["n_pairs"])
        error = None
        if lo <= 0.0:
            where = getattr(self.evaluator, "name", None)  # the log the evaluator read
            message = (f"{where + ': ' if where else ''}LIS of builder '{self.builder}' is {lis['auc_gain']:+.4f} "
                       f"with a 95% interval [{lo:+.4f}, {hi:+.4f}] that includes 0: the preference data has no "
                       "measurable headroom for this ranker; training on it cannot be shown to help.")
            logger.warning(message)
            if self.require_headroom:
                error = message + " Stopping before training (lis.require_headroom: true)."
        return {"lis": lis, "items": self.needed_item_ids(), "error": error}

    def needed_item_ids(self) -> list[str]:
        """Items the evaluator's features touch (candidates and histories), most frequent first."""
        log_items = self.evaluator.eval_log["item_id"].astype(str)
        counts = log_items.value_counts()
        history = set(self.evaluator.index.item_ids)
        ordered = list(counts.index) + sorted(history - set(counts.index))
        catalogue = {str(item["item_id"]) for item in self.all_items}
        ordered = [item for item in ordered if item in catalogue]
        return ordered[: self.max_eval_items] if self.max_eval_items else ordered

    # ------------------------------------------------------------------ every evaluation
    def on_evaluate(self, args, state, control, metrics=None, model=None, **kwargs):
        scores = self._evaluate(model, step=state.global_step)
        if metrics is not None:
            metrics.update(scores)

    def _evaluate(self, model, step: int) -> dict:
        from align.distributed import is_main_process
        from align.export import export_embeddings

        embedder = _embedder_of(model)
        start = time.perf_counter()
        table = export_embeddings(embedder, self.batcher, self.items, batch_size=self.export_batch_size,
                                  manifest={"model": self.model_name, "step": int(step),
                                            "trained_until": self.trained_until}, progress=False)
        self.seconds["export"] += time.perf_counter() - start
        start = time.perf_counter()
        scores = _on_main_then_broadcast(lambda: self._score(table, step))
        self.seconds["score"] += time.perf_counter() - start
        self.history.append({"step": int(step), **scores})
        if is_main_process():
            self._log(step, scores)
        return scores

    def _score(self, table, step: int) -> dict:
        ais = self.evaluator.score_table(table, name=f"step_{step}")
        lis = self.lis_scores
        eta = self.evaluator.efficiency(ais, lis)
        out = {
            "ais_auc": ais["auc_gain"], "ais_auc_lo": ais["auc_gain_ci"][0], "ais_auc_hi": ais["auc_gain_ci"][1],
            "ais_gauc": ais["gauc_gain"], "ais_gauc_lo": ais["gauc_gain_ci"][0], "ais_gauc_hi": ais["gauc_gain_ci"][1],
            "ais_coverage": ais["coverage"],
            "lis_auc": lis["auc_gain"], "lis_auc_lo": lis["auc_gain_ci"][0], "lis_auc_hi": lis["auc_gain_ci"][1],
            "lis_efficiency": math.nan if eta is None else eta,
        }
        if eta is not None:
            out["lis_efficiency_lo"] = ais["auc_gain_ci"][0] / lis["auc_gain"]
            out["lis_efficiency_hi"] = ais["auc_gain_ci"][1] / lis["auc_gain"]
        out.update(self._score_prefixes(table, step, ais))
        return {METRIC_PREFIX + key: float(value) for key, value in out.items()}

    def _score_prefixes(self, table, step: int, full: dict) -> dict:
        """AIS of each Matryoshka prefix of ``table`` (the full dimension is the table's own score)."""
        from align.export import truncate_table

        out = {}
        for dim in self.matryoshka_dims:
            ais = full if dim >= table.dim else self.evaluator.score_table(truncate_table(table, dim),
                                                                           name=f"step_{step}_d{dim}")
            out[f"ais_auc_d{dim}"] = ais["auc_gain"]
            out[f"ais_auc_d{dim}_lo"], out[f"ais_auc_d{dim}_hi"] = ais["auc_gain_ci"]
        return out

    def _log(self, step: int, scores: dict) -> None:
        line = json.dumps(finite({"step": int(step), "time": round(time.time(), 3), **scores}), allow_nan=False)
        path = self.out_dir / EVALS
        self.out_dir.mkdir(parents=True, exist_ok=True)
        # Append-only log: each line is complete or absent (one write of a whole line).
        with open(path, "a", encoding="utf-8") as handle:
            handle.write(line + "\n")
        logger.info("step %d: AIS AUC gain %+.4f [%+.4f, %+.4f], eta %s", step, scores["eval_ais_auc"],
                    scores["eval_ais_auc_lo"], scores["eval_ais_auc_hi"],
                    "n/a" if math.isnan(scores["eval_lis_efficiency"]) else f"{scores['eval_lis_efficiency']:.2f}")
        writer = self._tensorboard()
        if writer is not None:
            for key, value in scores.items():
                if math.isfinite(value):
                    writer.add_scalar("lis/" + key[len(METRIC_PREFIX):], value, step)
            writer.flush()

    def _tensorboard(self):
        if self._writer is None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard is optional
                self._writer = False
                return None
            self._writer = SummaryWriter(log_dir=str(self.out_dir / "runs" / "lis"))
        return self._writer or None

    # ------------------------------------------------------------------ the end
    def on_train_end(self, args, state, control, **kwargs):
        from align.distributed import is_main_process

        if not is_main_process() or not self.history:
            return
        if self._writer:
            self._writer.close()
        best_step = state.best_global_step or self.best_entry(args.metric_for_best_model)["step"]
        stop_step = state.global_step if state.global_step < state.max_steps else None  # stopped early
        write_curve(self.history, self.lis_scores, self.out_dir / LIS_CURVE, best_step=best_step,
                    builder=self.builder, eval_loss=eval_loss_points(state.log_history), stop_step=stop_step)
        logger.info("LIS callback time: export %.1f s, scoring %.1f s, set-up %.1f s", self.seconds["export"],
                    self.seconds["score"], self.seconds["setup"])

    def best_entry(self, metric: str | None = None) -> dict:
        metric = metric or "eval_ais_auc"
        scored = [h for h in self.history if math.isfinite(h.get(metric, math.nan))]
        return max(scored, key=lambda h: h[metric]) if scored else self.history[-1]

    def final_report(self, table, builders=None) -> dict:
        """The evaluator's full report for ``table`` (the best checkpoint's export), with the curve."""
        builders = builders or [self.builder]
        report = self.evaluator.report({self.model_name: table}, builders=builders)
        report["curve"] = [finite(h) for h in self.history]
        report["callback_seconds"] = dict(self.seconds)
        return report


def _on_main_then_broadcast(fn):
    """``fn()`` on rank 0, its result on every rank (``fn()`` itself when not distributed).

    An exception on rank 0 is sent to the other ranks and raised there too (a DataError as a
    DataError with the same message, anything else as a RuntimeError naming it), so no rank is
    left waiting in the broadcast for a result that will never come.
    """
    from align.distributed import broadcast_object, is_distributed, is_main_process

    if not is_distributed():
        return fn()
    result, failure, error = None, None, None
    if is_main_process():
        try:
            result = fn()
        except Exception as exc:  # noqa: BLE001 - re-raised below, on every rank
            error = exc
            failure = (isinstance(exc, DataError), f"{type(exc).__name__}: {exc}", str(exc))
    result, failure = broadcast_object((result, failure), src=0)
    if error is not None:
        raise error
    if failure is not None:
        is_data_error, described, message = failure
        if is_data_error:
            raise DataError(message)
        raise RuntimeError(f"LISValidationCallback: rank 0 failed ({described}); stopping this rank too.")
    return result


def _embedder_of(model):
    inner = getattr(model, "module", model)
    if hasattr(inner, "embedder"):
        return inner.embedder
    raise DataError("LISValidationCallback: the Trainer's model has no 'embedder' attribute (an ItemEmbedder); "
                    "wrap the VLM in align.trainer.AlignmentModel.")


def write_lis_report(report: dict, out_dir) -> None:
    """``lis_report.json`` + ``lis_report.md`` (the evaluator's layout, plus the curve)."""
    from align import strict_json
    from lis.report import render_markdown

    out_dir = Path(out_dir)
    strict_json.write(out_dir / LIS_REPORT, report)
    lines = [render_markdown(report), "## Curve", "", "| step | AIS AUC gain [95% CI] | eta |", "|---|---|---|"]
    for h in report.get("curve", []):
        eta = h.get("eval_lis_efficiency")
        lines.append(f"| {h['step']} | {h['eval_ais_auc']:+.4f} [{h['eval_ais_auc_lo']:+.4f}, {h['eval_ais_auc_hi']:+.4f}] | "
                     f"{'n/a' if eta is None else f'{eta:.2f}'} |")
    write_text(out_dir / LIS_REPORT_MD, "\n".join(lines) + "\n")

