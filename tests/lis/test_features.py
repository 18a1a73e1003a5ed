"""Fast similarity features equal a row-by-row reference with explicit history lists."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from lis.embeddings import EmbeddingTable
from lis.errors import DataError
from lis.features import CONTROL_NAMES, FEATURE_NAMES, HistoryIndex, similarity_features

TAU = 0.1


def random_log(seed: int, n_rows: int = 600, n_users: int = 7, n_items: int = 25) -> pd.DataFrame:
    """A time-sorted log with many equal timestamps (to exercise the tie rule) and repeat items."""
    rng = np.random.default_rng(seed)
    times = np.sort(rng.integers(0, n_rows // 3, n_rows))     # ~3 rows per timestamp
    return pd.DataFrame({
        "user_id": [f"u{k}" for k in rng.integers(0, n_users, n_rows)],
        "item_id": [f"i{k}" for k in rng.integers(0, n_items, n_rows)],
        "timestamp": times.astype(np.int64),
        "label": (rng.random(n_rows) < 0.4).astype(np.int8),
    })


def random_table(seed: int, n_items: int = 25, dim: int = 8, drop=(3, 7, 11)) -> EmbeddingTable:
    rng = np.random.default_rng(seed + 100)
    ids = [f"i{k}" for k in range(n_items) if k not in drop] + ["not_in_log"]
    vectors = rng.normal(size=(len(ids), dim)).astype(np.float32)
    vectors[0] = 0.0   # a zero vector: cosine 0 by convention
    return EmbeddingTable(ids, vectors)


def reference_histories(log: pd.DataFrame, rows: np.ndarray, max_len: int) -> list[list[str]]:
    """For each target row: the user's last max_len engaged items strictly before its time."""
    users, items = log.user_id.to_numpy(), log.item_id.to_numpy()
    times, labels = log.timestamp.to_numpy(), log.label.to_numpy()
    out = []
    for row in rows:
        earlier = (users == users[row]) & (times < times[row]) & (labels == 1)
        out.append(list(items[earlier])[-max_len:])
    return out


def reference_pool(sims: list[float]) -> list[float]:
    if not sims:
        return [0.0, 0.0, 0.0]
    s = np.asarray(sims, dtype=np.float64)
    w = np.exp((s - s.max()) / TAU)
    return [s.max(), s.mean(), float((w * s).sum() / w.sum())]


def reference_features(log, rows, max_len, similarity, known) -> np.ndarray:
    """Row-by-row: drop history items that are not ``known``; a missing candidate gets zeros."""
    out = []
    for row, history in zip(rows, reference_histories(log, rows, max_len)):
        cand = log.item_id.iat[row]
        usable = [h for h in history if h in known]
        out.append(reference_pool([similarity(cand, h) for h in usable]) if cand in known else [0.0] * 3)
    return np.asarray(out)


def cosine_lookup(table: EmbeddingTable):
    vec = {i: v.astype(np.float64) for i, v in zip(table.ids, table.vectors)}

    def cos(a, b):
        na, nb = np.linalg.norm(vec[a]), np.linalg.norm(vec[b])
        return 0.0 if na == 0 or nb == 0 else float(vec[a] @ vec[b] / (na * nb))
    return cos


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("max_len,block_rows", [(5, 4), (50, 32), (3, 1)])
def test_features_equal_row_by_row_reference(seed, max_len, block_rows):
    log = random_log(seed)
    target = np.zeros(len(log), dtype=bool)
    target[len(log) // 2:] = True                     # evaluation window; history reaches back before it
    table = random_table(seed)
    index = HistoryIndex.build(log, target, max_len=max_len, block_rows=block_rows)
    rows = np.flatnonzero(target)
    np.testing.assert_array_equal(index.rows, rows)
    expected = reference_features(log, rows, max_len, cosine_lookup(table), set(table.ids))
    np.testing.assert_allclose(index.features(table, tau=TAU), expected, atol=1e-5)


def test_same_timestamp_engagement_is_not_history():
    log = pd.DataFrame({
        "user_id": ["u", "u", "u", "u"],
        "item_id": ["a", "b", "c", "d"],
        "timestamp": [1, 2, 2, 3],
        "label": [1, 1, 0, 0],
    })
    index = HistoryIndex.build(log, max_len=10)
    names = [list(index.item_ids[index.history_items(k)]) for k in range(4)]
    assert names == [[], ["a"], ["a"], ["a", "b"]]   # row 2 (t=2) does not see b engaged at t=2


def test_history_keeps_only_last_max_len_engagements():
    log = pd.DataFrame({"user_id": ["u"] * 6, "item_id": list("abcdef"), "timestamp": range(6), "label": [1] * 6})
    index = HistoryIndex.build(log, max_len=2)
    assert list(index.item_ids[index.history_items(5)]) == ["d", "e"]
    np.testing.assert_array_equal(index.history_length, [0, 1, 2, 2, 2, 2])


def test_controls_flag_missing_history_and_candidate():
    log = random_log(3)
    table = random_table(3)
    index = HistoryIndex.build(log, max_len=5)
    controls = index.controls(table)
    known = set(table.ids)
    histories = reference_histories(log, index.rows, 5)
    assert controls.shape == (len(log), len(CONTROL_NAMES))
    np.testing.assert_allclose(controls[:, 0], np.log1p([len(h) for h in histories]), rtol=1e-6)
    np.testing.assert_array_equal(controls[:, 1], [not any(h in known for h in hist) for hist in histories])
    np.testing.assert_array_equal(controls[:, 2], ~log.item_id.isin(known).to_numpy())
    assert controls[:, 1].any() and controls[:, 2].any()
    both = similarity_features(index, table)
    assert both.shape == (len(log), len(FEATURE_NAMES) + len(CONTROL_NAMES))


@pytest.mark.parametrize("seed", [0, 1])
def test_pair_features_equal_row_by_row_reference(seed):
    log = random_log(seed)
    rng = np.random.default_rng(seed)
    ids = [f"i{k}" for k in range(25) if k != 5] + ["extra"]          # i5 is missing from the pairs
    n = len(ids)
    dense = np.where(rng.random((n, n)) < 0.3, rng.uniform(0.5, 8.0, (n, n)), 0.0).astype(np.float32)
    weights = sp.csr_matrix(dense)
    position = {item: k for k, item in enumerate(ids)}
    index = HistoryIndex.build(log, np.arange(len(log)) >= 100, max_len=6, block_rows=8)
    expected = reference_features(log, index.rows, 6, lambda c, h: float(dense[position[c], position[h]]), set(ids))
    np.testing.assert_allclose(index.pair_features(weights, ids, tau=TAU), expected, rtol=1e-5, atol=1e-5)
    present = index.present_items(ids)
    assert not present[list(index.item_ids).index("i5")]


def test_subset_equals_rows_of_full_index():
    log = random_log(4)
    table = random_table(4)
    index = HistoryIndex.build(log, max_len=8)
    keep = np.arange(len(index)) % 3 == 0
    np.testing.assert_allclose(index.subset(keep).features(table), index.features(table)[keep], atol=1e-6)


def test_unsorted_log_is_a_data_error_naming_the_row():
    log = pd.DataFrame({"user_id": ["u"] * 3, "item_id": list("abc"), "timestamp": [1, 3, 2], "label": [1, 0, 1]})
    with pytest.raises(DataError, match="non-decreasing.*row 2"):
        HistoryIndex.build(log)
