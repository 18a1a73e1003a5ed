"""Time windows: masks partition the log, respect time, and refuse useless windows."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from lis.errors import ConfigError, DataError
from lis.windows import WINDOW_NAMES, split_windows


def make_log(n=100, step=60):
    return pd.DataFrame({
        "user_id": [f"u{k % 7}" for k in range(n)],
        "item_id": [f"i{k % 11}" for k in range(n)],
        "timestamp": 1_700_000_000 + step * np.arange(n, dtype=np.int64),
        "label": (np.arange(n) % 3 == 0).astype(np.int8),
    })


def test_masks_partition_the_log_and_respect_time():
    log = make_log(100)
    w = split_windows(log)
    fit, ev = w.mask(log, "fit"), w.mask(log, "eval")
    pf, pt = w.mask(log, "probe_fit"), w.mask(log, "probe_test")
    assert not (fit & ev).any() and (fit | ev).all()
    assert not (pf & pt).any() and ((pf | pt) == ev).all()
    t = log["timestamp"].to_numpy()
    assert t[fit].max() < t[pf].min() and t[pf].max() < t[pt].min()
    # 100 distinct timestamps: exactly the last 30 rows, halved 15 / 15.
    assert (fit.sum(), pf.sum(), pt.sum()) == (70, 15, 15)


def test_eval_fraction_moves_the_cut():
    log = make_log(200)
    assert split_windows(log, eval_fraction=0.5).mask(log, "eval").sum() == 100
    assert split_windows(log, eval_fraction=0.2).mask(log, "eval").sum() == 40


def test_rows_sharing_a_timestamp_fall_on_one_side():
    log = make_log(100)
    log["timestamp"] = 1_700_000_000 + 60 * (np.arange(100) // 4)  # groups of 4 ties
    w = split_windows(log)
    t = log["timestamp"].to_numpy()
    for name in WINDOW_NAMES:
        inside = w.mask(log, name)
        assert inside.any()
        # a timestamp is never split between a window and the rest
        assert not np.intersect1d(t[inside], t[~inside]).size


def test_to_dict_is_json_with_iso_times_and_counts():
    log = make_log(100)
    w = split_windows(log)
    d = json.loads(json.dumps(w.to_dict()))
    assert d["eval_start"].endswith("Z") and "T" in d["eval_start"]
    assert d["fit"]["rows"] == 70 and d["eval"]["rows"] == 30
    assert d["probe_fit"]["positives"] == int(log["label"].to_numpy()[w.mask(log, "probe_fit")].sum())
    assert d["fit"]["from"] == "2023-11-14T22:13:20Z"


def test_one_class_window_is_refused_with_its_counts():
    log = make_log(100)
    log.loc[85:, "label"] = 0  # probe_test (rows 85..99) has no positive
    with pytest.raises(DataError, match=r"log\.parquet: window 'probe_test' .* 15 impressions and 0 positives"):
        split_windows(log, name="log.parquet")


def test_empty_window_is_refused():
    log = make_log(100)
    log["timestamp"] = 1_700_000_000  # one timestamp: the fit window is empty
    with pytest.raises(DataError, match="window 'fit' .* holds no impressions"):
        split_windows(log)


@pytest.mark.parametrize("fraction", [0, 1, 1.5, -0.1])
def test_eval_fraction_outside_0_1_is_a_config_error(fraction):
    with pytest.raises(ConfigError, match="eval_fraction"):
        split_windows(make_log(), eval_fraction=fraction)
