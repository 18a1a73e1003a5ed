"""Preference builders on hand-made logs with answers worked out by hand."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from lis.builders import BUILDERS, build_pairs, builder_options, corrupt_pairs
from lis.errors import ConfigError, DataError


def log_of(events, label=1):
    """events: (user, item, timestamp[, session]) tuples -> a time-sorted log."""
    columns = ["user_id", "item_id", "timestamp", "session_id"][: len(events[0])]
    log = pd.DataFrame(events, columns=columns)
    log["label"] = np.int8(label)
    return log.sort_values("timestamp", kind="stable").reset_index(drop=True)


def as_dict(pairs):
    return {(a, p): w for a, p, w in pairs.itertuples(index=False)}


# u1 engages A, B, C, A (N=3 distinct items); u2 engages A, B (N=2).
BASIC = log_of([("u1", "A", 0), ("u2", "A", 5), ("u1", "B", 10), ("u2", "B", 15), ("u1", "C", 20), ("u1", "A", 30)])


def test_co_engagement_directional_weights_are_sums_of_inverse_user_counts():
    got = as_dict(build_pairs("co_engagement", BASIC, symmetric=False))
    third = 1 / 3
    assert got == pytest.approx({("A", "B"): third + 1 / 2, ("A", "C"): third, ("B", "A"): third,
                                 ("B", "C"): third, ("C", "A"): third})


def test_co_engagement_symmetric_scores_each_unordered_pair_once_per_user():
    got = as_dict(build_pairs("co_engagement", BASIC))  # symmetric is the default
    # u1 did A->B and B->A: counts once for {A, B}.
    expected = {("A", "B"): 5 / 6, ("A", "C"): 1 / 3, ("B", "C"): 1 / 3}
    expected.update({(p, a): w for (a, p), w in list(expected.items())})
    assert got == pytest.approx(expected)


def test_co_engagement_counts_a_repeated_pair_once_per_user():
    log = log_of([("u1", "A", 0), ("u1", "B", 1), ("u1", "A", 2), ("u1", "B", 3)])
    got = as_dict(build_pairs("co_engagement", log, symmetric=False))
    assert got == pytest.approx({("A", "B"): 0.5, ("B", "A"): 0.5})


def test_co_engagement_ignores_non_engaged_impressions():
    shown = log_of([("u1", "X", 1), ("u1", "Y", 2)], label=0)
    log = pd.concat([BASIC, shown]).sort_values("timestamp", kind="stable").reset_index(drop=True)
    assert as_dict(build_pairs("co_engagement", log)) == as_dict(build_pairs("co_engagement", BASIC))


def test_co_engagement_gap_defaults_to_one_day_and_can_be_set():
    log = log_of([("u1", "A", 0), ("u1", "B", 100), ("u1", "C", 100 + 86401)])
    assert set(as_dict(build_pairs("co_engagement", log, symmetric=False))) == {("A", "B")}
    assert build_pairs("co_engagement", log, max_gap_seconds=50).empty
    wide = build_pairs("co_engagement", log, symmetric=False, max_gap_seconds=10**6)
    assert set(as_dict(wide)) == {("A", "B"), ("A", "C"), ("B", "C")}


def test_co_engagement_same_timestamp_is_not_then():
    log = log_of([("u1", "A", 0), ("u1", "B", 0)])
    assert build_pairs("co_engagement", log).empty


def test_co_engagement_uses_sessions_when_the_log_has_them():
    log = log_of([("u1", "A", 0, "s1"), ("u1", "B", 10, "s1"), ("u1", "C", 20, "s2")])
    assert set(as_dict(build_pairs("co_engagement", log, symmetric=False))) == {("A", "B")}
    across = build_pairs("co_engagement", log, symmetric=False, same_session=False)
    assert set(as_dict(across)) == {("A", "B"), ("A", "C"), ("B", "C")}


def test_co_engagement_window_limits_how_far_ahead_a_pair_reaches():
    log = log_of([("u1", "A", 0), ("u1", "B", 1), ("u1", "C", 2), ("u1", "D", 3)])
    got = as_dict(build_pairs("co_engagement", log, symmetric=False, window=1))
    assert got == pytest.approx({("A", "B"): 0.25, ("B", "C"): 0.25, ("C", "D"): 0.25})
    assert len(build_pairs("co_engagement", log, symmetric=False, window=2)) == 5


# A-B engaged together by two users with N=2 (score 1), A-C and A-D by one each (0.5).
FAN = log_of([("u1", "A", 0), ("u1", "B", 1), ("u2", "A", 2), ("u2", "B", 3),
              ("u3", "A", 4), ("u3", "C", 5), ("u4", "A", 6), ("u4", "D", 7)])


def test_co_engagement_keeps_top_k_per_anchor_ties_by_id():
    pairs = build_pairs("co_engagement", FAN, top_k=2)
    anchor_a = pairs[pairs.anchor_id == "A"]
    assert list(anchor_a.positive_id) == ["B", "C"] and list(anchor_a.weight) == pytest.approx([1.0, 0.5])


def test_co_engagement_drops_scores_outside_low_high():
    assert set(as_dict(build_pairs("co_engagement", FAN, low=0.6))) == {("A", "B"), ("B", "A")}
    kept = set(as_dict(build_pairs("co_engagement", FAN, high=0.6)))
    assert kept == {("A", "C"), ("C", "A"), ("A", "D"), ("D", "A")}


def test_output_is_sorted_typed_and_deterministic():
    pairs = build_pairs("co_engagement", FAN)
    assert list(pairs.columns) == ["anchor_id", "positive_id", "weight"]
    assert pairs["weight"].dtype == np.float64 and (pairs["weight"] > 0).all()
    resorted = pairs.sort_values(["anchor_id", "weight", "positive_id"], ascending=[True, False, True])
    assert resorted.index.tolist() == list(range(len(pairs)))
    shuffled_users = FAN.replace({"user_id": {"u1": "z9", "u4": "a0"}})
    pd.testing.assert_frame_equal(pairs, build_pairs("co_engagement", shuffled_users))


def many_items_log(n_items=60):
    return log_of([(f"u{k % 5}", f"i{k:02d}", k) for k in range(n_items)])


@pytest.mark.parametrize("name", ["random", "category"])
def test_random_controls_draw_k_distinct_others_reproducibly(name):
    log = many_items_log()
    catalogue = pd.DataFrame({"item_id": [f"i{k:02d}" for k in range(60)], "category": [f"c{k % 3}" for k in range(60)]})
    pairs = build_pairs(name, log, catalogue=catalogue, seed=3, top_k=4)
    assert (pairs.groupby("anchor_id").size() == 4).all() and pairs.anchor_id.nunique() == 60
    assert not (pairs.anchor_id == pairs.positive_id).any()
    assert not pairs.duplicated(["anchor_id", "positive_id"]).any()
    assert (pairs.weight == 1.0).all()
    pd.testing.assert_frame_equal(pairs, build_pairs(name, log, catalogue=catalogue, seed=3, top_k=4))
    assert not pairs.equals(build_pairs(name, log, catalogue=catalogue, seed=4, top_k=4))
    if name == "category":
        category = dict(zip(catalogue.item_id, catalogue.category))
        assert (pairs.anchor_id.map(category) == pairs.positive_id.map(category)).all()


def test_random_pairs_take_all_others_when_fewer_than_k():
    pairs = build_pairs("random", many_items_log(3), top_k=10)
    assert len(pairs) == 6


def test_category_needs_the_category_column():
    catalogue = pd.DataFrame({"item_id": ["A", "B", "C"], "text": ["a", "b", "c"]})
    with pytest.raises(DataError, match="catalogue: column 'category' is missing"):
        build_pairs("category", BASIC, catalogue=catalogue)


def test_unknown_builder_or_option_or_bad_value_is_a_config_error():
    with pytest.raises(ConfigError, match="unknown pairs builder 'nope'"):
        build_pairs("nope", BASIC)
    with pytest.raises(ConfigError, match="builder 'co_engagement' has no option 'widow'.*window=5"):
        build_pairs("co_engagement", BASIC, widow=3)
    with pytest.raises(ConfigError, match="option 'top_k' must be an integer >= 1; got 0"):
        build_pairs("random", BASIC, top_k=0)
    with pytest.raises(ConfigError, match="same_session=True needs a 'session_id'"):
        build_pairs("co_engagement", BASIC, same_session=True)


def test_every_builder_documents_its_options():
    for name, fn in BUILDERS.items():
        for option in builder_options(name):
            assert option in fn.__doc__, (name, option)


def test_user_builder_reads_and_validates_a_pairs_file(tmp_path):
    path = tmp_path / "mine.parquet"
    pd.DataFrame({"anchor_id": ["B", "A"], "positive_id": ["C", "B"], "weight": [2.0, 1.0]}).to_parquet(path)
    pairs = build_pairs("user", BASIC, path=str(path))
    assert list(pairs.anchor_id) == ["A", "B"] and list(pairs.weight) == [1.0, 2.0]
    with pytest.raises(ConfigError, match="needs the option path"):
        build_pairs("user", BASIC)
    with pytest.raises(DataError, match="not found"):
        build_pairs("user", BASIC, path=str(tmp_path / "missing.parquet"))


def test_corrupt_pairs_replaces_exactly_that_fraction_and_is_nested():
    pairs = build_pairs("random", many_items_log(), top_k=5, seed=0)
    items = [f"i{k:02d}" for k in range(60)] + [f"x{k}" for k in range(1000)]  # x*: never a real positive
    quarter = corrupt_pairs(pairs, 0.25, items, seed=1)
    half = corrupt_pairs(pairs, 0.5, items, seed=1)
    changed_q = (quarter.positive_id != pairs.positive_id).to_numpy()
    changed_h = (half.positive_id != pairs.positive_id).to_numpy()
    assert abs(changed_q.sum() - 75) <= 2 and abs(changed_h.sum() - 150) <= 3  # 300 pairs
    assert (half.positive_id[changed_q] == quarter.positive_id[changed_q]).all()  # nested
    assert (quarter.anchor_id == pairs.anchor_id).all() and (quarter.weight == pairs.weight).all()
    assert not (half.anchor_id == half.positive_id).any()
    pd.testing.assert_frame_equal(corrupt_pairs(pairs, 0.0, items), pairs)


def clustered_log(n_users=300, n_items=100, n_clusters=4, n_rows=15_000, seed=0):
    """Clicks follow sigmoid(<user, item>) where items sit tightly around cluster centres."""
    rng = np.random.default_rng(seed)
    cluster = np.arange(n_items) % n_clusters
    items = rng.normal(size=(n_clusters, 4))[cluster] * 1.5 + rng.normal(scale=0.2, size=(n_items, 4))
    users = rng.normal(size=(n_users, 4))
    u, i = rng.integers(0, n_users, n_rows), rng.integers(0, n_items, n_rows)
    p = 1 / (1 + np.exp(1.0 - (users[u] * items[i]).sum(1)))
    log = pd.DataFrame({"user_id": np.char.add("u", u.astype(str)), "item_id": np.char.add("i", i.astype(str)),
                        "timestamp": np.arange(n_rows, dtype=np.int64), "label": (rng.random(n_rows) < p).astype(np.int8)})
    return log, {f"i{k}": c for k, c in enumerate(cluster)}


def test_ranker_knn_neighbours_of_planted_clusters_are_mostly_in_cluster():
    from lis.rankers import IdCtrRanker

    log, cluster = clustered_log()
    ranker = IdCtrRanker.fit(log, dim=8, epochs=10, seed=0)
    pairs = build_pairs("ranker_knn", log, ranker=ranker, top_k=5)
    assert pairs.anchor_id.nunique() == 100 and (pairs.groupby("anchor_id").size() <= 5).all()
    assert ((pairs.weight > 0) & (pairs.weight <= 1 + 1e-6)).all()
    assert not (pairs.anchor_id == pairs.positive_id).any()
    in_cluster = (pairs.anchor_id.map(cluster) == pairs.positive_id.map(cluster)).mean()
    assert in_cluster > 0.7  # chance is 0.25


def test_ranker_knn_respects_min_count_and_the_slice():
    from lis.rankers import IdCtrRanker

    log, _ = clustered_log()
    ranker = IdCtrRanker.fit(log, dim=8, epochs=2, seed=0)
    known = set(ranker.item_embeddings(min_count=160)[0])
    pairs = build_pairs("ranker_knn", log, ranker=ranker, min_count=160)
    assert set(pairs.anchor_id) | set(pairs.positive_id) <= known
    one_item = log[log.item_id == "i3"]
    assert set(build_pairs("ranker_knn", one_item, ranker=ranker).anchor_id) == {"i3"}
