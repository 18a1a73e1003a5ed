"""lis/datadir.py: a data directory loads whole, images stay inside it and decode, summary is right."""
from __future__ import annotations

import io
import os

import pandas as pd
import pytest

from lis.datadir import DataDir, find_table, load_datadir, summarize
from lis.errors import DataError


def test_valid_directory_loads_with_canonical_tables(datadir):
    loaded = load_datadir(datadir)
    assert isinstance(loaded, DataDir)
    assert loaded.catalogue["item_id"].tolist() == ["i0", "i1", "i2", "i3"]
    assert loaded.log["label"].dtype == "int8" and loaded.log["timestamp"].dtype == "int64"
    assert loaded.image_path("i2") == datadir / "images" / "i2.png"
    assert loaded.load_image("i2").size == (4, 4)
    with pytest.raises(KeyError, match="'nope' is not in the catalogue"):
        loaded.image_path("nope")


def test_summary_counts_what_is_there(datadir):
    summary = summarize(load_datadir(datadir))
    assert summary["items"] == 4 and summary["users"] == 2 and summary["impressions"] == 8
    assert summary["positives"] == 4 and summary["positive_rate"] == 0.5
    assert summary["time_span"] == ["2023-11-14T22:13:20Z", "2023-11-15T05:13:20Z"]
    assert summary["days"] == round(7 * 3600 / 86400, 3)
    assert summary["image_coverage"] == 1.0
    assert summary["categories"] == 2


def test_images_as_bytes_and_nulls_count_toward_coverage_correctly(make_datadir, tables):
    catalogue, log = tables
    buffer = io.BytesIO()
    from PIL import Image

    Image.new("RGB", (3, 5), "green").save(buffer, format="PNG")
    # One Parquet column cannot mix text and binary, so bytes here means bytes (or null) throughout.
    catalogue["image"] = [buffer.getvalue(), None, buffer.getvalue(), None]
    loaded = load_datadir(make_datadir(catalogue, log))
    assert loaded.image_path("i0") is None and loaded.load_image("i0").size == (3, 5)
    assert loaded.load_image("i1") is None
    assert summarize(loaded)["image_coverage"] == 0.5


def test_catalogue_without_image_column_has_zero_coverage(make_datadir, tables):
    catalogue, log = tables
    loaded = load_datadir(make_datadir(catalogue.drop(columns=["image", "category"]), log, images=False))
    assert loaded.image_path("i0") is None
    summary = summarize(loaded)
    assert summary["image_coverage"] == 0.0 and "categories" not in summary


def test_other_table_formats_are_found(tmp_path, tables, png):
    catalogue, log = tables
    root = tmp_path / "d"
    root.mkdir()
    for k in range(4):
        png(root / "images" / f"i{k}.png")
    catalogue.to_json(root / "catalogue.jsonl", orient="records", lines=True)
    log.to_csv(root / "log.csv", index=False)
    assert find_table(root, "log") == root / "log.csv"
    assert len(load_datadir(root).log) == 8


def test_symlinked_images_folder_pointing_outside_is_refused(tmp_path, tables, png):
    catalogue, log = tables
    store = tmp_path / "store"
    for k in range(4):
        png(store / f"i{k}.png")
    root = tmp_path / "d"
    root.mkdir()
    os.symlink(store, root / "images")
    catalogue.to_parquet(root / "catalogue.parquet")
    log.to_parquet(root / "log.parquet")
    # Confined by where paths resolve (issue 15): a data dir is self-contained.
    with pytest.raises(DataError, match=r"row 0 \(item 'i0'\).*outside .*a symlink to"):
        load_datadir(root)
    with pytest.raises(DataError, match="outside"):
        load_datadir(root, check_images=False)


def test_symlink_inside_the_directory_is_allowed(make_datadir, tables):
    catalogue, log = tables
    root = make_datadir(catalogue, log)
    os.symlink(root / "images" / "i1.png", root / "images" / "alias.png")
    catalogue["image"] = ["images/alias.png", "images/i1.png", "images/i2.png", "images/i3.png"]
    catalogue.to_parquet(root / "catalogue.parquet", index=False)
    assert summarize(load_datadir(root))["image_coverage"] == 1.0


def test_absolute_path_inside_the_directory_is_allowed(make_datadir, tables, tmp_path):
    catalogue, log = tables
    catalogue["image"] = [str(tmp_path / "data" / "images" / f"i{k}.png") for k in range(4)]
    assert load_datadir(make_datadir(catalogue, log)).load_image("i1").size == (4, 4)


def test_check_images_false_skips_decoding_but_not_the_escape_check(make_datadir, tables):
    catalogue, log = tables
    root = make_datadir(catalogue, log)
    (root / "images" / "i1.png").write_bytes(b"garbage")
    load_datadir(root, check_images=False)  # no decoding: fine
    catalogue["image"] = ["../outside.png", None, None, None]
    catalogue.to_parquet(root / "catalogue.parquet")
    with pytest.raises(DataError, match=r"catalogue\.parquet: column 'image' must point inside the data directory; "
                                        r"row 0 \(item 'i0'\) holds '\.\./outside\.png'"):
        load_datadir(root, check_images=False)


def test_missing_directory_and_missing_tables_are_named(tmp_path):
    with pytest.raises(DataError, match="nowhere: data directory not found"):
        load_datadir(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"empty: no catalogue table found \(looked for catalogue\.parquet"):
        load_datadir(tmp_path / "empty")


def test_log_items_are_checked_against_the_catalogue(make_datadir, tables):
    catalogue, log = tables
    root = make_datadir(catalogue.iloc[:3], log)  # item i3 is logged but no longer catalogued
    with pytest.raises(DataError, match=r"log\.parquet: column 'item_id' must name items of the catalogue; row 3 holds 'i3'"):
        load_datadir(root)


def test_summary_is_plain_json(datadir):
    import json

    assert json.loads(json.dumps(summarize(load_datadir(datadir))))["items"] == 4
    assert isinstance(pd.Timestamp(summarize(load_datadir(datadir))["time_span"][0]), pd.Timestamp)
