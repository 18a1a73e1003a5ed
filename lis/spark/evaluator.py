""":class:`SparkLISEvaluator`: :class:`lis.evaluator.LISEvaluator` on a Spark DataFrame log.

Same API and the same numbers (to rounding) as the in-memory evaluator: windows, folds, the
ranker's logits, builders, features, probe, metrics and bootstrap are computed on the cluster
(see :mod:`lis.spark`); the oracle table, the item-list builders, the built-in ranker (on a
bounded sample: :mod:`lis.spark.ranker`) and the report on the driver. Not on Spark: ``mode
'full'`` (it retrains the ranker on every impression) and per-segment gains (the report's
``segments`` is empty and says why). Probe-test score vectors stay on the cluster, so
``return_scores`` adds none.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from lis.embeddings import EmbeddingTable
from lis.errors import ConfigError, DataError
from lis.evaluator import EvaluatorConfig, LISEvaluator
from lis.spark import blocks as B
from lis.spark import metrics
from lis.spark.builders import build_pairs_spark
from lis.spark.probe import exact_aucs, probe_gain
from lis.spark.ranker import fit_ranker
from lis.spark.session import parse_conf, spark_session
from lis.spark.source import from_pandas
from lis.spark.windows import split_windows, window_condition

# Log rows per SQL shuffle partition (the windows of co_engagement sort each partition in one task).
ROWS_PER_SHUFFLE_PARTITION = 2_000_000
SEGMENTS_NOTE = "per-segment gains are not computed by the Spark engine (use --engine memory)"


class SparkLISEvaluator(LISEvaluator):
    """``log``: a canonical Spark DataFrame (:func:`lis.spark.source.read_log`) or a validated
    pandas log (converted); ``catalogue``: the pandas catalogue (bounded, on the driver)."""

    def __init__(self, log, catalogue: pd.DataFrame | None = None, config: EvaluatorConfig | None = None,
                 name: str = "log", spark=None):
        from pyspark import StorageLevel

        self.config = config or EvaluatorConfig(engine="spark")
        self.config.check()
        if self.config.mode == "full":
            raise ConfigError("evaluator option 'mode' is 'full', which the Spark engine does not run (it retrains the "
                              "ranker on every impression); use mode 'probe' or engine 'memory'.")
        self.spark = spark or spark_session(self.config.spark_master, self.config.spark_conf)
        if isinstance(log, pd.DataFrame):
            log = from_pandas(self.spark, log, name)
        self.catalogue, self.name = catalogue, name
        self.log = log.persist(StorageLevel.MEMORY_AND_DISK)
        self.windows = split_windows(self.log, self.config.eval_fraction, name=name)
        n_rows = self.windows.counts["fit"][0] + self.windows.counts["eval"][0]
        self._scale_shuffles(n_rows)
        self.fit_log = self.log.where(~window_condition(self.windows, "eval"))
        if self.config.ranker == "column" and "base_logit" not in self.log.columns:
            raise DataError(f"{name}: column 'base_logit' is missing; ranker 'column' needs the production "
                            "ranker's logits in it (or use the built-in ranker).")
        self.ranker = None
        if self.config.ranker == "builtin":
            self.ranker = fit_ranker(self.fit_log, self.config.ranker_dim, self.config.seed, name)
        self.folded = self.log.join(self._folds(), "user_id")
        self._check_test_users()
        parallelism = self.spark.sparkContext.defaultParallelism
        self.blocks = B.make_blocks(self.folded, B.n_blocks(n_rows, parallelism), eval_start=self.windows.eval_start,
                                    probe_split=self.windows.probe_split, max_len=self.config.history_len,
                                    ranker=self.ranker if self.config.ranker == "builtin" else None,
                                    partitions=B.n_partitions(n_rows, parallelism))
        self.log_items = np.sort(self.log.select("item_id").distinct().toPandas()["item_id"].astype(str).to_numpy())
        self.n_eval = self.windows.counts["eval"][0]
        self._lis_cache: dict = {}
        self._full = None

    # ------------------------------------------------------------------ set-up
    def _folds(self):
        """(user_id, fold): the in-memory assignment (a seeded permutation of the sorted users)."""
        users = self.log.select("user_id").distinct().orderBy("user_id")
        n_users = users.count()
        rng = np.random.default_rng(self.config.seed + 7919)
        folds = self.spark.sparkContext.broadcast((rng.permutation(n_users) % self.config.folds).astype(np.int64))
        ranked = users.rdd.zipWithIndex().map(lambda pair: (pair[0][0], int(folds.value[pair[1]])))
        return self.spark.createDataFrame(ranked, "user_id string, fold long")

    def _scale_shuffles(self, n_rows: int) -> None:
        """Shuffle partitions grow with the log unless the user set them: with the session's fixed
        8, a 74M-impression log sorted 9M rows per task for the co-engagement windows, spilling and
        collecting garbage for most of the run."""
        key = "spark.sql.shuffle.partitions"
        if key in parse_conf(self.config.spark_conf):
            return
        wanted = -(-n_rows // ROWS_PER_SHUFFLE_PARTITION)
        if wanted > int(self.spark.conf.get(key)):
            self.spark.conf.set(key, str(wanted))

    def _check_test_users(self) -> None:
        from pyspark.sql import functions as F

        test = self.log.where(window_condition(self.windows, "probe_test"))
        per_user = test.groupBy("user_id").agg(F.max("label").alias("pos"), F.min("label").alias("neg_free"))
        row = per_user.agg(F.count("*").alias("n"), F.sum(((F.col("pos") == 1) & (F.col("neg_free") == 0)).cast("int")).alias("both")).first()
        metrics.check_users(int(row["n"]), int(row["both"] or 0), f"{self.name}: the probe-test half of the evaluation window")

    # ------------------------------------------------------------------ basics
    def base(self) -> dict:
        def local(block):
            test = block["is_test"]
            return {"labels": block["labels"][test].astype(bool), "codes": block["users"][test], "keys": block["keys"],
                    "auc": (block["base_logit"][test],), "gauc": block["base_logit"][test]}
        test = self.blocks.map(local)
        auc_value = float(exact_aucs(test, "auc", 0, self.config.seed, vectors=1)[0][0])

        def gauc_part(block):
            codes = np.unique(block["codes"], return_inverse=True)
            return metrics.gauc_block(block["labels"], codes[1], block["keys"][codes[0]], block["gauc"], None, 0, 0)
        sums = metrics.merge(test.map(gauc_part).collect())
        return {"source": self.config.ranker, "auc": auc_value, "gauc": float(sums["pw"] / sums["w"])}

    def _gain_columns(self, kernel) -> dict:
        """Gain of the features ``kernel(block) -> (phi, controls)`` (the probe on the cluster)."""
        def columns(block):
            phi, controls = kernel(block)
            X = np.column_stack([block["base_logit"], controls, phi]).astype(np.float64)
            return {"X": X, "k": 4, "y": block["labels"], "is_test": block["is_test"], "users": block["users"],
                    "keys": block["keys"]}
        return probe_gain(self.blocks.map(columns), 4, 7, self.config.n_bootstrap, self.config.seed)

    # ------------------------------------------------------------------ AIS
    def check_overlap(self, table: EmbeddingTable, name: str, present=None) -> None:
        if not pd.Index(np.asarray(table.ids, dtype=str)).isin(self.log_items).any():
            raise DataError(
                f"{name}: none of its {len(table.ids)} item ids occurs in the log (table ids look like "
                f"{table.ids[0]!r}, log item ids like {str(self.log_items[0])!r}); it cannot be scored.")

    def coverage(self, table: EmbeddingTable, present=None) -> float:
        ids = self.spark.sparkContext.broadcast(np.asarray(table.ids, dtype=str))
        return float(sum(self.blocks.map(lambda b: B.present_count(b, ids.value)).collect()) / self.n_eval)

    def score_table(self, table: EmbeddingTable, name: str = "table", return_scores: bool = False) -> dict:
        self.check_table(table, name)
        self.check_overlap(table, name)
        shared = self.spark.sparkContext.broadcast(table)
        out = self._gain_columns(lambda block: B.table_columns(block, shared.value))
        out["coverage"] = self.coverage(table)
        out["mode"] = "probe"
        return out

    def collect_columns(self, table: EmbeddingTable) -> pd.DataFrame:
        """Features and controls of every evaluation row with its order key, on the driver: for
        comparing engines on small logs (it collects what grows with the log)."""
        shared = self.spark.sparkContext.broadcast(table)

        def local(block):
            phi, controls = B.table_columns(block, shared.value)
            return block["order"].assign(**{f"c{j}": col for j, col in enumerate(np.hstack([phi, controls]).T)})
        frame = pd.concat(self.blocks.map(local).collect(), ignore_index=True)
        return frame.sort_values(["timestamp", "_file", "_row"], kind="stable").reset_index(drop=True)

    # ------------------------------------------------------------------ LIS
    def leaked_slice(self, fold: int):
        from pyspark.sql import functions as F

        in_eval = window_condition(self.windows, "eval")
        return self.folded.where(~in_eval | (F.col("fold") != fold)).drop("fold")

    def builder_pairs(self, builder: str, log_slice, **options) -> pd.DataFrame:
        from lis.builders import BUILDERS, builder_options

        takes_top_k = builder in BUILDERS and "top_k" in builder_options(builder)
        opts = {"top_k": self.config.top_k} if takes_top_k else {}
        opts.update(self.config.builder_options.get(builder, {}))
        opts.update(options)
        ranker = self.ranker if log_slice is self.fit_log else None
        return build_pairs_spark(builder, log_slice, catalogue=self.catalogue, ranker=ranker, seed=self.config.seed,
                                 ranker_fit=lambda s: fit_ranker(s, opts.get("dim", 32), self.config.seed, self.name),
                                 **opts)

    def _compute_lis(self, builder: str, transform=None, **options) -> dict:
        oracles, counts = self.oracle_tables(builder, transform=transform, **options)
        scale = None
        if self.config.lis_mode == "pairs":   # per fold: the largest weight among pairs of logged items
            scales = []
            for pairs in oracles:
                logged = pairs["anchor_id"].isin(self.log_items) & pairs["positive_id"].isin(self.log_items)
                scales.append(float(pairs.loc[logged, "weight"].max()) if logged.any() else 1.0)
            scale = scales
        shared = self.spark.sparkContext.broadcast((oracles, scale))

        def kernel(block):
            oracles_, scales_ = shared.value
            return B.oracle_columns(block, oracles_, scales_)
        out = self._gain_columns(kernel)
        out["mode"] = "probe"
        out["n_pairs"] = int(np.mean(counts))
        out["lis_mode"] = self.config.lis_mode
        return out

    def oracle_features(self, oracles, index=None, fold=None):
        raise ConfigError("oracle_features: the Spark engine keeps features on the cluster; use lis() or score_table().")

    def segment_masks(self):
        raise ConfigError(f"segments: {SEGMENTS_NOTE}.")

    def full_mode(self):
        raise ConfigError("mode 'full' is not available on the Spark engine.")

    def report(self, tables=None, builders=("co_engagement",), with_segments: bool = True, progress=None) -> dict:
        out = super().report(tables, builders=builders, with_segments=False, progress=progress)
        if with_segments:
            out["segments"] = {name: {"note": SEGMENTS_NOTE} for name in (tables or {})}
        return out

