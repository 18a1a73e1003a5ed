"""The paired user bootstrap: batched resample AUCs equal a per-resample reference loop,
intervals behave, and too few users is refused."""
from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from lis.bootstrap import MIN_USERS, check_bootstrap_users, paired_bootstrap, user_resamples
from lis.errors import DataError
from lis.metrics import _ScoreOrder, auc, gauc
from tests.lis.test_metrics import tied_data


class WeightedAuc:
    """AUC under per-user integer weights, with the sort done once per score vector.

    Negatives are ordered by score once; for every positive the range of negatives strictly
    below / not above it is fixed. A resample then only needs a cumulative sum of the negatives'
    user weights in that fixed order and two gathers: O(n) per resample, exact in int64.
    """

    def __init__(self, codes: np.ndarray, labels: np.ndarray, scores: np.ndarray):
        neg_order = np.argsort(scores[~labels], kind="stable")
        neg_scores = scores[~labels][neg_order]
        self.neg_users = codes[~labels][neg_order]
        pos_scores = scores[labels]
        self.pos_users = codes[labels]
        self.left = np.searchsorted(neg_scores, pos_scores, "left")
        self.right = np.searchsorted(neg_scores, pos_scores, "right")

    def __call__(self, user_weights: np.ndarray) -> float:
        cum = np.zeros(len(self.neg_users) + 1, dtype=np.int64)
        np.cumsum(user_weights[self.neg_users], out=cum[1:])
        pos_w = user_weights[self.pos_users]
        twice = np.dot(pos_w, cum[self.left] + cum[self.right])
        denom = 2.0 * pos_w.sum() * cum[-1]
        return float(twice / denom) if denom > 0 else np.nan


def test_weighted_auc_with_unit_counts_equals_auc_and_duplicating_users_matches():
    users, labels, scores = tied_data(7, n=800, n_users=20)
    codes = users.astype(np.int64)
    labels_b = labels.astype(bool)
    weighted = WeightedAuc(codes, labels_b, scores)
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
    bit for bit the AUCs of WeightedAuc called once per resample, ties and zero weights included."""
    from lis import bootstrap as metrics

    users, labels, scores = tied_data(11, n=2500, n_users=80)
    codes, n_users = metrics._user_codes(users, len(users), "test")
    labels_b = labels.astype(bool)
    counts = np.random.default_rng(1).multinomial(n_users, np.full(n_users, 1 / n_users), size=37)
    counts[0] = 0                                  # an empty resample: AUC undefined
    counts[1] = 0
    counts[1, codes[0]] = 3                        # a single user
    order = _ScoreOrder(codes, labels_b, scores)
    old = metrics._BATCH_ELEMENTS
    metrics._BATCH_ELEMENTS = 5 * n_users          # batches of 5: exercises the batch loop
    try:
        twice = metrics._batched_twice(counts, order.resample_operators(n_users, dtype))
    finally:
        metrics._BATCH_ELEMENTS = old
    reference = WeightedAuc(codes, labels_b, scores)
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
    from lis import bootstrap as metrics

    labels_b = labels.astype(bool)
    diffs = metrics._auc_resample_diffs(resamples, labels_b, _ScoreOrder(resamples.codes, labels_b, scores),
                                        _ScoreOrder(resamples.codes, labels_b, other))
    with_auc = WeightedAuc(resamples.codes, labels_b, scores)
    without_auc = WeightedAuc(resamples.codes, labels_b, other)
    np.testing.assert_array_equal(diffs, [with_auc(c) - without_auc(c) for c in resamples.counts])
    out = paired_bootstrap(labels, scores, other, resamples=resamples)
    assert out["auc"]["with"] == auc(labels, scores) and out["auc"]["without"] == auc(labels, other)
    assert out["gauc"]["with"] == gauc(users, labels, scores)


def test_paired_bootstrap_with_one_class_is_a_clear_data_error():
    with pytest.raises(DataError, match="needs both labels"):
        paired_bootstrap(np.ones(6, dtype=int), np.arange(6.0), np.zeros(6), users=np.arange(6) % 2)


def test_too_few_users_for_a_bootstrap_is_a_clear_error():
    users = np.repeat([f"u{k}" for k in range(MIN_USERS)], 4)
    labels = np.tile([0, 1, 0, 0], MIN_USERS)
    check_bootstrap_users(users, labels, "log")                      # enough: no error
    with pytest.raises(DataError, match=f"at least {MIN_USERS} users"):
        check_bootstrap_users(np.full(40, "u0"), labels[:40], "log.parquet")
    with pytest.raises(DataError, match="0 with both"):
        check_bootstrap_users(users, np.zeros(len(users), dtype=int), "log.parquet")
