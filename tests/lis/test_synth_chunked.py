"""``lis-align synth --scale N``: a world written chunk by chunk as a Parquet dataset."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from align.cli import main
from lis.errors import ConfigError
from lis.synth.chunked import simulate_chunked


def test_chunks_are_disjoint_populations_in_time_order(tmp_path, capsys):
    out = tmp_path / "world"
    assert main(["synth", "--preset", "tiny", "--scale", "2", "--out", str(out)]) == 0
    parts = sorted((out / "log").glob("part-*.parquet"))
    assert [p.name for p in parts] == ["part-00000.parquet", "part-00001.parquet"]
    logs = [pd.read_parquet(p) for p in parts]
    assert set(logs[0]["user_id"]).isdisjoint(logs[1]["user_id"])
    catalogue = pd.read_parquet(out / "catalogue.parquet")
    for log in logs:
        assert (np.diff(log["timestamp"].to_numpy()) >= 0).all()
        assert log["item_id"].isin(catalogue["item_id"]).all() and log["label"].isin([0, 1]).all()
    assert f"{sum(map(len, logs)):,} impressions" in capsys.readouterr().out


def test_scale_must_be_a_positive_integer(tmp_path):
    with pytest.raises(ConfigError, match="--scale"):
        simulate_chunked("tiny", 0, 0, tmp_path / "world")
    assert not (tmp_path / "world").exists()
