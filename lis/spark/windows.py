"""Exact window cuts of a distributed log (the same :class:`lis.windows.Windows` as in memory).

The in-memory cut is the timestamp at a row position of the sorted timestamps. Here that
position is found in two bounded steps: a count per hour finds the hour that holds it, then a
count per second within that hour gives the exact timestamp. Only the two histograms reach the
driver (hours of the log's span, seconds of one hour).
"""
from __future__ import annotations

import numpy as np

from lis.errors import ConfigError, DataError
from lis.windows import WINDOW_NAMES, Windows, _check_counts

_COARSE = 3600


def _timestamp_at(log, position: int) -> int:
    """The timestamp at 0-based ``position`` of the log's sorted timestamps."""
    from pyspark.sql import functions as F

    hours = log.groupBy((F.col("timestamp") - F.col("timestamp") % _COARSE).alias("h")).count().orderBy("h").toPandas()
    cumulative = np.cumsum(hours["count"].to_numpy())
    k = int(np.searchsorted(cumulative, position, "right"))
    before = int(cumulative[k - 1]) if k else 0
    hour = int(hours["h"].iat[k])
    seconds = (log.where((F.col("timestamp") >= hour) & (F.col("timestamp") < hour + _COARSE))
               .groupBy("timestamp").count().orderBy("timestamp").toPandas())
    inside = np.cumsum(seconds["count"].to_numpy())
    return int(seconds["timestamp"].iat[int(np.searchsorted(inside, position - before, "right"))])


def split_windows(log, eval_fraction: float = 0.3, name: str = "log") -> Windows:
    """:func:`lis.windows.split_windows` on a Spark DataFrame (canonical columns)."""
    from pyspark.sql import functions as F

    if not (isinstance(eval_fraction, (int, float)) and 0.0 < float(eval_fraction) < 1.0):
        raise ConfigError(f"eval_fraction must lie strictly between 0 and 1; got {eval_fraction!r}.")
    stats = log.agg(F.count("*").alias("n"), F.min("timestamp").alias("lo"), F.max("timestamp").alias("hi")).first()
    n = int(stats["n"])
    if n < 4:
        raise DataError(f"{name}: {n} impressions are too few to split into fit and evaluation windows.")
    eval_row = min(n - 1, int(np.floor(n * (1.0 - float(eval_fraction)))))
    probe_row = min(n - 1, eval_row + (n - eval_row) // 2)
    windows = Windows(start=int(stats["lo"]), eval_start=_timestamp_at(log, eval_row),
                      probe_split=_timestamp_at(log, probe_row), end=int(stats["hi"]),
                      eval_fraction=float(eval_fraction))
    sums = []
    for window in WINDOW_NAMES:
        inside = window_condition(windows, window)
        sums += [F.sum(inside.cast("long")).alias(f"{window}_n"), F.sum(F.when(inside, F.col("label")).otherwise(0)).alias(f"{window}_p")]
    row = log.agg(*sums).first()
    counts = {w: (int(row[f"{w}_n"] or 0), int(row[f"{w}_p"] or 0)) for w in WINDOW_NAMES}
    object.__setattr__(windows, "counts", counts)
    _check_counts(windows, name)
    return windows


def window_condition(windows: Windows, name: str):
    """Column expression: the row lies in window ``name``."""
    from pyspark.sql import functions as F

    lo, hi = windows.bounds(name)
    condition = F.lit(True)
    if lo is not None:
        condition = condition & (F.col("timestamp") >= lo)
    if hi is not None:
        condition = condition & (F.col("timestamp") < hi)
    return condition
