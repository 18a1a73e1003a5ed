"""AUC and GAUC equal sklearn exactly; the paired user bootstrap behaves like an interval should."""
from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from lis.errors import DataError
from lis.metrics import auc, gauc, paired_bootstrap, per_user_auc, user_resamples, _WeightedAuc


def tied_data(seed: int, n: int = 3000, n_users: int = 60):
    """Scores rounded to 1 decimal (many ties), users of very different sizes."""
    rng = np.random.default_rng(seed)
    users = rng.zipf(1.5, n) % n_users
    labels = (rng.random(n) < 0.2).astype(int)
    scores = np.round(rng.normal(size=n) + 0.7 * labels, 1)
    return users, labels, scores


def sklearn_gauc(users, labels, scores, weighting="users"):
    values, weights = [], []
    for u in np.unique(users):
        m = users == u
        if labels[m].min() != labels[m].max():
            values.append(roc_auc_score(labels[m], scores[m]))
            weights.append(1.0 if weighting == "users" else m.sum())
    return np.average(values, weights=weights)


@pytest.mark.parametrize("seed", range(5))
def test_auc_equals_sklearn_with_ties(seed):
    _, labels, scores = tied_data(seed)
    assert abs(auc(labels, scores) - roc_auc_score(labels, scores)) < 1e-9


def test_auc_handles_infinite_scores_and_bool_labels():
    labels = np.array([True, False, True, False, False])
    scores = np.array([np.inf, -np.inf, 0.5, 0.5, np.inf])
    finite = np.clip(scores, -1e9, 1e9)           # same order, which sklearn accepts
    assert abs(auc(labels, scores) - roc_auc_score(labels, finite)) < 1e-12 and abs(auc(labels, scores) - 4 / 6) < 1e-12


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("weighting", ["users", "impressions"])
def test_gauc_equals_per_user_sklearn_loop(seed, weighting):
    users, labels, scores = tied_data(seed)
    expected = sklearn_gauc(users, labels, scores, weighting)
    assert abs(gauc(users, labels, scores, weighting=weighting) - expected) < 1e-9


def test_gauc_accepts_string_users_and_infinite_scores():
    users = np.array(["a", "a", "a", "b", "b", "c"])
    labels = np.array([1, 0, 0, 1, 0, 1])
    scores = np.array([np.inf, 1.0, np.inf, -np.inf, -1.0, 3.0])
    assert gauc(users, labels, scores) == pytest.approx((0.75 + 0.0) / 2)   # user c has one class


def test_single_class_users_are_excluded_from_gauc():
    users = np.array([0, 0, 1, 1, 1, 2, 2])
    labels = np.array([1, 0, 1, 1, 1, 0, 0])
    scores = np.array([0.9, 0.1, 0.1, 0.2, 0.3, 0.9, 0.8])
    assert gauc(users, labels, scores) == 1.0
    stats = per_user_auc(users, 3, labels.astype(bool), scores)
    assert np.isnan(stats.auc[1]) and np.isnan(stats.auc[2])


@pytest.mark.parametrize("labels", [[1, 1, 1], [0, 0]])
def test_one_class_only_is_a_clear_data_error(labels):
    scores = np.arange(len(labels), dtype=float)
    with pytest.raises(DataError, match="needs both labels"):
        auc(labels, scores)
    with pytest.raises(DataError, match="no user has both a positive and a negative"):
        gauc(np.zeros(len(labels)), labels, scores)


def test_empty_and_malformed_inputs_are_data_errors():
    with pytest.raises(DataError, match="no impressions"):
        auc([], [])
    with pytest.raises(DataError, match="no impressions"):
        gauc([], [], [])
    with pytest.raises(DataError, match="labels must be 0 or 1; row 1 holds 2"):
        auc([0, 2, 1], [0.1, 0.2, 0.3])
    with pytest.raises(DataError, match="NaN"):
        auc([0, 1], [0.1, np.nan])
    with pytest.raises(DataError, match="equal length"):
        auc([0, 1], [0.1])


def test_weighted_auc_with_unit_counts_equals_auc_and_duplicating_users_matches():
    users, labels, scores = tied_data(7, n=800, n_users=20)
    codes = users.astype(np.int64)
    labels_b = labels.astype(bool)
    weighted = _WeightedAuc(codes, labels_b, scores)
    assert abs(weighted(np.ones(20, dtype=np.int64)) - auc(labels, scores)) < 1e-12
    counts = np.random.default_rng(0).integers(0, 4, 20)
    repeat = counts[codes]
    expected = roc_auc_score(np.repeat(labels, repeat), np.repeat(scores, repeat))
    assert abs(weighted(counts) - expected) < 1e-12


def informative(seed: int, n: int, n_users: int):
    rng = np.random.default_rng(seed)
    users = rng.integers(0, n_users, n)
    labels = (rng.random(n) < 0.3).astype(int)
    base = rng.normal(size=n) + 0.5 * labels
    better = base + rng.normal(size=n) * 0.5 + 0.5 * labels
    return users, labels, better, base


def test_bootstrap_interval_contains_point_estimate_and_narrows_with_more_data():
    widths = []
    for n, n_users in [(2000, 100), (20000, 1000)]:
        users, labels, better, base = informative(1, n, n_users)
        out = paired_bootstrap(labels, better, base, users=users, n_resamples=200, seed=3)
        for metric in ("auc", "gauc"):
            lo, hi = out[metric]["gain_ci"]
            assert lo <= out[metric]["gain"] <= hi
            assert lo > 0
        assert out["auc"]["gain"] == pytest.approx(auc(labels, better) - auc(labels, base))
        widths.append(out["auc"]["gain_ci"][1] - out["auc"]["gain_ci"][0])
    assert widths[1] < 0.6 * widths[0]


def test_bootstrap_is_paired_seeded_and_reusable():
    users, labels, better, base = informative(2, 3000, 150)
    resamples = user_resamples(users, n_resamples=50, seed=11)
    first = paired_bootstrap(labels, better, base, resamples=resamples)
    again = paired_bootstrap(labels, better, base, users=users, n_resamples=50, seed=11)
    assert first == again
    same = paired_bootstrap(labels, base, base, resamples=resamples)
    assert same["auc"]["gain_ci"] == [0.0, 0.0] and same["gauc"]["gain_ci"] == [0.0, 0.0]
    with pytest.raises(DataError, match="drawn for 3000 impressions"):
        paired_bootstrap(labels[:10], better[:10], base[:10], resamples=resamples)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_batched_resample_aucs_equal_the_per_resample_loop(dtype):
    """The sparse batched bootstrap (both exact-integer dtypes, batches smaller than B) gives
    bit for bit the AUCs of _WeightedAuc called once per resample, ties and zero weights included."""
    from lis import metrics

    users, labels, scores = tied_data(11, n=2500, n_users=80)
    codes, n_users = metrics._user_codes(users, len(users), "test")
    labels_b = labels.astype(bool)
    counts = np.random.default_rng(1).multinomial(n_users, np.full(n_users, 1 / n_users), size=37)
    counts[0] = 0                                  # an empty resample: AUC undefined
    counts[1] = 0
    counts[1, codes[0]] = 3                        # a single user
    order = metrics._ScoreOrder(codes, labels_b, scores)
    old = metrics._BATCH_ELEMENTS
    metrics._BATCH_ELEMENTS = 5 * n_users          # batches of 5: exercises the batch loop
    try:
        twice = metrics._batched_twice(counts, order.resample_operators(n_users, dtype))
    finally:
        metrics._BATCH_ELEMENTS = old
    reference = _WeightedAuc(codes, labels_b, scores)
    pos_total = counts @ np.bincount(codes[labels_b], minlength=n_users)
    neg_total = counts @ np.bincount(codes[~labels_b], minlength=n_users)
    for b, weights in enumerate(counts):
        denom = 2.0 * pos_total[b] * neg_total[b]
        expected = reference(weights)
        if denom == 0:
            assert np.isnan(expected)
        else:
            assert twice[b] / denom == expected
    np.testing.assert_array_equal(metrics._loop_twice(counts, order), twice)   # the int64 fallback


def test_paired_bootstrap_diffs_equal_the_per_resample_loop():
    users, labels, scores = tied_data(12, n=3000, n_users=120)
    other = np.round(scores + np.random.default_rng(2).normal(size=len(scores)) * 0.3, 1)
    resamples = user_resamples(users, n_resamples=60, seed=4)
    from lis import metrics

    labels_b = labels.astype(bool)
    diffs = metrics._auc_resample_diffs(resamples, labels_b, metrics._ScoreOrder(resamples.codes, labels_b, scores),
                                        metrics._ScoreOrder(resamples.codes, labels_b, other))
    with_auc = _WeightedAuc(resamples.codes, labels_b, scores)
    without_auc = _WeightedAuc(resamples.codes, labels_b, other)
    np.testing.assert_array_equal(diffs, [with_auc(c) - without_auc(c) for c in resamples.counts])
    out = paired_bootstrap(labels, scores, other, resamples=resamples)
    assert out["auc"]["with"] == auc(labels, scores) and out["auc"]["without"] == auc(labels, other)
    assert out["gauc"]["with"] == gauc(users, labels, scores)


def test_per_user_auc_equals_sklearn_per_user_with_ties_and_many_users():
    users, labels, scores = tied_data(13, n=4000, n_users=70)
    codes, n_users = users.astype(np.int64) * 1000, 70000          # > 65535 users: the int64 key sort
    stats = per_user_auc(codes, n_users, labels.astype(bool), scores)
    for u in range(n_users):
        m = codes == u
        if 0 < labels[m].sum() < m.sum():
            assert abs(stats.auc[u] - roc_auc_score(labels[m], scores[m])) < 1e-12
        else:
            assert np.isnan(stats.auc[u])


def test_paired_bootstrap_with_one_class_is_a_clear_data_error():
    with pytest.raises(DataError, match="needs both labels"):
        paired_bootstrap(np.ones(6, dtype=int), np.arange(6.0), np.zeros(6), users=np.arange(6) % 2)
