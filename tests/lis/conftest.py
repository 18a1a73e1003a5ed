"""Shared fixtures for tests/lis: a tiny valid data directory that tests then break on purpose."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest


def tiny_png(path: Path, color=(200, 30, 30), size=4) -> Path:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size, size), color).save(path, format="PNG")
    return path


def tiny_tables(n_items: int = 4, n_rows: int = 8) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A catalogue of ``n_items`` (images at images/i<k>.png) and a time-sorted log of ``n_rows``."""
    catalogue = pd.DataFrame({
        "item_id": [f"i{k}" for k in range(n_items)],
        "text": [f"item number {k}" for k in range(n_items)],
        "image": [f"images/i{k}.png" for k in range(n_items)],
        "category": ["red" if k % 2 else "blue" for k in range(n_items)],
    })
    log = pd.DataFrame({
        "user_id": [f"u{r % 2}" for r in range(n_rows)],
        "item_id": [f"i{r % n_items}" for r in range(n_rows)],
        "timestamp": [1_700_000_000 + 3600 * r for r in range(n_rows)],
        "label": [r % 2 for r in range(n_rows)],
    })
    return catalogue, log


def write_datadir(root: Path, catalogue: pd.DataFrame | None = None, log: pd.DataFrame | None = None,
                  images: bool = True) -> Path:
    """Write a data directory at ``root`` (defaults: :func:`tiny_tables`) with a PNG per item."""
    default_catalogue, default_log = tiny_tables()
    catalogue = default_catalogue if catalogue is None else catalogue
    log = default_log if log is None else log
    root.mkdir(parents=True, exist_ok=True)
    if images:
        for k in range(len(default_catalogue)):
            tiny_png(root / "images" / f"i{k}.png", color=(40 * k, 100, 200))
    catalogue.to_parquet(root / "catalogue.parquet", index=False)
    log.to_parquet(root / "log.parquet", index=False)
    return root


@pytest.fixture
def datadir(tmp_path) -> Path:
    """A valid tiny data directory (4 items with PNGs, 8 impressions, 2 users)."""
    return write_datadir(tmp_path / "data")


@pytest.fixture
def tables():
    """Fresh copies of the tiny (catalogue, log) frames, for a test to edit."""
    return tiny_tables()


@pytest.fixture
def make_datadir(tmp_path):
    """``make_datadir(catalogue=None, log=None, images=True, name="data") -> Path``."""
    def make(catalogue=None, log=None, images=True, name="data"):
        return write_datadir(tmp_path / name, catalogue, log, images)
    return make


@pytest.fixture
def png():
    """``png(path, color=(200, 30, 30), size=4) -> path``: write a tiny PNG."""
    return tiny_png
