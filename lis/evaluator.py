"""The LIS evaluator: AIS of embedding tables, LIS of preference-data builders, efficiency.

:class:`LISEvaluator` does once, at construction, everything that does not depend on an
embedding table: the time windows, the ranker and its base logits, the history index of the
evaluation window, the probe's fit/test split, the cross-fitting folds and the bootstrap
resamples of users. Scoring one more table (:meth:`LISEvaluator.score_table`) then costs one
pass of similarity features, two small logistic fits and the bootstrap — which is what the
training callback calls at every evaluation step.

Definitions (DESIGN section 1):

* ``Gain(E)`` = metric(probe on [base_logit, controls, phi(E)]) - metric(probe on
  [base_logit, controls]), probe fitted on probe-fit, scored on probe-test; AUC and GAUC, with
  a paired bootstrap 95% interval over users.
* ``AIS(E)`` = Gain(E) for a table trained on pre-evaluation data only. A table whose manifest
  says ``trained_until >= eval_start`` is refused (:class:`DataError`).
* ``LIS(builder)`` = Gain(E*) of the leaked oracle: pairs built by the builder from the fit
  window *plus the evaluation window*, cross-fitted over ``folds`` user folds (the oracle used
  for the users of one fold saw only the evaluation-window behaviour of the other folds).
  ``lis_mode='embedding'`` (default) fits a free table of ``oracle_dim`` to those pairs with
  the contrastive loss (:mod:`lis.oracle`); ``lis_mode='pairs'`` looks the pair weights up
  directly (fast, no training).
* ``eta`` = AIS / LIS (AUC gains), reported only when the LIS interval lies above 0.

``mode='full'`` replaces the probe by retraining the ID ranker on the fit window with the
controls and phi as dense inputs (slower; the cross-check that both modes order tables alike):
Gain = metric(ranker fitted with [controls, phi]) - metric(ranker fitted with [controls]), both
scored on probe-test (the probe-fit half is not used). For LIS in full mode the fit-window
features of a user come from the oracle of that user's fold, as on the evaluation window.
Full mode needs the built-in ranker (a ``base_logit`` column cannot be retrained).

Limits: one evaluation window; histories come from the same log; segments are computed from
the probe scores of the whole probe-test half (no refit per segment).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd

from lis.builders import BUILDERS, build_pairs, builder_options
from lis.embeddings import EmbeddingTable
from lis.errors import ConfigError, DataError
from lis.features import CONTROL_NAMES, HistoryIndex
from lis.metrics import auc, gauc, paired_bootstrap, user_resamples
from lis.oracle import fit_pair_embeddings
from lis.probe import probe_gain
from lis.rankers import IdCtrRanker, column_logits
from lis.verdict import verdict
from lis.windows import split_windows


@dataclass
class EvaluatorConfig:
    """Every knob of the evaluator, with defaults that suit logs from 10k to 10M impressions."""

    eval_fraction: float = 0.3
    history_len: int = 50
    ranker: str = "builtin"  # builtin | column (the log's own base_logit)
    ranker_dim: int = 32
    n_bootstrap: int = 200
    folds: int = 2
    mode: str = "probe"  # probe | full (retrain the built-in ranker with the features)
    lis_mode: str = "embedding"  # embedding | pairs
    oracle_dim: int = 64
    oracle_steps: int = 600
    top_k: int = 10
    seed: int = 0
    builder_options: dict = field(default_factory=dict)  # builder name -> options for build_pairs

    def check(self) -> None:
        if self.ranker not in ("builtin", "column"):
            raise ConfigError(f"evaluator option 'ranker' must be 'builtin' or 'column'; got {self.ranker!r}.")
        if self.mode not in ("probe", "full"):
            raise ConfigError(f"evaluator option 'mode' must be 'probe' or 'full'; got {self.mode!r}.")
        if self.mode == "full" and self.ranker != "builtin":
            raise ConfigError("evaluator option 'mode' is 'full', which retrains the built-in ranker; it cannot "
                              "retrain a 'base_logit' column (ranker 'column'): use mode 'probe' or ranker 'builtin'.")
        if self.lis_mode not in ("embedding", "pairs"):
            raise ConfigError(f"evaluator option 'lis_mode' must be 'embedding' or 'pairs'; got {self.lis_mode!r}.")
        if self.folds < 2:
            raise ConfigError(f"evaluator option 'folds' must be >= 2 (cross-fitting); got {self.folds!r}.")
        if self.n_bootstrap < 10:
            raise ConfigError(f"evaluator option 'n_bootstrap' must be >= 10; got {self.n_bootstrap!r}.")


class LISEvaluator:
    """Scores embedding tables (AIS) and builders (LIS) against one log and ranker.

    Build once from a log (time-ordered, validated) and its catalogue; then call
    :meth:`score_table`, :meth:`lis`, :meth:`efficiency`, :meth:`segments` or :meth:`report`.
    LIS results are cached per (builder, options). See the module docstring for definitions.
    """

    def __init__(self, log: pd.DataFrame, catalogue: pd.DataFrame | None = None,
                 config: EvaluatorConfig | None = None, name: str = "log"):
        self.config = config or EvaluatorConfig()
        self.config.check()
        self.log = log.reset_index(drop=True)
        self.catalogue = catalogue
        self.name = name
        self.windows = split_windows(self.log, self.config.eval_fraction, name=name)
        self.fit_log = self.windows.slice(self.log, "fit")
        eval_mask = self.windows.mask(self.log, "eval")
        self.index = HistoryIndex.build(self.log, eval_mask, max_len=self.config.history_len, name=name)
        rows = self.index.rows
        self.eval_log = self.log.iloc[rows].reset_index(drop=True)
        self.labels = self.eval_log["label"].to_numpy().astype(np.int8)
        self.users = self.eval_log["user_id"].astype(str).to_numpy()
        t = self.eval_log["timestamp"].to_numpy()
        self.is_test = t >= self.windows.probe_split
        self.is_fit = ~self.is_test
        self.ranker = None
        if self.config.ranker == "column":
            self.base_logit = column_logits(self.eval_log, name)
        else:
            self.ranker = IdCtrRanker.fit(self.fit_log, dim=self.config.ranker_dim, seed=self.config.seed, name=name)
            self.base_logit = self.ranker.predict_logits(self.eval_log)
        self.resamples = user_resamples(self.users[self.is_test], self.config.n_bootstrap, self.config.seed)
        self.fold_of_user = self._assign_folds()
        self.fold = self.fold_of_user.reindex(self.users).to_numpy()
        self._lis_cache: dict = {}
        self._full = None
        self._full_baselines: dict = {}

    # ------------------------------------------------------------------ basics
    def _assign_folds(self) -> pd.Series:
        users = np.sort(pd.unique(self.log["user_id"].astype(str)))
        rng = np.random.default_rng(self.config.seed + 7919)
        folds = rng.permutation(len(users)) % self.config.folds
        return pd.Series(folds, index=users)

    def base(self) -> dict:
        """AUC and GAUC of the ranker's own logits on probe-test."""
        y, s = self.labels[self.is_test], self.base_logit[self.is_test]
        return {"source": self.config.ranker, "auc": auc(y, s), "gauc": gauc(self.users[self.is_test], y, s)}

    def _gain(self, phi: np.ndarray, controls: np.ndarray, return_scores: bool = False) -> dict:
        base = np.column_stack([self.base_logit, controls])
        fit, test = self.is_fit, self.is_test
        return probe_gain(base[fit], base[test], phi[fit], phi[test], self.labels[fit], self.labels[test],
                          self.users[test], bootstrap=self.resamples, return_scores=return_scores)

    # ------------------------------------------------------------------ AIS
    def check_table(self, table: EmbeddingTable, name: str) -> None:
        """Refuse a table trained on data that reaches into the evaluation window."""
        until = table.manifest.get("trained_until")
        if until is not None and int(until) >= self.windows.eval_start:
            raise DataError(
                f"{name}: manifest field 'trained_until' is {int(until)}, at or after the evaluation window's start "
                f"{self.windows.eval_start} ({self.windows.to_dict()['eval_start']}); AIS needs a table trained only on "
                "pre-evaluation data, otherwise its gain is leaked, not learned. Rebuild its training pairs on the fit window."
            )

    def coverage(self, table: EmbeddingTable, present: np.ndarray | None = None) -> float:
        """Share of evaluation impressions whose candidate item has a vector in the table.

        ``present`` (``index.present_items(table.ids)``) may be passed when already computed."""
        present = self.index.present_items(table.ids) if present is None else present
        # eval_log is log.iloc[index.rows], so the index's candidate codes are in its order.
        return float(present[self.index.target_items].mean())

    def table_features(self, table: EmbeddingTable, present: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        controls = self.index.controls(table) if present is None else self.index.controls(present=present)
        return self.index.features(table), controls

    def check_overlap(self, table: EmbeddingTable, name: str, present: np.ndarray | None = None) -> None:
        """Refuse a table that shares no item with the log (almost always an id-format mismatch)."""
        present = self.index.present_items(table.ids) if present is None else present
        if not present.any():
            raise DataError(
                f"{name}: none of its {len(table.ids)} item ids occurs in the log (table ids look like "
                f"{table.ids[0]!r}, log item ids like {str(self.index.item_ids[0])!r}); it cannot be scored."
            )

    def score_table(self, table: EmbeddingTable, name: str = "table", return_scores: bool = False) -> dict:
        """AIS of ``table``: gains with intervals and ``coverage`` (share of evaluation impressions
        whose candidate has a vector; missing items are scored through the missing flags).

        Uses the probe, or :meth:`score_table_full` when the config says ``mode='full'``.
        Raises :class:`DataError` for a table trained into the evaluation window or sharing no
        item with the log.
        """
        if self.config.mode == "full":
            return self.score_table_full(table, name, return_scores)
        self.check_table(table, name)
        present = self.index.present_items(table.ids)  # the table's ids looked up once per score
        self.check_overlap(table, name, present)
        phi, controls = self.table_features(table, present)
        out = self._gain(phi, controls, return_scores)
        out["coverage"] = self.coverage(table, present)
        out["mode"] = "probe"
        return out

    # ------------------------------------------------------------------ LIS
    def leaked_slice(self, fold: int) -> pd.DataFrame:
        """Fit window plus the evaluation-window rows of every user *outside* ``fold``."""
        eval_part = self.windows.slice(self.log, "eval")
        other = self.fold_of_user.reindex(eval_part["user_id"].astype(str)).to_numpy() != fold
        return pd.concat([self.fit_log, eval_part.loc[other]], ignore_index=True)

    def builder_pairs(self, builder: str, log_slice: pd.DataFrame, **options) -> pd.DataFrame:
        takes_top_k = builder in BUILDERS and "top_k" in builder_options(builder)  # unknown: build_pairs says so
        opts = {"top_k": self.config.top_k} if takes_top_k else {}
        opts.update(self.config.builder_options.get(builder, {}))
        opts.update(options)
        ranker = None
        if builder == "ranker_knn" and log_slice is self.fit_log and self.ranker is not None:
            ranker = self.ranker
        return build_pairs(builder, log_slice, catalogue=self.catalogue, ranker=ranker, seed=self.config.seed, **opts)

    def oracle_tables(self, builder: str, transform=None, **options) -> tuple[list, list[int]]:
        """One leaked oracle per fold — an embedding table (embedding mode) or the pairs frame
        (pairs mode) — and the number of pairs each was built from.

        ``transform(pairs, fold)`` may alter each fold's pairs (e.g. corrupt them for the validity test).
        """
        oracles, counts = [], []
        for fold in range(self.config.folds):
            pairs = self.builder_pairs(builder, self.leaked_slice(fold), **options)
            if transform is not None:
                pairs = transform(pairs, fold)
            if len(pairs) == 0:
                raise DataError(f"builder '{builder}': no pairs in the leaked window of fold {fold}; LIS is undefined "
                                "(the log has too few engagements for this builder).")
            counts.append(len(pairs))
            if self.config.lis_mode == "pairs":
                oracles.append(pairs)
            else:
                oracles.append(fit_pair_embeddings(pairs, dim=self.config.oracle_dim, steps=self.config.oracle_steps,
                                                   seed=self.config.seed + fold, source=f"oracle:{builder}"))
        return oracles, counts

    def oracle_features(self, oracles, index: HistoryIndex | None = None,
                        fold: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Cross-fitted features: each impression gets the oracle of its own user's fold.

        Defaults to the evaluation-window index; full mode passes the fit-window index and
        the fold of each of its impressions.
        """
        index = self.index if index is None else index
        fold = self.fold if fold is None else fold
        n = len(index.rows)
        phi = np.zeros((n, 3), dtype=np.float32)
        controls = np.zeros((n, 3), dtype=np.float32)
        for k, oracle in enumerate(oracles):
            mask = fold == k
            if not mask.any():
                continue
            sub = index.subset(mask)
            if isinstance(oracle, EmbeddingTable):
                phi[mask], controls[mask] = sub.features(oracle), sub.controls(oracle)
            else:
                weights, present = self._pair_matrix(oracle, index)
                phi[mask] = sub.pair_features(weights)
                controls[mask] = sub.controls(present=present)
        return phi, controls

    def _pair_matrix(self, pairs: pd.DataFrame, index: HistoryIndex | None = None):
        import scipy.sparse as sp

        index = self.index if index is None else index
        lookup = pd.Index(index.item_ids)
        a = lookup.get_indexer(pairs["anchor_id"].astype(str))
        p = lookup.get_indexer(pairs["positive_id"].astype(str))
        keep = (a >= 0) & (p >= 0)
        w = pairs["weight"].to_numpy(dtype=np.float64)[keep]
        w = w / w.max() if len(w) else w  # scale-free: the probe standardises, the attention tau does not
        n = len(lookup)
        matrix = sp.coo_matrix((w, (a[keep], p[keep])), shape=(n, n)).tocsr()
        matrix = matrix.maximum(matrix.T)  # candidate->history and history->candidate alike
        present = index.present_items(np.unique(np.concatenate([pairs["anchor_id"], pairs["positive_id"]]).astype(str)))
        return matrix, present

    def lis(self, builder: str, transform=None, cache: bool = True, return_scores: bool = False,
            **options) -> dict:
        """LIS of ``builder``: cross-fitted leaked-oracle gain with intervals, and pair counts.

        Results are cached per (builder, options, modes) unless ``transform`` is given or
        ``cache=False``; a cached call returns a fresh copy of the stored dict.
        ``return_scores`` adds the probe-test score vectors (``scores_with``, ``scores_without``)
        so that a caller can bootstrap a paired difference against an AIS.
        """
        key = (builder, tuple(sorted(options.items())), self.config.lis_mode, self.config.mode)
        out = self._lis_cache.get(key) if cache and transform is None else None
        if out is None:
            out = self._compute_lis(builder, transform, **options)
            if cache and transform is None:
                self._lis_cache[key] = out
        if return_scores:
            return dict(out)
        return {k: v for k, v in out.items() if k not in ("scores_with", "scores_without")}

    def _compute_lis(self, builder: str, transform=None, **options) -> dict:
        oracles, counts = self.oracle_tables(builder, transform=transform, **options)
        phi, controls = self.oracle_features(oracles)
        if self.config.mode == "full":
            full = self._full_mode()
            phi_fit, controls_fit = self.oracle_features(oracles, full["index"], full["fold"])
            out = self._full_gain(np.hstack([controls_fit, phi_fit]), np.hstack([controls, phi]), True)
        else:
            out = self._gain(phi, controls, return_scores=True)
            out["mode"] = "probe"
        out["n_pairs"] = int(np.mean(counts))  # per fold: each oracle saw its own leaked slice
        out["lis_mode"] = self.config.lis_mode
        return out

    def past_pairs(self, builder: str, **options) -> pd.DataFrame:
        """Pairs of ``builder`` built from the fit window only: what a model may legally train on."""
        return self.builder_pairs(builder, self.fit_log, **options)

    def past_table(self, builder: str, dim: int | None = None, steps: int | None = None, transform=None,
                   **options) -> EmbeddingTable:
        """A free table fitted to the builder's fit-window pairs (the 'trained on the past' reference).

        ``transform(pairs, None)`` may alter the pairs first (the same callable as :meth:`lis`
        takes; the fold is None because the past is not cross-fitted). Its manifest says
        ``trained_until = eval_start - 1``, so AIS accepts it.
        """
        pairs = self.past_pairs(builder, **options)
        if transform is not None:
            pairs = transform(pairs, None)
        return fit_pair_embeddings(pairs, dim=dim or self.config.oracle_dim, steps=steps or self.config.oracle_steps,
                                   seed=self.config.seed, trained_until=self.windows.eval_start - 1,
                                   source=f"past:{builder}")

    # ------------------------------------------------------------------ efficiency, segments
    @staticmethod
    def efficiency(ais: dict, lis: dict) -> float | None:
        """eta = AIS / LIS on AUC gain; None when the LIS interval does not lie above 0."""
        if lis["auc_gain_ci"][0] <= 0.0 or lis["auc_gain"] <= 0.0:
            return None
        return float(ais["auc_gain"] / lis["auc_gain"])

    def segment_masks(self) -> dict[str, np.ndarray]:
        """Boolean masks over probe-test impressions: cold/warm items, category, popularity terciles."""
        test_log = self.eval_log.loc[self.is_test]
        items = test_log["item_id"].astype(str)
        masks = {}
        fit_items = set(self.fit_log["item_id"].astype(str))
        cold = ~items.isin(fit_items).to_numpy()
        masks["cold_items"], masks["warm_items"] = cold, ~cold
        counts = self.fit_log["item_id"].astype(str).value_counts()
        popularity = counts.reindex(items).fillna(0).to_numpy()
        cuts = np.quantile(popularity, [1 / 3, 2 / 3])
        tercile = np.searchsorted(cuts, popularity, side="right")
        for level, label in enumerate(("popularity_low", "popularity_mid", "popularity_high")):
            masks[label] = tercile == level
        if self.catalogue is not None and "category" in self.catalogue.columns:
            category = self.catalogue.set_index(self.catalogue["item_id"].astype(str))["category"]
            values = category.reindex(items).astype(str).to_numpy()
            for name in sorted(pd.unique(values))[:20]:
                masks[f"category={name}"] = values == name
        return masks

    def segments_from_scores(self, scores_with: np.ndarray, scores_without: np.ndarray) -> dict:
        """Gains per segment from one pair of probe-test score vectors (no refit)."""
        y, users = self.labels[self.is_test], self.users[self.is_test]
        out = {}
        for name, mask in self.segment_masks().items():
            n, pos = int(mask.sum()), int(y[mask].sum())
            if n == 0 or pos == 0 or pos == n:
                out[name] = {"n": n, "auc_gain": None, "auc_gain_ci": None,
                             "note": "segment needs both labels" if n else "empty segment"}
                continue
            stats = paired_bootstrap(y[mask], scores_with[mask], scores_without[mask], users=users[mask],
                                     n_resamples=self.config.n_bootstrap, seed=self.config.seed, metrics=("auc",))
            out[name] = {"n": n, "auc_gain": stats["auc"]["gain"], "auc_gain_ci": stats["auc"]["gain_ci"]}
        return out

    # ------------------------------------------------------------------ full mode
    def score_table_full(self, table: EmbeddingTable, name: str = "table", return_scores: bool = False) -> dict:
        """AIS in full mode: retrain the ranker on the fit window with [controls, phi] as inputs.

        Costs two ranker fits per table (one when the table's controls match an earlier
        table's: the controls-only baseline is cached), i.e. seconds on 100k impressions.
        """
        self.check_table(table, name)
        present = self.index.present_items(table.ids)
        self.check_overlap(table, name, present)
        full = self._full_mode()
        dense_fit = np.hstack([full["index"].controls(table), full["index"].features(table)])
        phi, controls = self.table_features(table, present)
        out = self._full_gain(dense_fit, np.hstack([controls, phi]), return_scores)
        out["coverage"] = self.coverage(table, present)
        return out

    def _full_mode(self) -> dict:
        """Fit-window history index, rows and folds (built on first use: probe mode never needs them)."""
        if self._full is None:
            fit_mask = self.windows.mask(self.log, "fit")
            index = HistoryIndex.build(self.log, fit_mask, max_len=self.config.history_len, name=self.name)
            log = self.log.iloc[index.rows].reset_index(drop=True)
            fold = self.fold_of_user.reindex(log["user_id"].astype(str)).to_numpy()
            self._full = {"index": index, "log": log, "fold": fold}
        return self._full

    def _full_ranker(self, dense_fit: np.ndarray) -> IdCtrRanker:
        return IdCtrRanker.fit(self._full_mode()["log"], dim=self.config.ranker_dim, seed=self.config.seed,
                               dense=dense_fit, name=self.name)

    def _full_baseline(self, controls_fit: np.ndarray) -> IdCtrRanker:
        """The controls-only ranker, cached by the controls' bytes (equal for equal coverage)."""
        import hashlib

        key = hashlib.sha1(np.ascontiguousarray(controls_fit).tobytes()).hexdigest()
        if key not in self._full_baselines:
            self._full_baselines[key] = self._full_ranker(controls_fit)
        return self._full_baselines[key]

    def _full_gain(self, dense_fit: np.ndarray, dense_eval: np.ndarray, return_scores: bool = False) -> dict:
        """Gain of the ranker fitted with all dense columns over the one fitted with the controls
        (the first ``len(CONTROL_NAMES)`` columns), both scored on probe-test; same keys as the probe."""
        n_controls = len(CONTROL_NAMES)
        test = self.is_test
        rows = self.eval_log.loc[test]
        without = self._full_baseline(dense_fit[:, :n_controls])
        scores_without = without.predict_logits(rows, dense=dense_eval[test, :n_controls])
        scores_with = self._full_ranker(dense_fit).predict_logits(rows, dense=dense_eval[test])
        stats = paired_bootstrap(self.labels[test], scores_with, scores_without, resamples=self.resamples)
        out = {"n_fit": int(len(dense_fit)), "n_test": int(test.sum()), "n_resamples": len(self.resamples),
               "level": 0.95, "mode": "full"}
        for metric, values in stats.items():
            for key in ("with", "without", "gain", "gain_ci", "gain_se"):
                out[f"{metric}_{key}"] = values[key]
        if return_scores:
            out["scores_with"], out["scores_without"] = scores_with, scores_without
        return out

    # ------------------------------------------------------------------ the report
    def report(self, tables: dict[str, EmbeddingTable] | None = None, builders=("co_engagement",),
               with_segments: bool = True, progress=None) -> dict:
        """Everything ``report.json`` holds (see README): base, windows, lis, ais, efficiency, verdict, segments."""
        tables = tables or {}
        out = {"base": self.base(), "windows": self.windows.to_dict(), "config": asdict(self.config),
               "lis": {}, "ais": {}, "efficiency": {}, "segments": {}}
        for builder in builders:
            scores = self.lis(builder)
            out["lis"][builder] = _public(scores)
            if progress:
                progress(f"LIS {builder}: AUC gain {scores['auc_gain']:+.4f}")
        for name, table in tables.items():
            scores = self.score_table(table, name, return_scores=with_segments)
            if with_segments:
                out["segments"][name] = self.segments_from_scores(scores.pop("scores_with"), scores.pop("scores_without"))
            out["ais"][name] = _public(scores) | {"coverage": scores["coverage"]}
            out["efficiency"][name] = {b: self.efficiency(scores, out["lis"][b]) for b in out["lis"]}
            if progress:
                progress(f"AIS {name}: AUC gain {scores['auc_gain']:+.4f}")
        out["verdict"] = verdict(out["lis"], out["efficiency"])
        return out


PUBLIC_KEYS = ("auc_with", "auc_without", "auc_gain", "auc_gain_ci", "gauc_with", "gauc_without", "gauc_gain",
               "gauc_gain_ci", "n_pairs", "mode", "lis_mode", "coverage", "n_fit", "n_test")


def _public(scores: dict) -> dict:
    return {k: v for k, v in scores.items() if k in PUBLIC_KEYS}
