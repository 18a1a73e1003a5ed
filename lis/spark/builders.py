"""Preference-data builders on a distributed log slice; the pairs (bounded by the catalogue
times ``top_k``) come back to the driver as the in-memory :func:`lis.builders.build_pairs` frame.

``co_engagement`` runs as Spark SQL with the in-memory rules: each user's engagements in
``(timestamp, _file, _row)`` order, the next ``window`` ones as neighbours (strictly later,
another item, within the gap / session), one 1/N_u per (user, pair), scores summed in ascending
order of the contributions (the in-memory builder sums in the same order, so the floats are
identical), ``top_k`` per anchor with ties by id. ``category``, ``random`` and ``ranker_knn``
only need the slice's distinct items (and the ranker): those are collected and the in-memory
builder runs on them. ``user`` reads the user's file, as in memory.
"""
from __future__ import annotations

import math

import pandas as pd

from lis.builders import (BUILDERS, _float_option, _int_option, _sorted_pairs, builder_options)
from lis.errors import ConfigError

ITEM_LIST_BUILDERS = ("category", "random", "ranker_knn", "user")


def build_pairs_spark(name: str, log_slice, catalogue=None, ranker=None, seed: int = 0, ranker_fit=None,
                      **options) -> pd.DataFrame:
    """``build_pairs`` on a Spark log slice. ``ranker_fit(slice) -> IdCtrRanker`` fits the
    ranker that ``ranker_knn`` needs when ``ranker`` is None (a bounded sample: see
    :mod:`lis.spark.ranker`)."""
    from lis.builders import build_pairs

    if name not in BUILDERS:
        raise ConfigError(f"unknown pairs builder {name!r}; choose one of {', '.join(BUILDERS)}.")
    allowed = builder_options(name)
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        listed = ", ".join(f"{key}={value!r}" for key, value in allowed.items()) or "none"
        raise ConfigError(f"builder '{name}' has no option '{unknown[0]}'; its options are: {listed}.")
    if name == "co_engagement":
        return _sorted_pairs(co_engagement(log_slice, **options))
    items = log_slice.select("item_id").distinct().toPandas()
    if name == "ranker_knn" and ranker is None:
        ranker = ranker_fit(log_slice)
    return build_pairs(name, items, catalogue=catalogue, ranker=ranker, seed=seed, **options)


def co_engagement(log, *, top_k: int = 10, window: int = 5, max_gap_seconds=None, same_session=None,
                  symmetric: bool = True, low: float = 0.0, high: float = math.inf) -> pd.DataFrame:
    """:func:`lis.builders.co_engagement` in Spark SQL (see the module docstring)."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    top_k = _int_option("co_engagement", "top_k", top_k, 1)
    window = _int_option("co_engagement", "window", window, 1)
    low, high = _float_option("co_engagement", "low", low), _float_option("co_engagement", "high", high)
    has_session = "session_id" in log.columns
    if same_session is None:
        same_session = has_session
    elif same_session and not has_session:
        raise ConfigError("builder 'co_engagement': same_session=True needs a 'session_id' column in the log.")
    if max_gap_seconds is None and not same_session:
        max_gap_seconds = 86400
    if max_gap_seconds is not None:
        max_gap_seconds = _float_option("co_engagement", "max_gap_seconds", max_gap_seconds)

    columns = ["user_id", "item_id", "timestamp", "_file", "_row"] + (["session_id"] if same_session else [])
    engaged = log.where(F.col("label") == 1).select(*columns)
    n_items = engaged.groupBy("user_id").agg(F.countDistinct("item_id").alias("n_u"))
    ordered = Window.partitionBy("user_id").orderBy("timestamp", "_file", "_row")
    # All next-`window` neighbours from one sort of each user's engagements, then one row per step.
    leads, steps = [], []
    for step in range(1, window + 1):
        leads += [F.lead("item_id", step).over(ordered).alias(f"b{step}"),
                  F.lead("timestamp", step).over(ordered).alias(f"t{step}")]
        fields = [F.col(f"b{step}").alias("b"), F.col(f"t{step}").alias("tb")]
        if same_session:
            leads.append(F.lead("session_id", step).over(ordered).alias(f"s{step}"))
            fields.append(F.col(f"s{step}").alias("sb"))
        steps.append(F.struct(*fields))
    mine = [F.col("item_id").alias("a"), F.col("timestamp").alias("ta")] + (
        [F.col("session_id").alias("sa")] if same_session else [])
    wide = engaged.select("user_id", *mine, *leads)
    rows = wide.select("user_id", *[c for c in ("a", "ta", "sa") if c in wide.columns],
                       F.explode(F.array(*steps)).alias("n")).select("*", "n.*").drop("n")
    ok = F.col("b").isNotNull() & (F.col("tb") > F.col("ta")) & (F.col("a") != F.col("b"))
    if max_gap_seconds is not None:
        ok = ok & ((F.col("tb") - F.col("ta")) <= max_gap_seconds)
    if same_session:
        ok = ok & F.col("sa").isNotNull() & (F.col("sa") == F.col("sb"))
    first, second = (F.least("a", "b"), F.greatest("a", "b")) if symmetric else (F.col("a"), F.col("b"))
    pairs = rows.where(ok).select("user_id", first.alias("anchor_id"), second.alias("positive_id"))
    contributions = pairs.distinct().join(n_items, "user_id").select(
        "anchor_id", "positive_id", (F.lit(1.0) / F.col("n_u")).alias("c"))
    # Sequential sum in ascending order: the same float as the in-memory builder's.
    scores = contributions.groupBy("anchor_id", "positive_id").agg(
        F.expr("aggregate(array_sort(collect_list(c)), CAST(0 AS DOUBLE), (acc, x) -> acc + x)").alias("weight"))
    if symmetric:
        scores = scores.unionByName(scores.select(F.col("positive_id").alias("anchor_id"),
                                                  F.col("anchor_id").alias("positive_id"), "weight"))
    scores = scores.where((F.col("weight") >= low) & (F.col("weight") <= high) & (F.col("weight") > 0))
    rank = Window.partitionBy("anchor_id").orderBy(F.col("weight").desc(), F.col("positive_id").asc())
    top = scores.withColumn("r", F.row_number().over(rank)).where(F.col("r") <= top_k)
    out = top.select("anchor_id", "positive_id", "weight").toPandas()
    out["anchor_id"] = out["anchor_id"].astype(str)
    out["positive_id"] = out["positive_id"].astype(str)
    out["weight"] = out["weight"].astype("float64")
    return out
