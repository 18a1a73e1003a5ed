"""``lis score --engine spark`` on a hive-partitioned Parquet log: the same report as in memory,
and bad input as the same one-line errors (exit 2, nothing written)."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest

from align.cli import main
from lis.synth import simulate

pytestmark = pytest.mark.slow
FAST = ["--lis-mode", "pairs", "--bootstrap", "20", "--no-segments", "--builder", "co_engagement"]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("spark_cli") / "tiny"
    simulate("tiny", 0, root, progress=False)
    return root


def partitioned(world, target, change=None):
    """A data dir whose log is a folder of daily files (``log/date=YYYY-MM-DD/part-0.parquet``);
    ``change(frame)`` edits the rows of the second day's file (of every file for a dropped column)."""
    target.mkdir()
    shutil.copy(world / "catalogue.parquet", target / "catalogue.parquet")
    log = pd.read_parquet(world / "log.parquet")
    days = pd.to_datetime(log["timestamp"], unit="s").dt.strftime("%Y-%m-%d")
    for k, (day, rows) in enumerate(log.groupby(days, sort=True)):
        folder = target / "log" / f"date={day}"
        folder.mkdir(parents=True)
        rows = rows.reset_index(drop=True)
        if change is not None and (k == 1 or change in EVERY_FILE):
            rows = change(rows) if k == 1 or change is drop_label else time_text(rows)
        rows.to_parquet(folder / "part-0.parquet", index=False)
    return target


def test_a_partitioned_log_gives_the_in_memory_report(spark, world, tmp_path, capsys):
    data = partitioned(world, tmp_path / "data")
    assert main(["lis", "score", "--data", str(world), "--out", str(tmp_path / "memory.json"), *FAST]) == 0
    assert main(["lis", "score", "--data", str(data), "--out", str(tmp_path / "spark.json"), "--engine", "spark",
                 "--spark-conf", "spark.sql.shuffle.partitions=2", *FAST]) == 0
    memory = json.loads((tmp_path / "memory.json").read_text())
    got = json.loads((tmp_path / "spark.json").read_text())
    assert (tmp_path / "spark.md").is_file() and (tmp_path / "spark.png").is_file()
    assert got["windows"] == memory["windows"]
    for key in ("auc", "gauc"):
        assert got["base"][key] == pytest.approx(memory["base"][key], abs=1e-9)
    expected, scored = memory["lis"]["co_engagement"], got["lis"]["co_engagement"]
    assert scored["n_pairs"] == expected["n_pairs"]
    for key in ("auc_gain", "auc_gain_ci", "gauc_gain", "gauc_gain_ci"):
        assert np.allclose(scored[key], expected[key], atol=1e-6), key
    assert got["config"]["engine"] == "spark"


def drop_label(rows):
    return rows.drop(columns=["label"])


def time_text(rows):
    return rows.astype({"timestamp": str})


def bad_time(rows):
    rows = time_text(rows).astype({"timestamp": object})
    rows.loc[3, "timestamp"] = "yesterday"
    return rows.astype({"timestamp": str})


def mixed_types(rows):
    return time_text(rows)


def bad_label(rows):
    rows.loc[2, "label"] = 2
    return rows


def unknown_item(rows):
    rows.loc[4, "item_id"] = "not-an-item"
    return rows


EVERY_FILE = (drop_label, bad_time)   # a dropped column, or text timestamps in every file


@pytest.mark.parametrize("change, words", [
    (drop_label, ["missing column 'label'"]),
    (bad_time, ["part-0.parquet", "'timestamp'", "row 3", "'yesterday'"]),
    (bad_label, ["part-0.parquet", "'label'", "row 2", "2"]),
    (unknown_item, ["part-0.parquet", "'item_id'", "row 4", "'not-an-item'", "not in it"]),
    (mixed_types, ["date=", "part-0.parquet", "'timestamp'", "BINARY", "same column types"]),
])
def test_bad_input_is_one_line_and_exit_2(spark, world, tmp_path, capsys, change, words):
    data = partitioned(world, tmp_path / "data", change)
    out = tmp_path / "out" / "report.json"
    capsys.readouterr()
    assert main(["lis", "score", "--data", str(data), "--out", str(out), "--engine", "spark", *FAST]) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if not line.startswith("lis score: ")]
    assert len(lines) == 1, lines
    for word in words:
        assert word in lines[0], (word, lines[0])
    assert not out.exists() and not (tmp_path / "out" / "report.md").exists()
