"""Full mode: the gain of a table measured by retraining the built-in ranker with its features.

``Gain = metric(ranker fitted with [controls, phi]) - metric(ranker fitted with [controls])``,
both fitted on the fit window and scored on probe-test (the probe-fit half is not used). It is
the slower cross-check that the probe orders tables as a retrained production model would. For
LIS the fit-window features of a user come from the oracle of that user's fold, as on the
evaluation window. Needs the built-in ranker (a ``base_logit`` column cannot be retrained).
Both metrics come from the same pair of rankers here (the within-user GAUC probe of
:mod:`lis.probe` has no counterpart: the ranker is what it is).
"""
from __future__ import annotations

import hashlib

import numpy as np

from lis.bootstrap import paired_bootstrap
from lis.features import CONTROL_NAMES, HistoryIndex
from lis.rankers import IdCtrRanker


class FullMode:
    """The fit-window history index, rows and folds of one evaluator (built on first use: probe
    mode never needs them), and the controls-only rankers, cached by their controls."""

    def __init__(self, evaluator):
        ev = evaluator
        self.evaluator = ev
        fit_mask = ev.windows.mask(ev.log, "fit")
        self.index = HistoryIndex.build(ev.log, fit_mask, max_len=ev.config.history_len, name=ev.name)
        self.log = ev.log.iloc[self.index.rows].reset_index(drop=True)
        self.fold = ev.fold_of_user.reindex(self.log["user_id"].astype(str)).to_numpy()
        self._baselines: dict = {}

    def table_columns(self, table) -> np.ndarray:
        """Fit-window dense inputs of a table: [controls, phi]."""
        return np.hstack([self.index.controls(table), self.index.features(table)])

    def ranker(self, dense_fit: np.ndarray) -> IdCtrRanker:
        config = self.evaluator.config
        return IdCtrRanker.fit(self.log, dim=config.ranker_dim, seed=config.seed, dense=dense_fit,
                               name=self.evaluator.name)

    def baseline(self, controls_fit: np.ndarray) -> IdCtrRanker:
        """The controls-only ranker, cached by the controls' bytes (equal for equal coverage)."""
        key = hashlib.sha1(np.ascontiguousarray(controls_fit).tobytes()).hexdigest()
        if key not in self._baselines:
            self._baselines[key] = self.ranker(controls_fit)
        return self._baselines[key]

    def gain(self, dense_fit: np.ndarray, dense_eval: np.ndarray, return_scores: bool = False) -> dict:
        """Gain of the ranker fitted with all dense columns over the one fitted with the controls
        (the first ``len(CONTROL_NAMES)`` columns), both scored on probe-test; the probe's keys."""
        ev = self.evaluator
        n_controls = len(CONTROL_NAMES)
        test = ev.is_test
        rows = ev.eval_log.loc[test]
        scores_without = self.baseline(dense_fit[:, :n_controls]).predict_logits(
            rows, dense=dense_eval[test, :n_controls])
        scores_with = self.ranker(dense_fit).predict_logits(rows, dense=dense_eval[test])
        stats = paired_bootstrap(ev.labels[test], scores_with, scores_without, resamples=ev.resamples)
        out = {"n_fit": int(len(dense_fit)), "n_test": int(test.sum()), "n_resamples": len(ev.resamples),
               "level": 0.95, "mode": "full"}
        for metric, values in stats.items():
            for key in ("with", "without", "gain", "gain_ci", "gain_se"):
                out[f"{metric}_{key}"] = values[key]
        if return_scores:
            out["scores_with"], out["scores_without"] = scores_with, scores_without
            out["gauc_scores_with"], out["gauc_scores_without"] = scores_with, scores_without
        return out
