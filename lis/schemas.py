"""The three tables of lis-align — catalogue, log, pairs — checked and given canonical dtypes.

Canonical forms (docs/science.md section 10, "Data contracts"):

- catalogue: ``item_id`` str (unique), ``text`` str (null becomes ""), optional ``image``
  (object: a str path relative to the catalogue's folder, bytes, or None; a ``datasets`` Image
  dict ``{"bytes", "path"}`` becomes its bytes, else its path), optional ``category`` str (may be
  null), optional ``created_at`` int64 unix seconds.
- log: ``user_id`` str, ``item_id`` str, ``timestamp`` int64 unix seconds, ``label`` int8 0/1,
  optional ``base_logit`` float64 (finite), optional ``session_id`` str (may be null). Rows must
  be in non-decreasing time order; the loader never sorts silently, because the order is data.
- pairs: ``anchor_id`` str, ``positive_id`` str, ``weight`` float64, finite and > 0 (a pairs
  table without a ``weight`` column gets weight 1.0).

Timestamps are accepted as integers or floats of unix seconds (floats are floored), as
``datetime64`` (naive means UTC) or as strings holding either of those or ISO 8601 dates.
Values above 1e11 are refused as probably milliseconds. Extra columns are kept untouched.

Every problem is a :class:`lis.errors.DataError` naming the file, the column and one bad value
with its row (0-based position among the data rows, as pandas counts). All checks are
vectorised; a 1M-row log validates in well under a second or two.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import pandas as pd
from pandas.api import types as ptypes

from lis.errors import DataError, describe_value
from lis.tables import read_table

CATALOGUE_REQUIRED = ("item_id", "text")
LOG_REQUIRED = ("user_id", "item_id", "timestamp", "label")
PAIRS_REQUIRED = ("anchor_id", "positive_id")

# Unix seconds above this are year 5138: almost surely milliseconds or microseconds.
MAX_UNIX_SECONDS = 10**11

Context = Callable[[int], str]


# ----------------------------------------------------------------------------- loaders
def load_catalogue(path: str | os.PathLike) -> pd.DataFrame:
    """Read (any :func:`lis.tables.read_table` format) and validate a catalogue."""
    return validate_catalogue(read_table(path, "catalogue"), Path(path).name)


def load_log(path: str | os.PathLike, item_ids: Iterable | None = None) -> pd.DataFrame:
    """Read and validate a log; with ``item_ids``, every logged item must be among them."""
    return validate_log(read_table(path, "log"), Path(path).name, item_ids)


def load_pairs(path: str | os.PathLike, item_ids: Iterable | None = None) -> pd.DataFrame:
    """Read and validate a pairs table; with ``item_ids``, both ids of every pair must be among them."""
    return validate_pairs(read_table(path, "pairs"), Path(path).name, item_ids)


# ----------------------------------------------------------------------------- validators
def validate_catalogue(df: pd.DataFrame, name: str = "catalogue") -> pd.DataFrame:
    """Check a catalogue frame and return a copy with canonical dtypes (see module docstring)."""
    _require(df, name, CATALOGUE_REQUIRED)
    if len(df) == 0:
        raise DataError(f"{name}: the catalogue is empty; it needs at least one item.")
    out = df.reset_index(drop=True).copy(deep=False)
    out["item_id"] = _ids(out["item_id"], name, "item_id", _no_context)
    duplicated = out["item_id"].duplicated(keep=False).to_numpy()
    if duplicated.any():
        rows = np.flatnonzero(duplicated)
        first = out["item_id"].iat[rows[0]]
        again = rows[1:][out["item_id"].to_numpy()[rows[1:]] == first][0]
        raise DataError(
            f"{name}: column 'item_id' must be unique; {first!r} appears at rows {rows[0]} and {again}."
        )
    item_context = _item_context(out)
    out["text"] = out["text"].where(out["text"].notna(), "").astype(str)
    if "image" in out.columns:
        out["image"] = _images(out["image"], name, item_context)
    if "category" in out.columns:
        out["category"] = out["category"].astype("str")
    if "created_at" in out.columns:
        out["created_at"] = _timestamps(out["created_at"], name, "created_at", item_context)
    return out


def validate_log(
    df: pd.DataFrame, name: str = "log", item_ids: Iterable | None = None, check_order: bool = True
) -> pd.DataFrame:
    """Check a log frame and return a copy with canonical dtypes (see module docstring).

    Checks, in order: required columns, not empty, ids present, items known (when ``item_ids``
    is given), timestamps parsable, time order non-decreasing, labels 0/1, optional columns.
    ``check_order=False`` is for importers, which validate in the source's row order (so row
    numbers in messages match the source file) and sort afterwards.
    """
    _require(df, name, LOG_REQUIRED)
    if len(df) == 0:
        raise DataError(f"{name}: the log is empty (no rows); it needs at least one impression.")
    out = df.reset_index(drop=True).copy(deep=False)
    out["user_id"] = _ids(out["user_id"], name, "user_id", _no_context)
    out["item_id"] = _ids(out["item_id"], name, "item_id", _no_context)
    context = _log_context(out)
    if item_ids is not None:
        _known(out, "item_id", name, _as_index(item_ids), context)
    timestamps = _timestamps(out["timestamp"], name, "timestamp", context)
    if check_order:
        _non_decreasing(timestamps, name, context)
    out["timestamp"] = timestamps
    out["label"] = _labels(out["label"], name, context)
    if "base_logit" in out.columns:
        out["base_logit"] = _floats(out["base_logit"], name, "base_logit", context)
    if "session_id" in out.columns:
        out["session_id"] = out["session_id"].astype("str")
    return out


def validate_pairs(df: pd.DataFrame, name: str = "pairs", item_ids: Iterable | None = None) -> pd.DataFrame:
    """Check a pairs frame and return a copy with canonical dtypes (see module docstring)."""
    _require(df, name, PAIRS_REQUIRED)
    if len(df) == 0:
        raise DataError(f"{name}: the pairs table is empty; it needs at least one pair.")
    out = df.reset_index(drop=True).copy(deep=False)
    out["anchor_id"] = _ids(out["anchor_id"], name, "anchor_id", _no_context)
    out["positive_id"] = _ids(out["positive_id"], name, "positive_id", _no_context)

    def context(row: int) -> str:
        return f" (pair {out['anchor_id'].iat[row]!r} -> {out['positive_id'].iat[row]!r})"

    if item_ids is not None:
        known = _as_index(item_ids)
        _known(out, "anchor_id", name, known, context)
        _known(out, "positive_id", name, known, context)
    if "weight" in out.columns:
        out["weight"] = _floats(out["weight"], name, "weight", context, positive=True)
    else:
        out["weight"] = np.ones(len(out), dtype=np.float64)
    return out


def to_unix_seconds(series: pd.Series, name: str, column: str = "timestamp") -> pd.Series:
    """Convert a time column (ints, floats, datetime64, numeric or ISO 8601 strings) to int64
    unix seconds; a :class:`DataError` names ``name``, ``column`` and the first bad row."""
    return _timestamps(series.reset_index(drop=True), name, column, _no_context)


# ----------------------------------------------------------------------------- column helpers
def _require(df: pd.DataFrame, name: str, required: tuple[str, ...]) -> None:
    if not isinstance(df, pd.DataFrame):
        raise DataError(f"{name}: expected a table, got {type(df).__name__}.")
    missing = [column for column in required if column not in df.columns]
    if missing:
        found = ", ".join(map(str, df.columns)) or "none"
        raise DataError(
            f"{name}: missing column {missing[0]!r} (required: {', '.join(required)}; found: {found})."
        )


def _no_context(row: int) -> str:
    return ""


def _log_context(df: pd.DataFrame) -> Context:
    users, items = df["user_id"], df["item_id"]
    return lambda row: f" (user {users.iat[row]!r}, item {items.iat[row]!r})"


def _item_context(df: pd.DataFrame) -> Context:
    items = df["item_id"]
    return lambda row: f" (item {items.iat[row]!r})"


def _first(mask) -> int:
    return int(np.flatnonzero(np.asarray(mask))[0])


def _ids(series: pd.Series, name: str, column: str, context: Context) -> pd.Series:
    """Ids as str, never null or "". Integers (and integral floats, which CSV nulls elsewhere
    can produce) are written without a decimal point so 7, 7.0 and "7" are the same id."""
    ids = _ids_as_str(series, name, column, context)
    blank = (ids == "").to_numpy()
    if blank.any():
        row = _first(blank)
        raise DataError(f"{name}: column {column!r} must hold an id in every row; row {row} holds ''{context(row)}.")
    return ids


def _ids_as_str(series: pd.Series, name: str, column: str, context: Context) -> pd.Series:
    missing = series.isna().to_numpy()
    if missing.any():
        row = _first(missing)
        raise DataError(f"{name}: column {column!r} must hold an id in every row; row {row} is empty{context(row)}.")
    if ptypes.is_string_dtype(series.dtype) and not ptypes.is_object_dtype(series.dtype):
        return series
    if ptypes.is_float_dtype(series.dtype):
        values = series.to_numpy()
        if np.all(values == np.floor(values)):
            return series.astype(np.int64).astype("str")
        return series.astype("str")
    if ptypes.is_integer_dtype(series.dtype) or ptypes.is_bool_dtype(series.dtype):
        return series.astype("str")
    kind = pd.api.types.infer_dtype(series, skipna=True)
    if kind not in ("string", "integer", "mixed-integer", "empty"):
        # Rare path: find the one value that is neither text nor an integer, for the message.
        for row, value in enumerate(series):
            if not isinstance(value, (str, int, np.integer)) or isinstance(value, bool):
                raise DataError(
                    f"{name}: column {column!r} must hold text or integer ids; row {row} holds "
                    f"{describe_value(value)} ({type(value).__name__}){context(row)}."
                )
    return series.astype("str")


def _as_index(item_ids: Iterable) -> pd.Index:
    if isinstance(item_ids, (pd.Series, pd.Index, np.ndarray)):
        return pd.Index(item_ids).astype("str")
    return pd.Index([str(item) for item in item_ids], dtype="str")


def _known(df: pd.DataFrame, column: str, name: str, known: pd.Index, context: Context) -> None:
    unknown = ~df[column].isin(known).to_numpy()
    if unknown.any():
        row, count = _first(unknown), int(unknown.sum())
        raise DataError(
            f"{name}: column {column!r} must name items of the catalogue; row {row} holds "
            f"{df[column].iat[row]!r}, which is not in it{context(row)}; {count} such row{'s' * (count != 1)} in all."
        )


def _timestamps(series: pd.Series, name: str, column: str, context: Context) -> pd.Series:
    """Unix seconds as int64 from ints, floats (floored), datetime64 or strings (numbers or ISO 8601)."""
    missing = series.isna().to_numpy()
    if missing.any():
        row = _first(missing)
        raise DataError(f"{name}: column {column!r} must hold a time in every row; row {row} is empty{context(row)}.")
    if ptypes.is_datetime64_any_dtype(series.dtype):
        return pd.Series(_datetime_seconds(series), index=series.index, name=series.name)
    if ptypes.is_bool_dtype(series.dtype):
        raise DataError(
            f"{name}: column {column!r} must hold unix seconds or ISO 8601 times; it holds booleans, "
            f"e.g. row 0 holds {_shown(series.iat[0])}{context(0)}."
        )
    if ptypes.is_numeric_dtype(series.dtype):
        seconds = _numeric_seconds(series.to_numpy(), name, column, context)
    else:
        seconds = _parse_time_strings(series, name, column, context)
    return pd.Series(seconds, index=series.index, name=series.name)


def _datetime_seconds(series: pd.Series) -> np.ndarray:
    if getattr(series.dt, "tz", None) is not None:
        series = series.dt.tz_convert("UTC").dt.tz_localize(None)
    return series.astype("datetime64[s]").astype(np.int64).to_numpy()


def _numeric_seconds(values: np.ndarray, name: str, column: str, context: Context) -> np.ndarray:
    if values.dtype.kind == "f":
        finite = np.isfinite(values)
        if not finite.all():
            row = _first(~finite)
            raise DataError(
                f"{name}: column {column!r} must hold finite unix seconds; row {row} holds {_shown(values[row])}{context(row)}."
            )
    too_large = np.abs(values) >= MAX_UNIX_SECONDS
    if too_large.any():
        row = _first(too_large)
        raise DataError(
            f"{name}: column {column!r} must hold unix seconds; row {row} holds {_shown(values[row])}, "
            f"which looks like milliseconds (divide by 1000){context(row)}."
        )
    if values.dtype.kind == "f":
        values = np.floor(values)
    return values.astype(np.int64)


def _parse_time_strings(series: pd.Series, name: str, column: str, context: Context) -> np.ndarray:
    numbers = pd.to_numeric(series, errors="coerce")
    pending = numbers.isna().to_numpy()
    if not pending.any():
        return _numeric_seconds(numbers.to_numpy(dtype=np.float64), name, column, context)
    seconds = np.zeros(len(series), dtype=np.int64)
    if not pending.all():
        seconds[~pending] = _numeric_seconds(numbers.to_numpy(dtype=np.float64)[~pending], name, column, context)
    text = series[pending]
    try:
        parsed = pd.to_datetime(text.astype("str"), format="ISO8601", utc=True, errors="coerce")
    except (TypeError, ValueError, OverflowError):
        parsed = pd.Series(pd.NaT, index=text.index, dtype="datetime64[ns, UTC]")
    bad = parsed.isna().to_numpy()
    if bad.any():
        row = int(np.flatnonzero(pending)[_first(bad)])
        raise DataError(
            f"{name}: column {column!r} must hold unix seconds or ISO 8601 times; row {row} holds "
            f"{_shown(series.iat[row])}, which is neither{context(row)}."
        )
    seconds[pending] = _datetime_seconds(parsed)
    return seconds


def _non_decreasing(seconds: pd.Series, name: str, context: Context) -> None:
    values = seconds.to_numpy()
    backwards = np.diff(values) < 0
    if backwards.any():
        row = _first(backwards) + 1
        raise DataError(
            f"{name}: column 'timestamp' must be non-decreasing (sort the log by time); row {row} holds "
            f"{values[row]} ({_iso(values[row])}), earlier than row {row - 1}'s {values[row - 1]} "
            f"({_iso(values[row - 1])}){context(row)}."
        )


def _labels(series: pd.Series, name: str, context: Context) -> pd.Series:
    if ptypes.is_bool_dtype(series.dtype) and not series.isna().any():
        return series.astype(np.int8)
    numbers = pd.to_numeric(series, errors="coerce") if not ptypes.is_numeric_dtype(series.dtype) else series
    valid = numbers.isin([0, 1]).to_numpy()
    if not valid.all():
        row = _first(~valid)
        raise DataError(
            f"{name}: column 'label' must hold 0 or 1; row {row} holds {_shown(series.iat[row])}{context(row)}."
        )
    return numbers.astype(np.int8)


def _floats(series: pd.Series, name: str, column: str, context: Context, positive: bool = False) -> pd.Series:
    numbers = series if ptypes.is_numeric_dtype(series.dtype) and not ptypes.is_bool_dtype(series.dtype) else None
    if numbers is None:
        numbers = pd.to_numeric(series, errors="coerce")
        wrong = (numbers.isna() & series.notna()).to_numpy()
        if wrong.any():
            row = _first(wrong)
            raise DataError(
                f"{name}: column {column!r} must hold numbers; row {row} holds {_shown(series.iat[row])}{context(row)}."
            )
    values = numbers.to_numpy(dtype=np.float64, na_value=np.nan)
    finite = np.isfinite(values)
    if not finite.all():
        row = _first(~finite)
        raise DataError(f"{name}: column {column!r} must be finite; row {row} holds {_shown(values[row])}{context(row)}.")
    if positive:
        nonpositive = values <= 0
        if nonpositive.any():
            row = _first(nonpositive)
            raise DataError(f"{name}: column {column!r} must be > 0; row {row} holds {_shown(values[row])}{context(row)}.")
    return pd.Series(values, index=series.index, name=series.name)


def _images(series: pd.Series, name: str, context: Context) -> pd.Series:
    """Image cells as str path, bytes or None. Runs a Python loop, acceptable for a catalogue
    (items, not impressions)."""
    values = []
    for row, value in enumerate(series.tolist()):
        if isinstance(value, dict):  # datasets' Image feature: {"bytes": ..., "path": ...}
            value = value.get("bytes") or value.get("path")
        if value is None or (isinstance(value, float) and np.isnan(value)) or value == "":
            values.append(None)
        elif isinstance(value, str):
            values.append(value)
        elif isinstance(value, (bytes, bytearray, memoryview)):
            values.append(bytes(value))
        else:
            raise DataError(
                f"{name}: column 'image' must hold a path (relative to the catalogue's folder), image bytes "
                f"or null; row {row} holds {describe_value(value)} ({type(value).__name__}){context(row)}."
            )
    return pd.Series(values, index=series.index, name=series.name, dtype=object)


def _shown(value) -> str:
    # numpy 2 scalars repr as np.float64(nan); a user should read plain nan.
    return describe_value(value.item() if isinstance(value, np.generic) else value)


def _iso(seconds: int) -> str:
    return pd.Timestamp(int(seconds), unit="s").strftime("%Y-%m-%dT%H:%M:%SZ")
