"""Turn other people's interaction data into a lis-align data directory.

Two sources: RecBole atomic files (``.inter`` + ``.item``) and a plain interactions table
(CSV, or anything :func:`lis.tables.read_table` reads) with an optional catalogue table. Both
write ``catalogue.parquet``, ``log.parquet`` and, when items have images, ``images/`` with a
copy of each image (so the result is self-contained and its paths stay inside it).

How labels are made (the log needs 0/1 labels; LIS needs some 0s to be meaningful):

1. a label column, when there is one, is used as is and must hold 0 or 1;
2. otherwise a rating column gives ``label = rating >= rating_threshold`` (default 4);
3. otherwise every interaction is a positive (label 1). Logs of that kind (implicit feedback)
   carry no negatives; the summary's ``positive_rate`` of 1.0 says so, and AUC-based scores on
   them need negatives sampled elsewhere.

Log rows whose item is missing from the catalogue are dropped and counted (``dropped_rows`` in
the returned summary): an item without text or image cannot be embedded. The log is stably
sorted by time (ties keep the source order). Everything is checked before anything is written;
the output directory appears whole or not at all (it is written beside and renamed into place).

Limits: the whole input is read into memory; image URLs are not downloaded; RecBole's
``float_seq`` fields are carried as text; a ``token_seq`` category keeps its first token only.
"""
from __future__ import annotations

import csv
import io
import os
import re
import shutil
from pathlib import Path

import pandas as pd

from lis.atomic import atomic_path
from lis.datadir import DataDir, image_error, summarize
from lis.errors import ConfigError, DataError, describe_value
from lis.paths import inside
from lis.schemas import to_unix_seconds, validate_catalogue, validate_log
from lis.tables import read_table

RECBOLE_TYPES = ("token", "token_seq", "float", "float_seq")
TITLE_FIELDS = ("title", "movie_title", "name", "item_name")
CATEGORY_FIELDS = ("categories", "category", "genre", "genres", "class")


# ----------------------------------------------------------------------------- RecBole
def read_recbole(path: str | os.PathLike) -> tuple[pd.DataFrame, dict[str, str]]:
    """Read one RecBole atomic file: columns by bare name, and each column's declared type.

    ``float`` fields become float64; the others stay text ("" becomes null).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: RecBole file not found.")
    with open(path, encoding="utf-8", newline="") as handle:
        header = handle.readline().rstrip("\r\n").split("\t")
    types: dict[str, str] = {}
    for field in header:
        bare, _, kind = field.rpartition(":")
        if not bare or kind not in RECBOLE_TYPES:
            raise DataError(
                f"{path.name}: header field {field!r} must look like 'name:type' with type one of "
                f"{', '.join(RECBOLE_TYPES)} (RecBole atomic file)."
            )
        types[bare] = kind
    try:
        # QUOTE_NONE: RecBole fields are tab-separated and never quoted; titles may contain quotes.
        frame = pd.read_csv(
            path, sep="\t", header=0, names=list(types), dtype=str, quoting=csv.QUOTE_NONE,
            keep_default_na=False, na_values=[""], encoding="utf-8",
        )
    except Exception as error:  # pandas' ParserError, UnicodeDecodeError ...
        raise DataError(f"{path.name}: not a readable RecBole atomic file ({' '.join(str(error).split())}).") from None
    for column, kind in types.items():
        if kind == "float":
            frame[column] = _numbers(frame[column], path.name, column)
    return frame, types


def import_recbole(
    inter_path: str | os.PathLike,
    item_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    rating_threshold: float = 4.0,
    user_field: str = "user_id",
    item_field: str = "item_id",
    time_field: str = "timestamp",
    label_field: str = "label",
    rating_field: str = "rating",
    text_fields: list[str] | None = None,
    category_field: str | None = None,
    image_field: str | None = None,
    images_root: str | os.PathLike | None = None,
    overwrite: bool = False,
) -> dict:
    """Import RecBole ``.inter`` + ``.item`` files into ``out_dir``; return the data summary.

    ``text_fields`` default: a title-like field (title, movie_title, name, item_name) followed by
    every other ``token_seq`` field except the category, joined with ". ". ``category_field``
    default: the first of categories, category, genre, genres, class present. ``image_field``
    holds image paths relative to ``images_root`` (default: the ``.item`` file's folder).
    See the module docstring for how labels are made.
    """
    inter_path, item_path = Path(inter_path), Path(item_path)
    inter, _ = read_recbole(inter_path)
    items, item_types = read_recbole(item_path)
    for field, option in ((user_field, "user_field"), (item_field, "item_field"), (time_field, "time_field")):
        _require_column(inter, inter_path.name, field, option)
    _require_column(items, item_path.name, item_field, "item_field")

    label, rule = _labels(inter, inter_path.name, label_field, rating_field, rating_threshold)
    log = pd.DataFrame({
        "user_id": inter[user_field],
        "item_id": inter[item_field],
        "timestamp": to_unix_seconds(inter[time_field], inter_path.name, time_field),
        "label": label,
    })
    if rating_field in inter.columns:
        log["rating"] = inter[rating_field]

    if category_field is None:
        category_field = next((f for f in CATEGORY_FIELDS if f in items.columns), None)
    elif category_field not in items.columns:
        _require_column(items, item_path.name, category_field, "category_field")
    if text_fields is None:
        text_fields = _default_text_fields(item_types, item_field, category_field)
    for field in text_fields:
        _require_column(items, item_path.name, field, "text_fields")
    catalogue = pd.DataFrame({"item_id": items[item_field], "text": _join_text(items, text_fields)})
    if category_field is not None:
        category = items[category_field]
        if item_types.get(category_field) == "token_seq":
            category = category.str.split().str[0]
        catalogue["category"] = category
    if image_field is not None:
        _require_column(items, item_path.name, image_field, "image_field")
        catalogue["image"] = items[image_field]
    root = Path(images_root) if images_root is not None else item_path.parent
    sources = {"user_id": user_field, "item_id": item_field, "label": label_field}
    return _finish(catalogue, log, out_dir, item_path.name, inter_path.name, root, rule, overwrite, sources)


# ----------------------------------------------------------------------------- plain tables
def import_interactions_csv(
    csv_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    user_col: str = "user_id",
    item_col: str = "item_id",
    time_col: str = "timestamp",
    label_col: str | None = None,
    rating_col: str | None = None,
    rating_threshold: float = 4.0,
    catalogue_csv: str | os.PathLike | None = None,
    catalogue_item_col: str | None = None,
    text_col: str | None = None,
    image_col: str | None = None,
    category_col: str | None = None,
    images_root: str | os.PathLike | None = None,
    overwrite: bool = False,
) -> dict:
    """Import an interactions table (CSV, Parquet, JSON lines ...) into ``out_dir``; return the summary.

    Item attributes (``text_col``, ``image_col``, ``category_col``) come from ``catalogue_csv``
    when given (its id column is ``catalogue_item_col``, default ``item_col``), else from the first
    interaction row of each item. Left as None they default to columns named text, image and
    category when present (no text gives ""). ``label_col`` None means a column named "label"
    when present; ``rating_col`` turns ratings into labels instead (not both). Image paths are
    relative to ``images_root`` (default: the folder of the table that holds them) and must
    resolve inside it, symlinks followed; timestamps
    may be unix seconds or ISO 8601 strings.
    """
    csv_path = Path(csv_path)
    name = csv_path.name
    table = read_table(csv_path, "interactions", str_columns=(user_col, item_col))
    for column, option in ((user_col, "user_col"), (item_col, "item_col"), (time_col, "time_col")):
        _require_column(table, name, column, option)
    if label_col is not None and rating_col is not None:
        raise ConfigError(f"{name}: give label_col ({label_col!r}) or rating_col ({rating_col!r}), not both.")
    if label_col is not None:
        _require_column(table, name, label_col, "label_col")
    if rating_col is not None:
        _require_column(table, name, rating_col, "rating_col")
        table[rating_col] = _numbers(table[rating_col], name, rating_col)
    label, rule = _labels(table, name, label_col or "label", rating_col, rating_threshold)
    log = pd.DataFrame({
        "user_id": table[user_col],
        "item_id": table[item_col],
        "timestamp": to_unix_seconds(table[time_col], name, time_col),
        "label": label,
    })
    if rating_col is not None:
        log["rating"] = table[rating_col]

    if catalogue_csv is not None:
        source_path = Path(catalogue_csv)
        id_col = catalogue_item_col or item_col
        source = read_table(source_path, "catalogue", str_columns=(id_col,))
        _require_column(source, source_path.name, id_col, "catalogue_item_col")
    else:
        source_path, id_col = csv_path, item_col
        source = table.drop_duplicates(subset=item_col, keep="first")
    source_name = source_path.name
    catalogue = pd.DataFrame({"item_id": source[id_col]})
    text = _optional_column(source, source_name, text_col, "text", "text_col")
    catalogue["text"] = source[text] if text else ""
    category = _optional_column(source, source_name, category_col, "category", "category_col")
    if category:
        catalogue["category"] = source[category]
    image = _optional_column(source, source_name, image_col, "image", "image_col")
    if image:
        catalogue["image"] = source[image]
    root = Path(images_root) if images_root is not None else source_path.parent
    sources = {"user_id": user_col, "item_id": item_col, "label": label_col or "label"}
    return _finish(catalogue.reset_index(drop=True), log, out_dir, source_name, name, root, rule, overwrite, sources)


# ----------------------------------------------------------------------------- shared steps
def _finish(catalogue, log, out_dir, catalogue_name, log_name, images_root, rule, overwrite, sources) -> dict:
    """Validate, drop log rows of unknown items, sort by time, stage images, write atomically.

    ``sources`` maps our log column names to the source's, so messages can name both.
    """
    out = Path(out_dir)
    _check_output(out, overwrite)
    catalogue = validate_catalogue(catalogue, catalogue_name)
    # Validate in the source's row order, so row numbers in messages point into the source file.
    try:
        log = validate_log(log, log_name, check_order=False)
    except DataError as error:
        renamed = [f"{ours} <- {theirs!r}" for ours, theirs in sources.items() if ours != theirs and f"'{ours}'" in str(error)]
        if renamed:
            raise DataError(f"{error} (imported columns: {', '.join(renamed)})") from None
        raise
    known = log["item_id"].isin(catalogue["item_id"]).to_numpy()
    dropped = int((~known).sum())
    if dropped == len(log):
        raise DataError(
            f"{log_name}: none of its items is in {catalogue_name} (e.g. item {log['item_id'].iat[0]!r}); "
            "check the item id columns."
        )
    log = log[known].sort_values("timestamp", kind="stable").reset_index(drop=True)
    images = _stage_images(catalogue, catalogue_name, images_root) if "image" in catalogue.columns else []
    _write(out, catalogue, log, images)
    summary = summarize(DataDir(out, catalogue, log))
    summary.update(label_rule=rule, dropped_rows=dropped)
    return summary


def _labels(table, name, label_col, rating_col, threshold):
    if label_col is not None and label_col in table.columns:
        return table[label_col], f"column {label_col!r} (0/1)"
    if rating_col is not None and rating_col in table.columns:
        ratings = table[rating_col]
        missing = ratings.isna().to_numpy()
        if missing.any():
            row = int(missing.nonzero()[0][0])
            raise DataError(f"{name}: column {rating_col!r} must hold a rating in every row; row {row} is empty.")
        return (ratings >= threshold).astype("int8"), f"{rating_col} >= {threshold:g}"
    return pd.Series(1, index=table.index, dtype="int8"), "every interaction is a positive (no label or rating)"


def _default_text_fields(types: dict[str, str], item_field: str, category_field: str | None) -> list[str]:
    title = next((f for f in TITLE_FIELDS if f in types), None)
    rest = [f for f, kind in types.items() if kind == "token_seq" and f not in (title, category_field, item_field)]
    return ([title] if title else []) + rest


def _join_text(items: pd.DataFrame, fields: list[str]) -> pd.Series:
    if not fields:
        return pd.Series("", index=items.index, dtype="str")
    columns = [items[field].astype("str").tolist() for field in fields]  # nulls stay float NaN
    joined = [". ".join(p for p in parts if isinstance(p, str) and p) for parts in zip(*columns)]
    return pd.Series(joined, index=items.index, dtype="str")


def _numbers(series: pd.Series, name: str, column: str) -> pd.Series:
    numbers = pd.to_numeric(series, errors="coerce")
    wrong = (numbers.isna() & series.notna()).to_numpy()
    if wrong.any():
        row = int(wrong.nonzero()[0][0])
        raise DataError(f"{name}: column {column!r} must hold numbers; row {row} holds {describe_value(series.iat[row])}.")
    return numbers.astype("float64")


def _require_column(table: pd.DataFrame, name: str, column: str, option: str) -> None:
    if column not in table.columns:
        found = ", ".join(map(str, table.columns)) or "none"
        raise DataError(f"{name}: missing column {column!r} (set by {option}; found: {found}).")


def _optional_column(table, name, given, default, option) -> str | None:
    if given is None:
        return default if default in table.columns else None
    _require_column(table, name, given, option)
    return given


def _check_output(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise DataError(f"{out}: output path exists and is not a directory.")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise DataError(f"{out}: output directory is not empty; choose another or pass --overwrite to replace it.")


def _stage_images(catalogue: pd.DataFrame, name: str, root: Path) -> list[tuple[str | bytes, str]]:
    """Check every source image and plan its copy: returns (source path or bytes, path in out dir).

    Rewrites ``catalogue['image']`` in place to the new relative paths.
    """
    from PIL import Image

    plan, used, new_paths = [], set(), []
    for row, (item, value) in enumerate(zip(catalogue["item_id"], catalogue["image"])):
        if value is None:
            new_paths.append(None)
            continue
        where = f"row {row} (item {item!r})"
        if isinstance(value, str) and re.match(r"^[a-z][a-z0-9+.-]*://", value, re.IGNORECASE):
            raise DataError(f"{name}: column 'image' of {where} holds the URL {describe_value(value)}; download images first.")
        if isinstance(value, str):
            source = root / value
            if not inside(source, root):  # ../x, /abs/elsewhere, or a symlink out of the root
                raise DataError(f"{name}: column 'image' of {where} holds {describe_value(value)}, which is outside "
                                f"the images root {root} (--images-root); only images under it are imported.")
            if not source.is_file():
                raise DataError(f"{name}: column 'image' of {where} holds {describe_value(value)}, but {source} does not exist.")
        else:
            source = value
        try:
            with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as image:
                image.verify()
                suffix = _suffix(image.format, value)
        except Exception as error:  # PIL raises several types for bad image data
            shown = describe_value(value) if isinstance(value, str) else f"{len(value)} bytes"
            raise DataError(f"{name}: column 'image' of {where} holds {shown}, which cannot be read as an image ({image_error(error)}).") from None
        stem = re.sub(r"[^A-Za-z0-9._-]", "_", str(item))[:100] or "item"
        target = f"images/{stem}{suffix}"
        if target in used:  # two ids that sanitise alike
            target = f"images/{stem}_{row}{suffix}"
        used.add(target)
        plan.append((source if isinstance(source, bytes) else str(source), target))
        new_paths.append(target)
    catalogue["image"] = pd.Series(new_paths, index=catalogue.index, dtype=object)
    return plan


def _suffix(image_format: str | None, value) -> str:
    if isinstance(value, str) and Path(value).suffix:
        return Path(value).suffix.lower()
    return {"JPEG": ".jpg"}.get(image_format or "", f".{(image_format or 'img').lower()}")


def _write(out: Path, catalogue: pd.DataFrame, log: pd.DataFrame, images) -> None:
    with atomic_path(out) as tmp:
        tmp.mkdir()
        if images:
            (tmp / "images").mkdir()
        for source, target in images:
            if isinstance(source, bytes):
                (tmp / target).write_bytes(source)
            else:
                shutil.copyfile(source, tmp / target)
        # Each table goes through atomic_path too, which fsyncs it before the directory is renamed.
        with atomic_path(tmp / "catalogue.parquet") as path:
            catalogue.to_parquet(path, index=False)
        with atomic_path(tmp / "log.parquet") as path:
            log.to_parquet(path, index=False)
