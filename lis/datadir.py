"""A data directory: the catalogue, the log and the item images, loaded and checked together.

Layout::

    DIR/catalogue.parquet   item_id, text, image (path relative to DIR, or bytes), ...
    DIR/log.parquet         user_id, item_id, timestamp, label, ...
    DIR/images/*.png        what the catalogue's ``image`` paths point at

``catalogue`` and ``log`` may also be ``.csv``, ``.jsonl``, ``.json`` or a saved ``datasets``
folder of that name (the first found, in that order after ``.parquet``). Synthetic worlds add
``truth.safetensors`` and ``synth.json``; this module does not read them.
"""
from __future__ import annotations

import io
import os
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from lis.errors import DataError, describe_value
from lis.paths import inside, real
from lis.schemas import load_catalogue, load_log

TABLE_SUFFIXES = (".parquet", ".csv", ".jsonl", ".json", "")  # "" = a saved `datasets` folder


@dataclass
class DataDir:
    """A loaded data directory. Build it with :func:`load_datadir`, which validates it.

    ``image_path`` and ``load_image`` look items up by id; they do not re-check the file.
    """

    path: Path
    catalogue: pd.DataFrame
    log: pd.DataFrame
    _rows: dict | None = field(default=None, init=False, repr=False)

    def __post_init__(self):
        self.path = Path(self.path)

    def _image_value(self, item_id):
        if self._rows is None:
            self._rows = {item: row for row, item in enumerate(self.catalogue["item_id"])}
        row = self._rows.get(str(item_id))
        if row is None:
            raise KeyError(f"item {item_id!r} is not in the catalogue of {self.path}")
        if "image" not in self.catalogue.columns:
            return None
        return self.catalogue["image"].iat[row]

    def image_path(self, item_id) -> Path | None:
        """The item's image file on disk; None when it has no image or its image is stored as bytes."""
        value = self._image_value(item_id)
        return self.path / value if isinstance(value, str) else None

    def load_image(self, item_id):
        """The item's image as an RGB ``PIL.Image``, from a file or bytes; None when it has none."""
        from PIL import Image

        value = self._image_value(item_id)
        if value is None:
            return None
        source = self.path / value if isinstance(value, str) else io.BytesIO(value)
        with Image.open(source) as image:
            return image.convert("RGB")


def find_table(directory: str | os.PathLike, stem: str) -> Path:
    """The file (or saved ``datasets`` folder) holding table ``stem`` in ``directory``."""
    directory = Path(directory)
    for suffix in TABLE_SUFFIXES:
        candidate = directory / f"{stem}{suffix}"
        if (candidate.is_dir() if suffix == "" else candidate.is_file()):
            return candidate
    looked = ", ".join(f"{stem}{suffix}" if suffix else f"{stem}/" for suffix in TABLE_SUFFIXES)
    raise DataError(f"{directory}: no {stem} table found (looked for {looked}).")


def datadir_inputs(root: str | os.PathLike) -> list[Path]:
    """What of data dir ``root`` a command reads (for :func:`lis.paths.check_output_file`): every
    catalogue/log table variant present and ``images/``."""
    root = Path(root)
    found = [root / f"{stem}{suffix}" for stem in ("catalogue", "log") for suffix in TABLE_SUFFIXES]
    return [path for path in found + [root / "images"] if path.exists()]


def load_datadir(path: str | os.PathLike, check_images: bool = True) -> DataDir:
    """Load and validate ``path``: catalogue, log (items must be in the catalogue) and images.

    Image paths must stay inside ``path`` where they resolve, symlinks followed: ``../x.png``,
    an absolute path elsewhere, a symlink in ``images/`` (or an ``images/`` folder) pointing
    outside the directory are all refused, so a data dir is self-contained. With ``check_images`` every
    image must exist and pass ``PIL.Image.verify()`` (which checks the file's structure without
    decoding all pixels, so a truncated PNG body can slip through); without it, only the cheap
    path checks run.
    """
    root = Path(path)
    if not root.is_dir():
        raise DataError(f"{root}: data directory not found." if not root.exists() else f"{root}: not a directory.")
    catalogue_file = find_table(root, "catalogue")
    log_file = find_table(root, "log")
    catalogue = load_catalogue(catalogue_file)
    log = load_log(log_file, item_ids=catalogue["item_id"])
    if "image" in catalogue.columns:
        _check_images(root, catalogue, catalogue_file.name, check_images)
    return DataDir(root, catalogue, log)


def _check_images(root: Path, catalogue: pd.DataFrame, name: str, check_files: bool) -> None:
    from PIL import Image

    base = os.path.abspath(root)
    for row, (item, value) in enumerate(zip(catalogue["item_id"], catalogue["image"])):
        if value is None:
            continue
        where = f"row {row} (item {item!r})"
        if isinstance(value, bytes):
            source, shown = io.BytesIO(value), f"{len(value)} bytes"
        else:
            full = os.path.normpath(os.path.join(base, value))
            if not inside(full, base):
                how = "" if os.path.commonpath([base, full]) != base else f" (a symlink to {real(full)})"
                raise DataError(
                    f"{name}: column 'image' must point inside the data directory; {where} holds "
                    f"{describe_value(value)}, which is outside {root}{how}."
                )
            if not check_files:
                continue
            if not os.path.isfile(full):
                raise DataError(f"{name}: column 'image' of {where} holds {describe_value(value)}, but no such file exists in {root}.")
            source, shown = full, describe_value(value)
        if not check_files:
            continue
        try:
            with Image.open(source) as image:
                image.verify()
        except Exception as error:  # PIL raises several types for bad image data
            raise DataError(
                f"{name}: column 'image' of {where} holds {shown}, which cannot be read as an image "
                f"({image_error(error)})."
            ) from None


def image_error(error: Exception) -> str:
    """PIL's reason in words; its 'cannot identify image file <BytesIO at 0x...>' says nothing useful."""
    from PIL import UnidentifiedImageError

    if isinstance(error, UnidentifiedImageError):
        return "not a known image format"
    return " ".join(str(error).split()) or type(error).__name__


def summarize(datadir: DataDir) -> dict:
    """Plain-JSON facts about a data directory (for ``lis-align data validate`` and reports).

    ``image_coverage`` is the share of items whose image is bytes or an existing file inside the
    directory; decodability is checked by :func:`load_datadir`, not here.
    """
    catalogue, log = datadir.catalogue, datadir.log
    timestamps = log["timestamp"].to_numpy()
    first, last = int(timestamps.min()), int(timestamps.max())
    positives = int(log["label"].sum())
    summary = {
        "path": str(datadir.path),
        "items": int(len(catalogue)),
        "items_in_log": int(log["item_id"].nunique()),
        "users": int(log["user_id"].nunique()),
        "impressions": int(len(log)),
        "positives": positives,
        "positive_rate": positives / len(log),
        "time_span": [_iso(first), _iso(last)],
        "days": round((last - first) / 86400, 3),
        "image_coverage": _image_coverage(datadir),
    }
    if "category" in catalogue.columns:
        summary["categories"] = int(catalogue["category"].nunique())
    return summary


def _image_coverage(datadir: DataDir) -> float:
    if "image" not in datadir.catalogue.columns:
        return 0.0
    base = os.path.abspath(datadir.path)
    usable = 0
    for value in datadir.catalogue["image"]:
        if isinstance(value, bytes):
            usable += 1
        elif isinstance(value, str):
            full = os.path.normpath(os.path.join(base, value))
            usable += inside(full, base) and os.path.isfile(full)
    return usable / len(datadir.catalogue)


def _iso(seconds: int) -> str:
    return pd.Timestamp(seconds, unit="s").strftime("%Y-%m-%dT%H:%M:%SZ")
