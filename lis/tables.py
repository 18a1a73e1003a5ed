"""Read one table from disk into pandas, whatever common format it is stored in.

Supported: Parquet (``.parquet``, ``.pq``), CSV (``.csv``; ``.tsv`` tab-separated), JSON lines
(``.jsonl``, ``.ndjson``, and ``.json`` holding either JSON lines or one array of records), and
a folder written by ``datasets.Dataset.save_to_disk`` (a ``DatasetDict`` only when it holds a
single split). Every failure is a :class:`lis.errors.DataError` that names the file.

Limits: the whole table is read into memory; no column projection, streaming or remote URLs.
Checking what the columns *mean* is :mod:`lis.schemas`' job, not this module's.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

import pandas as pd

from lis.errors import DataError

# Id columns are read as text from CSV/JSON so ids such as "007" keep their leading zeros.
ID_COLUMNS = ("user_id", "item_id", "anchor_id", "positive_id", "session_id")

PARQUET_SUFFIXES = (".parquet", ".pq")
CSV_SUFFIXES = (".csv", ".tsv")
JSON_SUFFIXES = (".jsonl", ".ndjson", ".json")
SUFFIXES = PARQUET_SUFFIXES + CSV_SUFFIXES + JSON_SUFFIXES


def read_table(path: str | os.PathLike, what: str = "log", str_columns: Iterable[str] = ID_COLUMNS) -> pd.DataFrame:
    """Read ``path`` into a DataFrame with a fresh RangeIndex (row numbers in messages are 0-based).

    ``what`` names the table in messages ("log", "catalogue", "pairs" ...). ``str_columns`` are
    read as strings where the format stores untyped text (CSV, JSON); absent ones are ignored.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: {what} file not found.")
    if path.is_dir():
        frame = _read_datasets_dir(path, what)
    else:
        frame = _read_file(path, what, tuple(str_columns))
    return frame.reset_index(drop=True)


def _read_file(path: Path, what: str, str_columns: tuple[str, ...]) -> pd.DataFrame:
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise DataError(
            f"{path.name}: cannot read a {what} table from a '{suffix or '(no extension)'}' file; "
            f"use one of {', '.join(SUFFIXES)} or a saved `datasets` folder."
        )
    try:
        if suffix in PARQUET_SUFFIXES:
            return pd.read_parquet(path)
        if suffix in CSV_SUFFIXES:
            return _read_csv(path, str_columns, sep="\t" if suffix == ".tsv" else ",")
        return _read_json(path, str_columns)
    except DataError:
        raise
    except Exception as error:  # pyarrow, pandas and json raise many types for corrupt input
        kind = {".pq": "Parquet", ".parquet": "Parquet", ".csv": "CSV", ".tsv": "TSV", ".json": "JSON"}.get(suffix, "JSON lines")
        raise DataError(f"{path.name}: not a readable {kind} {what} table ({_short(error)}).") from None


def _read_csv(path: Path, str_columns: tuple[str, ...], sep: str) -> pd.DataFrame:
    # A dtype entry for a column the file lacks is ignored by pandas, so one dict fits all tables.
    return pd.read_csv(path, sep=sep, dtype={name: str for name in str_columns})


def _read_json(path: Path, str_columns: tuple[str, ...]) -> pd.DataFrame:
    dtype = {name: str for name in str_columns}
    with open(path, "rb") as handle:
        start = handle.read(64).lstrip()[:1]
    if start == b"[":  # one JSON array of records rather than JSON lines
        return pd.read_json(path, orient="records", dtype=dtype)
    return pd.read_json(path, lines=True, dtype=dtype)


def _read_datasets_dir(path: Path, what: str) -> pd.DataFrame:
    if not ((path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists()):
        raise DataError(
            f"{path}: a folder is read as a {what} table only when `datasets.save_to_disk` wrote it "
            "(no dataset_info.json or dataset_dict.json inside)."
        )
    try:
        import datasets

        loaded = datasets.load_from_disk(str(path))
    except Exception as error:
        raise DataError(f"{path.name}: not a readable saved `datasets` {what} folder ({_short(error)}).") from None
    if isinstance(loaded, datasets.DatasetDict):
        if len(loaded) != 1:
            raise DataError(
                f"{path.name}: a saved DatasetDict must hold exactly one split to be read as the {what}; "
                f"it holds {sorted(loaded)}."
            )
        loaded = next(iter(loaded.values()))
    return loaded.to_pandas()


def _short(error: Exception, limit: int = 200) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."
