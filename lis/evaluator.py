"""The LIS evaluator: AIS of embedding tables, LIS of preference-data builders, efficiency.

:class:`LISEvaluator` does once, at construction, all that does not depend on an embedding
table (windows, ranker and base logits, history index, probe split, folds, bootstrap resamples),
so scoring one more table (:meth:`LISEvaluator.score_table`: the training callback's call) costs
one pass of similarity features, two small logistic fits and the bootstrap.

Definitions (docs/science.md, which this module implements):

* ``Gain(E)``: metric(probe with phi(E)) - metric(probe without), paired bootstrap over users;
  AUC from global probes, GAUC from within-user probes (:func:`lis.probe.probe_gain`).
* ``AIS(E)`` = Gain(E) of a table trained before the evaluation window (a manifest whose
  ``trained_until`` reaches into it is refused); ``LIS(builder)`` = Gain(E*) of the leaked,
  cross-fitted oracle of the builder's pairs (embedding mode: :mod:`lis.oracle`; pairs mode:
  pair weights looked up).
* ``eta`` = AIS / LIS against the table's own ceiling (:meth:`LISEvaluator.ceiling`).
``mode='full'``: retrain the ID ranker with the features (:mod:`lis.full_mode`). ``engine='spark'``:
the same on Spark (:mod:`lis.engine`). Too few users for a bootstrap: refused at construction.
Limits: one evaluation window; histories from the same log; segments reuse probe-test scores.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd

from lis.builders import BUILDERS, build_pairs, builder_options
from lis.embeddings import EmbeddingTable
from lis.errors import ConfigError, DataError
from lis.features import HistoryIndex
from lis.full_mode import FullMode
from lis.bootstrap import check_bootstrap_users, paired_bootstrap, user_resamples
from lis.metrics import auc, gauc
from lis.oracle import cross_fitted_features, fit_in_processes, fit_pair_embeddings
from lis.probe import probe_gain
from lis.rankers import IdCtrRanker, column_logits
from lis.segments import segment_gains, segment_masks
from lis.verdict import ceiling_for, has_headroom, relation, verdict
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
    engine: str = "memory"  # memory | spark (lis.spark; with spark_master URL and spark_conf settings)
    spark_master: str | None = None
    spark_conf: dict = field(default_factory=dict)
    # The folds' oracle tables fitted in this many processes (forked; 1 = in this one). Each fit
    # runs on one thread from its own seed, so the tables do not depend on it.
    workers: int = 1

    def check(self) -> None:
        for option, choices in (("ranker", ("builtin", "column")), ("mode", ("probe", "full")),
                                ("lis_mode", ("embedding", "pairs")), ("engine", ("memory", "spark"))):
            if getattr(self, option) not in choices:
                raise ConfigError(f"evaluator option '{option}' must be {' or '.join(map(repr, choices))}; "
                                  f"got {getattr(self, option)!r}.")
        if self.mode == "full" and self.ranker != "builtin":
            raise ConfigError("evaluator option 'mode' is 'full', which retrains the built-in ranker; it cannot "
                              "retrain a 'base_logit' column (ranker 'column'): use mode 'probe' or ranker 'builtin'.")
        if self.folds < 2:
            raise ConfigError(f"evaluator option 'folds' must be >= 2 (cross-fitting); got {self.folds!r}.")
        if isinstance(self.workers, bool) or not isinstance(self.workers, int) or self.workers < 1:
            raise ConfigError(f"evaluator option 'workers' must be an integer >= 1; got {self.workers!r}.")
        if self.n_bootstrap < 10:
            raise ConfigError(f"evaluator option 'n_bootstrap' must be >= 10; got {self.n_bootstrap!r}.")


class LISEvaluator:
    """Scores embedding tables (AIS) and builders (LIS) against one log and ranker.

    Build once from a log (time-ordered, validated) and its catalogue; then call :meth:`score_table`,
    :meth:`lis` (cached per builder and options), :meth:`efficiency`, :meth:`segments` or :meth:`report`.
    """

    def __init__(self, log: pd.DataFrame, catalogue: pd.DataFrame | None = None,
                 config: EvaluatorConfig | None = None, name: str = "log"):
        self.config = config or EvaluatorConfig()
        self.config.check()
        if self.config.engine != "memory":
            raise ConfigError("evaluator option 'engine' is 'spark': build it with lis.engine.make_evaluator.")
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
        check_bootstrap_users(self.users[self.is_test], self.labels[self.is_test],
                              f"{name}: the probe-test half of the evaluation window")
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
        self._full: FullMode | None = None

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
                          self.users[test], self.users[fit], bootstrap=self.resamples, return_scores=return_scores)

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
        pair_sets = []
        for fold in range(self.config.folds):
            pairs = self.builder_pairs(builder, self.leaked_slice(fold), **options)
            if transform is not None:
                pairs = transform(pairs, fold)
            if len(pairs) == 0:
                raise DataError(f"builder '{builder}': no pairs in the leaked window of fold {fold}; LIS is undefined "
                                "(the log has too few engagements for this builder).")
            pair_sets.append(pairs)
        counts = [len(pairs) for pairs in pair_sets]
        if self.config.lis_mode == "pairs":
            return pair_sets, counts
        jobs = [dict(pairs=pairs, dim=self.config.oracle_dim, steps=self.config.oracle_steps, seed=self.config.seed + fold,
                     source=f"oracle:{builder}") for fold, pairs in enumerate(pair_sets)]
        return fit_in_processes(jobs, self.config.workers), counts

    def oracle_features(self, oracles, index: HistoryIndex | None = None,
                        fold: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Cross-fitted features: each impression gets the oracle of its own user's fold.

        Defaults to the evaluation-window index; full mode passes the fit-window index and
        the fold of each of its impressions.
        """
        return cross_fitted_features(self.index if index is None else index, self.fold if fold is None else fold,
                                     oracles)

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
            full = self.full_mode()
            phi_fit, controls_fit = self.oracle_features(oracles, full.index, full.fold)
            out = full.gain(np.hstack([controls_fit, phi_fit]), np.hstack([controls, phi]), True)
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

    # ------------------------------------------------------------------ efficiency, ceilings, segments
    @staticmethod
    def efficiency(ais: dict, lis: dict) -> float | None:
        """eta = AIS / LIS on AUC gain; None when the LIS interval does not lie above 0."""
        return float(ais["auc_gain"] / lis["auc_gain"]) if has_headroom(lis) else None

    def ceiling(self, table: EmbeddingTable, ais: dict, lis: dict) -> dict:
        """The table's own ceiling: the builder (+ options) of its manifest, else the best builder
        of ``lis`` (builder -> scores); its LIS (computed here with the manifest's options when
        they are not those of ``lis``), eta with the AIS interval divided by it, and the relation
        ``within`` / ``exceeds`` / ``no_ceiling`` (:func:`lis.verdict.relation`)."""
        builder, source = ceiling_for(table.manifest, lis)
        out = {"builder": builder, "source": source, "options": None, "lis": None, "eta": None, "eta_ci": None,
               "relation": "no_ceiling"}
        if builder is None:
            return out
        options = table.manifest.get("builder_options") if source == "manifest" else None
        if options or builder not in lis:
            scores = _public(self.lis(builder, **(options or {})))
        else:
            scores = lis[builder]
        out.update(options=options or None, lis=scores, relation=relation(ais, scores))
        if out["relation"] == "within":
            out["eta"] = self.efficiency(ais, scores)
            out["eta_ci"] = [ais["auc_gain_ci"][0] / scores["auc_gain"], ais["auc_gain_ci"][1] / scores["auc_gain"]]
        return out

    def segment_masks(self) -> dict[str, np.ndarray]:
        """Boolean masks over probe-test impressions (:func:`lis.segments.segment_masks`)."""
        return segment_masks(self.eval_log.loc[self.is_test], self.fit_log, self.catalogue)

    def segments_from_scores(self, scores_with: np.ndarray, scores_without: np.ndarray) -> dict:
        """AUC gains per segment from one pair of probe-test score vectors (no refit); ``n/a`` for
        segments too small for an interval (:mod:`lis.segments`)."""
        test = self.is_test
        return segment_gains(self.segment_masks(), self.labels[test], self.users[test], scores_with, scores_without,
                             self.config.n_bootstrap, self.config.seed)

    # ------------------------------------------------------------------ full mode
    def full_mode(self) -> FullMode:
        """Fit-window index, rows, folds and cached baselines of full mode (built on first use)."""
        if self._full is None:
            self._full = FullMode(self)
        return self._full

    def score_table_full(self, table: EmbeddingTable, name: str = "table", return_scores: bool = False) -> dict:
        """AIS in full mode: retrain the ranker on the fit window with [controls, phi] as inputs
        (two ranker fits per table, one when the controls-only baseline is cached)."""
        self.check_table(table, name)
        present = self.index.present_items(table.ids)
        self.check_overlap(table, name, present)
        full = self.full_mode()
        phi, controls = self.table_features(table, present)
        out = full.gain(full.table_columns(table), np.hstack([controls, phi]), return_scores)
        out["coverage"] = self.coverage(table, present)
        return out

    # ------------------------------------------------------------------ the report
    def report(self, tables: dict[str, EmbeddingTable] | None = None, builders=("co_engagement",),
               with_segments: bool = True, progress=None) -> dict:
        """Everything ``report.json`` holds (see README): base, windows, lis, ais (each table with its
        own ``ceiling``), the table x builder ``efficiency`` matrix, verdict, segments."""
        tables = tables or {}
        out = {"base": self.base(), "windows": self.windows.to_dict(), "config": asdict(self.config),
               "lis": {}, "ais": {}, "efficiency": {}, "segments": {}}
        for builder in builders:
            scores = self.lis(builder)
            out["lis"][builder] = _public(scores)
            if progress:
                progress(f"LIS {builder}: AUC gain {scores['auc_gain']:+.4f}")
        ceilings = {}
        for name, table in tables.items():
            scores = self.score_table(table, name, return_scores=with_segments)
            if with_segments:
                out["segments"][name] = self.segments_from_scores(scores["scores_with"], scores["scores_without"])
            public = _public(scores) | {"coverage": scores["coverage"]}
            ceilings[name] = self.ceiling(table, public, out["lis"])
            out["ais"][name] = public | {"ceiling": ceilings[name]}
            out["efficiency"][name] = {b: self.efficiency(scores, out["lis"][b]) for b in out["lis"]}
            if progress:
                progress(f"AIS {name}: AUC gain {scores['auc_gain']:+.4f}")
        out["verdict"] = verdict(out["lis"], ceilings, out["ais"])
        return out


PUBLIC_KEYS = ("auc_with", "auc_without", "auc_gain", "auc_gain_ci", "gauc_with", "gauc_without", "gauc_gain",
               "gauc_gain_ci", "n_pairs", "mode", "lis_mode", "coverage", "n_fit", "n_test")


def _public(scores: dict) -> dict:
    return {k: v for k, v in scores.items() if k in PUBLIC_KEYS}
