"""``lis-align pairs build``: writes a pairs Parquet; bad options are one line and exit 2."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from lis.cli import main


@pytest.fixture
def data(tmp_path):
    """A data dir without images: 40 items in 4 categories, 6 users, 600 impressions."""
    rng = np.random.default_rng(0)
    n = 600
    root = tmp_path / "data"
    root.mkdir()
    pd.DataFrame({"item_id": [f"i{k}" for k in range(40)], "text": [f"item {k}" for k in range(40)],
                  "category": [f"c{k % 4}" for k in range(40)]}).to_parquet(root / "catalogue.parquet")
    pd.DataFrame({"user_id": [f"u{k}" for k in rng.integers(0, 6, n)],
                  "item_id": [f"i{k}" for k in rng.integers(0, 40, n)],
                  "timestamp": 1_700_000_000 + 600 * np.arange(n),
                  "label": (rng.random(n) < 0.4).astype(np.int8)}).to_parquet(root / "log.parquet")
    return root


@pytest.mark.parametrize("builder", ["co_engagement", "random", "category", "ranker_knn"])
def test_pairs_build_writes_a_pairs_parquet(data, tmp_path, capsys, builder):
    out = tmp_path / "out" / "pairs.parquet"
    extra = ["--option", "min_count=1", "--option", "dim=4"] if builder == "ranker_knn" else []
    rc = main(["pairs", "build", "--data", str(data), "--builder", builder, "--window", "fit",
               "--out", str(out), "--top-k", "3", *extra])
    assert rc == 0
    pairs = pd.read_parquet(out)
    assert list(pairs.columns) == ["anchor_id", "positive_id", "weight"] and len(pairs) > 0
    assert (pairs.groupby("anchor_id").size() <= 3).all() and (pairs.weight > 0).all()
    printed = capsys.readouterr().out
    assert f"wrote {len(pairs)} pairs over {pairs.anchor_id.nunique()} anchors" in printed
    assert not list(out.parent.glob("*.tmp"))


def test_pairs_build_on_the_eval_window_uses_only_its_items(data, tmp_path):
    out = tmp_path / "eval.parquet"
    assert main(["pairs", "build", "--data", str(data), "--builder", "random", "--window", "eval",
                 "--eval-fraction", "0.1", "--out", str(out)]) == 0
    log = pd.read_parquet(data / "log.parquet")
    eval_items = set(log.item_id.iloc[540:])
    assert set(pd.read_parquet(out).anchor_id) == eval_items


def test_pairs_build_passes_builder_options(data, tmp_path):
    directional, symmetric = tmp_path / "d.parquet", tmp_path / "s.parquet"
    base = ["pairs", "build", "--data", str(data), "--builder", "co_engagement"]
    assert main(base + ["--out", str(directional), "--option", "symmetric=false"]) == 0
    assert main(base + ["--out", str(symmetric)]) == 0
    assert len(pd.read_parquet(directional)) < len(pd.read_parquet(symmetric))


def test_user_builder_reads_the_pairs_file(data, tmp_path):
    mine, out = tmp_path / "mine.parquet", tmp_path / "out.parquet"
    pd.DataFrame({"anchor_id": ["i1"], "positive_id": ["i2"], "weight": [1.5]}).to_parquet(mine)
    assert main(["pairs", "build", "--data", str(data), "--builder", "user", "--pairs-file", str(mine),
                 "--out", str(out)]) == 0
    assert pd.read_parquet(out).to_dict("list") == {"anchor_id": ["i1"], "positive_id": ["i2"], "weight": [1.5]}


@pytest.mark.parametrize("argv, message", [
    (["--builder", "co_engagement", "--option", "widow=3"], "builder 'co_engagement' has no option 'widow'"),
    (["--builder", "co_engagement", "--top-k", "0"], "option 'top_k' must be an integer >= 1; got 0"),
    (["--builder", "co_engagement", "--option", "window"], "--option must look like KEY=VALUE"),
    (["--builder", "nope"], "unknown builder 'nope'"),
    (["--builder", "user"], "builder 'user' needs the option path"),
    (["--builder", "random", "--eval-fraction", "1.5"], "eval_fraction must lie strictly between 0 and 1"),
])
def test_bad_options_exit_2_with_one_clear_line(data, tmp_path, capsys, argv, message):
    out = tmp_path / "pairs.parquet"
    rc = main(["pairs", "build", "--data", str(data), "--out", str(out), *argv])
    err = capsys.readouterr().err
    assert rc == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_missing_data_dir_exits_2(tmp_path, capsys):
    rc = main(["pairs", "build", "--data", str(tmp_path / "nowhere"), "--builder", "random",
               "--out", str(tmp_path / "p.parquet")])
    assert rc == 2 and "data directory not found" in capsys.readouterr().err


def test_help_lists_builders_and_options(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["pairs", "build", "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for word in ("co_engagement", "ranker_knn", "category", "random", "user", "--top-k", "symmetric"):
        assert word in text
