"""Blocks of whole users: the unit every distributed per-user computation works on.

Each block holds all rows (fit and evaluation window) of a set of users, hashed by user id,
sorted in log order, with the in-memory :class:`lis.features.HistoryIndex` of its
evaluation-window rows built once. Because a user never spans two blocks, the in-memory kernel
runs unchanged on a block: histories, similarity features and controls (:func:`table_columns`,
:func:`oracle_columns`), within-user centring and per-user AUCs. Blocks are made once per
evaluator by one grouped pandas UDF and kept as an RDD of pickled dicts persisted on local disk.
"""
from __future__ import annotations

import pickle

import numpy as np
import pandas as pd

from lis.embeddings import EmbeddingTable
from lis.features import HistoryIndex
from lis.resample import user_keys
from lis.spark.source import ORDER

# Rows per block: big enough to amortise Python per block, small enough that the JVM's copies of
# a pickled block (one binary value: Arrow, the RDD row, the persisted copy) stay near 30 MB.
ROWS_PER_BLOCK = 100_000
# Rows per partition of the block RDD: every pass over the blocks (a probe's Newton steps make
# dozens) is one task per partition, so partitions hold many blocks. One block per partition made
# 743 tasks per pass at 74M impressions, and the run spent its time scheduling them.
ROWS_PER_PARTITION = 1_000_000


def n_blocks(n_rows: int, parallelism: int) -> int:
    return max(2 * parallelism, -(-n_rows // ROWS_PER_BLOCK))


def n_partitions(n_rows: int, parallelism: int) -> int:
    return max(2 * parallelism, -(-n_rows // ROWS_PER_PARTITION))


def make_blocks(log, n: int, *, partitions: int, eval_start: int, probe_split: int, max_len: int, ranker=None):
    """RDD of ``n`` block dicts in ``partitions`` partitions (when fewer than ``n``, several blocks to
    a partition) from the canonical log joined with ``fold`` per user (persisted).

    Block keys: ``users``/``keys`` (the evaluation rows' users as local codes and the uint64
    keys of those users), ``labels``, ``is_test``, ``fold``, ``base_logit`` (the column, or the
    broadcast ``ranker``'s logits), ``index`` (targets = evaluation rows)."""
    from pyspark import StorageLevel
    from pyspark.sql import functions as F

    spark = log.sparkSession
    shared = spark.sparkContext.broadcast(ranker)
    has_logit = "base_logit" in log.columns
    columns = ["user_id", "item_id", "timestamp", "label", "fold", *ORDER[1:]] + (["base_logit"] if has_logit else [])
    bucketed = log.select(*columns).withColumn("_block", F.pmod(F.xxhash64("user_id"), F.lit(n)).cast("int"))

    def pack(frame: pd.DataFrame) -> pd.DataFrame:
        frame = frame.sort_values(list(ORDER), kind="stable").reset_index(drop=True)
        in_eval = frame["timestamp"].to_numpy() >= eval_start
        index = HistoryIndex.build(frame, in_eval, max_len=max_len, name="log", workers=1)
        rows = frame.iloc[index.rows]
        codes, uniques = pd.factorize(rows["user_id"].astype(str))
        logit = rows["base_logit"].to_numpy(np.float64) if has_logit else shared.value.predict_logits(rows)
        block = {"users": codes.astype(np.int64), "user_ids": np.asarray(uniques, dtype=object),
                 "keys": user_keys(np.asarray(uniques)), "labels": rows["label"].to_numpy().astype(np.int8),
                 "is_test": rows["timestamp"].to_numpy() >= probe_split, "fold": rows["fold"].to_numpy(np.int64),
                 "base_logit": logit, "index": index, "order": rows[list(ORDER)].reset_index(drop=True)}
        return pd.DataFrame({"blob": [pickle.dumps(block, protocol=pickle.HIGHEST_PROTOCOL)]})

    # One partition per block bucket, not spark.sql.shuffle.partitions: with a fixed 8 partitions
    # a partition's size grows with the log.
    packed = bucketed.repartition(n, "_block").groupBy("_block").applyInPandas(pack, schema="blob binary")
    # On local disk, not in the JVM heap: a persisted Python RDD is pickled bytes either way (every
    # pass unpickles it in the workers), and in memory the blocks took the
    # execution memory the next aggregation needed (AGGREGATE_OUT_OF_MEMORY at 74M impressions).
    blocks = packed.rdd.map(lambda row: pickle.loads(row.blob))
    if partitions < n:
        blocks = blocks.coalesce(partitions)
    blocks = blocks.persist(StorageLevel.DISK_ONLY)
    blocks.count()
    return blocks


def table_columns(block: dict, table: EmbeddingTable) -> tuple[np.ndarray, np.ndarray]:
    """(phi, controls) of a table on the block's evaluation rows: the in-memory kernel."""
    index = block["index"]
    present = index.present_items(table.ids)
    return index.features(table), index.controls(present=present)


def oracle_columns(block: dict, oracles: list, scales: list | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Cross-fitted oracle features: each row gets its own user's fold's oracle (as in memory).

    Pairs mode scales fold k's pair weights by ``scales[k]`` (the largest weight among pairs of
    logged items in the whole log), not by the largest within the block."""
    from lis.oracle import cross_fitted_features

    return cross_fitted_features(block["index"], block["fold"], oracles, scales)


def present_count(block: dict, ids) -> int:
    """Evaluation rows of the block whose candidate is among ``ids``."""
    index = block["index"]
    return int(index.present_items(ids)[index.target_items].sum())
