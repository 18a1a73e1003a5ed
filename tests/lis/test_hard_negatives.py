"""Impression hard negatives: shown near the anchor's engagement, not engaged, not a known positive."""
from __future__ import annotations

import pandas as pd
import pytest

from lis.errors import ConfigError
from lis.hard_negatives import HARD_NEGATIVES_COLUMN, add_hard_negatives, mine_hard_negatives

# u1 in session s1 engages A, is shown X, Y, W and engages B; W is engaged by u1 in s2; V is shown
# in s2 (15 min after A), Z in s2 (50 min after A). u2 engages A in s3 and is shown X and Q.
ROWS = [("u1", "A", 100, 1, "s1"), ("u1", "X", 101, 0, "s1"), ("u1", "Y", 102, 0, "s1"), ("u1", "W", 103, 0, "s1"),
        ("u1", "B", 104, 1, "s1"), ("u1", "V", 1000, 0, "s2"), ("u1", "W", 1001, 1, "s2"), ("u1", "Z", 3100, 0, "s2"),
        ("u2", "A", 200, 1, "s3"), ("u2", "X", 201, 0, "s3"), ("u2", "Q", 202, 0, "s3"), ("u2", "B", 203, 0, "s3")]
LOG = pd.DataFrame(ROWS, columns=["user_id", "item_id", "timestamp", "label", "session_id"])
PAIRS = pd.DataFrame({"anchor_id": ["A", "A", "B"], "positive_id": ["B", "Y", "A"], "weight": 1.0})


def test_shown_in_the_session_not_engaged_and_not_related():
    got = mine_hard_negatives(LOG, PAIRS, 5)
    # Y is A's known positive (pair A->Y), W was engaged by u1, B/A are the pair, V/Z another session.
    # B was only *shown* to u2 but is pair (A, B): masked as a false negative for both pairs of A.
    assert got[0] == ["Q", "X"] and got[1] == ["Q", "X"]
    assert got[2] == ["X", "Y"]  # B's session s1 (before B counts too); W engaged, A is B's positive


def test_without_sessions_a_time_gap_decides_what_is_near():
    log = LOG.drop(columns="session_id")
    assert mine_hard_negatives(log, PAIRS, 5)[0] == ["Q", "V", "X"]  # V within 30 min, Z 50 min after
    assert mine_hard_negatives(log, PAIRS, 5, max_gap_seconds=3600)[0] == ["Q", "V", "X", "Z"]
    with pytest.raises(ConfigError, match="session_id"):
        mine_hard_negatives(log, PAIRS, 5, same_session=True)


def test_k_caps_the_draw_and_the_seed_fixes_it():
    one = mine_hard_negatives(LOG, PAIRS, 1, seed=3)
    assert all(len(x) <= 1 for x in one) and set(one[0]) <= {"Q", "X"}
    assert one == mine_hard_negatives(LOG, PAIRS, 1, seed=3)
    assert mine_hard_negatives(LOG, PAIRS, 0) == [[], [], []]
    with pytest.raises(ConfigError, match="k must be"):
        mine_hard_negatives(LOG, PAIRS, -1)
    # Pair A->B alone (Y unrelated now): X was shown next to two of A's engagements, Y and Q
    # next to one each, so X is drawn half of the time.
    many = pd.DataFrame({"anchor_id": ["A"] * 400, "positive_id": "B", "weight": 1.0})
    draws = [x[0] for x in mine_hard_negatives(LOG, many, 1, seed=0)]
    assert 0.43 < draws.count("X") / 400 < 0.57 and 0.18 < draws.count("Q") / 400 < 0.32


def test_add_hard_negatives_keeps_the_pairs_and_adds_the_column():
    out = add_hard_negatives(PAIRS, LOG, 2)
    assert list(out.columns) == ["anchor_id", "positive_id", "weight", HARD_NEGATIVES_COLUMN]
    assert HARD_NEGATIVES_COLUMN not in PAIRS.columns and out[HARD_NEGATIVES_COLUMN].tolist()[0] == ["Q", "X"]


def test_pairs_build_writes_hard_negatives(tmp_path, capsys):
    from lis.cli import main

    root = tmp_path / "data"
    root.mkdir()
    pd.DataFrame({"item_id": sorted(set(LOG.item_id)), "text": "t"}).to_parquet(root / "catalogue.parquet")
    log = pd.concat([LOG] * 3, ignore_index=True)
    log["timestamp"] = log["timestamp"] + 10_000 * (log.index // len(LOG))
    log["session_id"] = log["session_id"] + (log.index // len(LOG)).astype(str)
    log.sort_values("timestamp", kind="stable").to_parquet(root / "log.parquet")
    out = tmp_path / "pairs.parquet"
    assert main(["pairs", "build", "--data", str(root), "--builder", "co_engagement", "--out", str(out),
                 "--eval-fraction", "0.34", "--hard-negatives", "2"]) == 0
    pairs = pd.read_parquet(out)
    assert HARD_NEGATIVES_COLUMN in pairs.columns
    row = pairs[(pairs.anchor_id == "A") & (pairs.positive_id == "B")].iloc[0]
    assert sorted(row[HARD_NEGATIVES_COLUMN]) == ["Q", "X"]
