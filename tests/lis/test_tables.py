"""lis/tables.py: every supported format reads back the same table; bad files name themselves."""
from __future__ import annotations

import json

import pandas as pd
import pytest

from lis.errors import DataError
from lis.schemas import validate_log
from lis.tables import read_table


def _write(frame: pd.DataFrame, path, fmt: str):
    if fmt == "parquet":
        frame.to_parquet(path, index=False)
    elif fmt == "csv":
        frame.to_csv(path, index=False)
    elif fmt == "tsv":
        frame.to_csv(path, index=False, sep="\t")
    elif fmt in ("jsonl", "json-lines"):
        frame.to_json(path, orient="records", lines=True)
    elif fmt == "json-array":
        frame.to_json(path, orient="records")
    elif fmt == "datasets":
        import datasets

        datasets.Dataset.from_pandas(frame, preserve_index=False).save_to_disk(str(path))
    elif fmt == "datasetdict":
        import datasets

        datasets.DatasetDict({"train": datasets.Dataset.from_pandas(frame, preserve_index=False)}).save_to_disk(str(path))
    return path


FORMATS = {
    "parquet": "log.parquet", "csv": "log.csv", "tsv": "log.tsv", "jsonl": "log.jsonl",
    "json-lines": "log.json", "json-array": "log.json", "datasets": "log", "datasetdict": "log",
}


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_every_format_round_trips_to_the_same_validated_log(tmp_path, tables, fmt):
    _, log = tables
    log["user_id"] = ["007", "008"] * 4  # leading zeros must survive text formats
    path = _write(log, tmp_path / FORMATS[fmt], fmt)
    frame = read_table(path, "log")
    assert list(frame.columns) == list(log.columns)
    assert isinstance(frame.index, pd.RangeIndex)
    canonical = validate_log(frame, path.name)
    expected = validate_log(log, "expected")
    pd.testing.assert_frame_equal(canonical, expected)
    assert canonical["user_id"].iat[0] == "007"


def test_missing_file_is_named(tmp_path):
    with pytest.raises(DataError, match=r"nope\.parquet: log file not found"):
        read_table(tmp_path / "nope.parquet")


def test_unknown_extension_is_named_with_the_supported_ones(tmp_path):
    path = tmp_path / "log.xlsx"
    path.write_bytes(b"PK")
    with pytest.raises(DataError, match=r"log\.xlsx: cannot read a log table from a '\.xlsx' file; use one of \.parquet"):
        read_table(path)


@pytest.mark.parametrize("filename, content, kind", [
    ("log.parquet", b"this is not parquet", "Parquet"),
    ("log.csv", b"", "CSV"),
    ("log.jsonl", b'{"user_id": "u1"}\n{broken json\n', "JSON lines"),
    ("log.json", b"[1, 2", "JSON"),
])
def test_corrupt_files_become_data_errors_naming_the_file(tmp_path, filename, content, kind):
    path = tmp_path / filename
    path.write_bytes(content)
    with pytest.raises(DataError) as error:
        read_table(path, "log")
    assert str(error.value).startswith(f"{filename}: not a readable {kind} log table")


def test_a_folder_that_datasets_did_not_write_is_refused(tmp_path):
    (tmp_path / "log").mkdir()
    with pytest.raises(DataError, match=r"log: a folder is read as a log table only when `datasets.save_to_disk` wrote it"):
        read_table(tmp_path / "log")


def test_a_datasetdict_with_several_splits_is_refused(tmp_path, tables):
    import datasets

    _, log = tables
    split = datasets.Dataset.from_pandas(log, preserve_index=False)
    datasets.DatasetDict({"train": split, "test": split}).save_to_disk(str(tmp_path / "log"))
    with pytest.raises(DataError, match=r"log: a saved DatasetDict must hold exactly one split .* \['test', 'train'\]"):
        read_table(tmp_path / "log")


def test_corrupt_datasets_folder_is_named(tmp_path):
    folder = tmp_path / "catalogue"
    folder.mkdir()
    (folder / "dataset_info.json").write_text(json.dumps({"features": "garbage"}))
    with pytest.raises(DataError, match=r"catalogue: not a readable saved `datasets` catalogue folder"):
        read_table(folder, "catalogue")
