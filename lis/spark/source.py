"""The log as a Spark DataFrame: a Parquet dataset (one file, or a folder of files with
hive-style partitions such as ``date=2024-01-01/``), checked like :func:`lis.schemas.validate_log`.

Canonical columns: ``user_id``, ``item_id`` (text), ``timestamp`` (long unix seconds),
``label`` (int 0/1), optional ``base_logit`` (double) and ``session_id`` (text), and the order
key ``_file``, ``_row`` (file path and row within the file). The in-memory loader requires the
rows in time order; a dataset is ordered by ``(timestamp, _file, _row)`` instead, which is the
same order for a single time-ordered file. Every failure is the in-memory one-line
:class:`~lis.errors.DataError` naming the file (relative to the dataset), the column, a bad value
and its row within that file. Nothing is collected but the first offending row.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from lis.errors import DataError
from lis.schemas import LOG_REQUIRED, MAX_UNIX_SECONDS

ORDER = ("timestamp", "_file", "_row")


def find_log(data_dir) -> Path:
    """``DIR/log.parquet`` (file or folder) or ``DIR/log/`` (a folder of Parquet files)."""
    root = Path(data_dir)
    for candidate in (root / "log.parquet", root / "log.pq", root / "log"):
        if candidate.exists():
            return candidate
    raise DataError(f"{root}: no Parquet log found (looked for log.parquet, log.pq, log/); "
                    "the Spark engine reads the log as a Parquet file or dataset folder.")


def read_log(spark, path, item_ids=None, name: str | None = None):
    """Read and check the Parquet log at ``path``; returns the canonical DataFrame."""
    from pyspark.sql import functions as F

    path = Path(path)
    name = name or path.name
    try:
        raw = spark.read.parquet(str(path))
        raw = raw.select("*", F.col("_metadata.file_path").alias("_file"), F.col("_metadata.row_index").alias("_row"))
    except Exception as error:  # AnalysisException for unreadable or empty folders
        raise DataError(f"{name}: not a readable Parquet log ({str(error).splitlines()[0][:160]}).") from None
    return canonical(raw, name, item_ids, root=path)


def from_pandas(spark, log: pd.DataFrame, name: str = "log"):
    """A validated in-memory log as the canonical DataFrame (row order is the order key)."""
    frame = log.reset_index(drop=True).copy(deep=False)
    frame["_file"] = name
    frame["_row"] = np.arange(len(frame), dtype=np.int64)
    keep = [c for c in (*LOG_REQUIRED, "base_logit", "session_id", "_file", "_row") if c in frame.columns]
    frame = frame[keep]
    for column in ("user_id", "item_id", "session_id"):
        if column in frame.columns:
            frame[column] = frame[column].astype(object).where(frame[column].notna(), None)
    frame["label"] = frame["label"].astype(np.int32)
    return canonical(spark.createDataFrame(frame), name, None, root=None, checked=True)


def canonical(raw, name: str, item_ids=None, root: Path | None = None, checked: bool = False):
    """The canonical columns of ``raw``; ``checked`` skips the row checks (a log that
    :func:`lis.schemas.validate_log` already passed)."""
    from pyspark.sql import functions as F

    columns = [c for c in raw.columns if c not in ("_file", "_row")]
    missing = [c for c in LOG_REQUIRED if c not in columns]
    if missing:
        found = ", ".join(columns) or "none"
        raise DataError(f"{name}: missing column {missing[0]!r} (required: {', '.join(LOG_REQUIRED)}; found: {found}).")
    types = dict(raw.dtypes)

    def where(condition, column: str, message) -> None:
        if checked:
            return
        try:
            row = raw.where(condition).orderBy("_file", "_row").select(column, "user_id", "item_id", "_file", "_row").first()
        except Exception as error:  # a file Spark cannot read as the dataset's schema says
            raise _read_error(error, name, root) from None
        if row is not None:
            file = _relative(row["_file"], root) if root is not None else name
            context = f" (user {str(row['user_id'])!r}, item {str(row['item_id'])!r})"
            raise DataError(message(file, int(row["_row"]), row[column], context))

    for column in ("user_id", "item_id"):
        where(F.col(column).isNull(), column,
              lambda f, r, v, c, column=column: f"{f}: column {column!r} must hold an id in every row; row {r} is empty.")
    out = raw.withColumn("user_id", F.col("user_id").cast("string")).withColumn("item_id", F.col("item_id").cast("string"))
    timestamp = _seconds(F.col("timestamp"), types["timestamp"])
    where(F.col("timestamp").isNull(), "timestamp",
          lambda f, r, v, c: f"{f}: column 'timestamp' must hold a time in every row; row {r} is empty{c}.")
    if types["timestamp"] in ("float", "double"):
        where(F.isnan("timestamp") | (F.abs("timestamp") == float("inf")), "timestamp",
              lambda f, r, v, c: f"{f}: column 'timestamp' must hold finite unix seconds; row {r} holds {v!r}{c}.")
    where(timestamp.isNull(), "timestamp",
          lambda f, r, v, c: f"{f}: column 'timestamp' must hold unix seconds or ISO 8601 times; row {r} holds {v!r}, which is neither{c}.")
    where(F.abs(timestamp) >= MAX_UNIX_SECONDS, "timestamp",
          lambda f, r, v, c: f"{f}: column 'timestamp' must hold unix seconds; row {r} holds {v!r}, which looks like milliseconds (divide by 1000){c}.")
    label = F.col("label").cast("double") if types["label"] != "boolean" else F.col("label").cast("int").cast("double")
    where(label.isNull() | ~label.isin(0.0, 1.0), "label",
          lambda f, r, v, c: f"{f}: column 'label' must hold 0 or 1; row {r} holds {v!r}{c}.")
    out = out.withColumn("timestamp", timestamp).withColumn("label", label.cast("int"))
    if "base_logit" in columns:
        logit = F.col("base_logit").cast("double")
        where(logit.isNull() | F.isnan(logit) | (F.abs(logit) == float("inf")), "base_logit",
              lambda f, r, v, c: f"{f}: column 'base_logit' must hold finite numbers; row {r} holds {v!r}{c}.")
        out = out.withColumn("base_logit", logit)
    if "session_id" in columns:
        out = out.withColumn("session_id", F.col("session_id").cast("string"))
    if item_ids is not None:
        known = raw.sparkSession.createDataFrame(pd.DataFrame({"item_id": pd.Index(item_ids).astype(str)}))
        unknown = out.join(F.broadcast(known), "item_id", "left_anti")
        row = unknown.orderBy("_file", "_row").select("item_id", "user_id", "_file", "_row").first()
        if row is not None:
            count = unknown.count()
            file = _relative(row["_file"], root) if root is not None else name
            raise DataError(
                f"{file}: column 'item_id' must name items of the catalogue; row {row['_row']} holds {row['item_id']!r}, "
                f"which is not in it (user {row['user_id']!r}, item {row['item_id']!r}); {count} such "
                f"row{'s' * (count != 1)} in all.")
    keep = [c for c in (*LOG_REQUIRED, "base_logit", "session_id", "_file", "_row") if c in out.columns]
    return out.select(*keep)


def _seconds(column, dtype: str):
    """Unix seconds (long) of a timestamp column of any supported type; null where unparsable."""
    from pyspark.sql import functions as F

    if dtype.startswith("timestamp"):
        return F.unix_timestamp(column).cast("long")
    if dtype in ("float", "double") or dtype.startswith("decimal"):
        return F.floor(column).cast("long")
    if dtype in ("int", "bigint", "smallint", "tinyint"):
        return column.cast("long")
    if dtype == "string":
        number = F.expr("try_cast(timestamp AS double)")
        parsed = F.unix_timestamp(F.expr("try_to_timestamp(timestamp)"))
        return F.when(number.isNotNull(), F.floor(number)).otherwise(parsed).cast("long")
    return F.lit(None).cast("long")


def _read_error(error: Exception, name: str, root: Path | None) -> Exception:
    """One-line DataError for a file of the dataset that Spark failed to read; other errors as they are."""
    import re

    text = str(error)
    found = re.search(r"reading file (\S+?)\.? (.*?)(?: SQLSTATE|\n|$)", text)
    if "FAILED_READ_FILE" not in text or not found:
        return error
    file = _relative(found.group(1), root) if root is not None else name
    mismatch = re.search(r"column \[(\w+)\]\. Expected Spark type (\w+), actual Parquet type (\w+)", text)
    if mismatch:
        column, expected, actual = mismatch.groups()
        return DataError(f"{file}: column {column!r} is stored as {actual} in this file but as {expected} in the "
                         "dataset's other files; every file of the log needs the same column types.")
    return DataError(f"{file}: not a readable Parquet file of the log ({found.group(2)[:160]}).")


def _relative(file: str, root: Path) -> str:
    text = file.removeprefix("file:")
    try:
        relative = Path(text).relative_to(root.resolve())
        return f"{root.name}/{relative}" if str(relative) != "." else root.name
    except ValueError:
        return Path(text).name
