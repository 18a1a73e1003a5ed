"""AUC and GAUC equal sklearn exactly; the paired user bootstrap behaves like an interval should."""
from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from lis.errors import DataError
from lis.metrics import auc, gauc, per_user_auc


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
