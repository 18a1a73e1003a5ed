"""The built-in ranker on a distributed log: fitted on the driver on a bounded sample of users.

:class:`lis.rankers.IdCtrRanker` trains with Adam on one machine; its size grows with users
and items, not with impressions per user, so the Spark engine fits it on all rows of a
deterministic sample of users (a hash of the user id) holding at most ``max_rows`` rows, in
the log's order. When the slice has at most ``max_rows`` rows the sample is the whole slice and
the ranker is exactly the in-memory one. Its logits are then computed on the executors.
"""
from __future__ import annotations

from lis.rankers import IdCtrRanker
from lis.spark.source import ORDER

MAX_RANKER_ROWS = 2_000_000


def fit_ranker(log_slice, dim: int, seed: int, name: str, max_rows: int = MAX_RANKER_ROWS) -> IdCtrRanker:
    from pyspark.sql import functions as F

    n = log_slice.count()
    sample = log_slice
    if n > max_rows:
        share = max_rows / n
        bucket = F.pmod(F.xxhash64(F.col("user_id"), F.lit(int(seed))), F.lit(1_000_000))
        sample = log_slice.where(bucket < int(share * 1_000_000))
    frame = sample.orderBy(*ORDER).select("user_id", "item_id", "timestamp", "label").toPandas()
    frame["label"] = frame["label"].astype("int8")
    return IdCtrRanker.fit(frame, dim=dim, seed=seed, name=name)
