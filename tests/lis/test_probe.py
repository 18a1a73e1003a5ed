"""The probe finds real signal in phi, none in noise, and fits like a reference logistic regression."""
from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from lis.errors import DataError
from lis.bootstrap import user_resamples
from lis.probe import fit_probe, probe_gain, probe_scores, within_user


def world(seed: int, n: int = 12000, n_users: int = 600):
    """base_logit explains part of the label; a hidden signal explains more and is phi's to find."""
    rng = np.random.default_rng(seed)
    users = rng.integers(0, n_users, n)
    base = rng.normal(size=n)
    hidden = rng.normal(size=n)
    labels = (rng.random(n) < 1 / (1 + np.exp(-(base + hidden - 1.0)))).astype(int)
    controls = rng.integers(0, 2, (n, 2)).astype(float)
    return users, labels, np.column_stack((base, controls)), hidden


def split(n):
    fit = np.zeros(n, dtype=bool)
    fit[: n // 2] = True
    return fit, ~fit


def test_fit_matches_sklearn_logistic_regression():
    users, labels, baseline, hidden = world(0, n=4000)
    X = np.column_stack((baseline, hidden))
    model = fit_probe(X, labels, l2=0.0)
    reference = LogisticRegression(C=np.inf, tol=1e-12, max_iter=1000).fit(X, labels)
    np.testing.assert_allclose(probe_scores(model, X), reference.decision_function(X), atol=1e-5)
    assert fit_probe(X, labels).coef.tolist() == fit_probe(X, labels).coef.tolist()   # deterministic


def test_informative_phi_gives_gain_with_interval_above_zero():
    users, labels, baseline, hidden = world(1)
    rng = np.random.default_rng(1)
    phi = np.column_stack((hidden + 0.5 * rng.normal(size=len(hidden)), rng.normal(size=len(hidden))))
    fit, test = split(len(labels))
    out = probe_gain(baseline[fit], baseline[test], phi[fit], phi[test], labels[fit], labels[test], users[test], users[fit],
                     n_resamples=200, seed=0)
    for metric in ("auc", "gauc"):
        assert out[f"{metric}_gain"] > 0.02
        assert out[f"{metric}_gain_ci"][0] > 0
        assert out[f"{metric}_with"] == pytest.approx(out[f"{metric}_without"] + out[f"{metric}_gain"])


def test_noise_phi_gives_intervals_containing_zero_at_the_nominal_rate():
    """Over 20 worlds, a 95% interval of a noise feature's gain excludes 0 about once per metric
    (a 5% rate); more than 3 exclusions, or a mean gain away from 0, is a biased estimator."""
    excluded, gains = {"auc": 0, "gauc": 0}, {"auc": [], "gauc": []}
    for seed in range(2, 22):
        users, labels, baseline, _ = world(seed)
        phi = np.random.default_rng(seed + 50).normal(size=(len(labels), 1))
        fit, test = split(len(labels))
        resamples = user_resamples(users[test], n_resamples=200, seed=seed)
        out = probe_gain(baseline[fit], baseline[test], phi[fit], phi[test], labels[fit], labels[test], users[test],
                         users[fit], bootstrap=resamples)
        assert out["n_resamples"] == 200
        for metric in excluded:
            lo, hi = out[f"{metric}_gain_ci"]
            excluded[metric] += not lo < 0 < hi
            gains[metric].append(out[f"{metric}_gain"])
    assert max(excluded.values()) <= 3, excluded
    assert abs(np.mean(gains["auc"])) < 5e-4 and abs(np.mean(gains["gauc"])) < 2e-3, {k: np.mean(v) for k, v in gains.items()}


def test_probe_rejects_single_class_and_non_finite_features():
    X = np.ones((4, 2))
    with pytest.raises(DataError, match="need both labels"):
        fit_probe(X, [1, 1, 1, 1])
    X[2, 1] = np.nan
    with pytest.raises(DataError, match="row 2, column 1"):
        fit_probe(X, [0, 1, 0, 1])


def test_separable_data_still_converges_to_finite_scores():
    X = np.array([[0.0], [1.0], [2.0], [3.0]])
    model = fit_probe(X, [0, 0, 1, 1])
    scores = probe_scores(model, X)
    assert np.isfinite(scores).all() and scores[2] > scores[1]


def test_probe_gain_scores_equal_separate_fits_of_both_probes():
    """probe_gain shares the standardised columns and warm-starts the with-phi fit; its scores
    must be those of two independent fit_probe calls, and its metrics those of paired_bootstrap."""
    from lis.bootstrap import paired_bootstrap

    users, labels, baseline, hidden = world(5)
    phi = np.column_stack((hidden, np.random.default_rng(5).normal(size=len(hidden)))).astype(np.float32)
    fit, test = split(len(labels))
    out = probe_gain(baseline[fit], baseline[test], phi[fit], phi[test], labels[fit], labels[test], users[test], users[fit],
                     n_resamples=50, seed=1, return_scores=True)
    both = np.hstack((baseline, phi))
    with_phi = probe_scores(fit_probe(both[fit], labels[fit]), both[test])
    without = probe_scores(fit_probe(baseline[fit], labels[fit]), baseline[test])
    np.testing.assert_allclose(out["scores_with"], with_phi, atol=1e-8)
    np.testing.assert_allclose(out["scores_without"], without, atol=1e-8)
    stats = paired_bootstrap(labels[test], out["scores_with"], out["scores_without"], users=users[test],
                             n_resamples=50, seed=1)
    assert out["auc_gain_ci"] == stats["auc"]["gain_ci"] and out["auc_gain"] == stats["auc"]["gain"]
    # GAUC: probes fitted on columns centred within each user, scored on the test columns as they are.
    within = within_user(both[fit].T.astype(np.float64), users[fit]).T
    w_with = probe_scores(fit_probe(within, labels[fit]), both[test])
    w_without = probe_scores(fit_probe(within[:, :baseline.shape[1]], labels[fit]), baseline[test])
    gauc_stats = paired_bootstrap(labels[test], w_with, w_without, users=users[test], n_resamples=50, seed=1)
    assert out["gauc_gain"] == pytest.approx(gauc_stats["gauc"]["gain"], abs=1e-9)
    assert out["gauc_gain_ci"] == pytest.approx(gauc_stats["gauc"]["gain_ci"], abs=1e-9)


def test_within_user_probe_ignores_what_is_constant_within_users():
    """A column that separates users but never varies inside one cannot move a within-user
    ranking: the GAUC gain of such a 'feature' is exactly zero, while a global probe uses it."""
    users, labels, baseline, _ = world(8)
    rate = np.random.default_rng(8).normal(size=600)
    labels = (np.random.default_rng(9).random(len(users)) < 1 / (1 + np.exp(-(baseline[:, 0] + 2 * rate[users] - 2)))
              ).astype(int)
    phi = rate[users][:, None] + 0.0
    fit, test = split(len(labels))
    out = probe_gain(baseline[fit], baseline[test], phi[fit], phi[test], labels[fit], labels[test], users[test],
                     users[fit], n_resamples=50, seed=0)
    assert out["auc_gain_ci"][0] > 0.02                     # between users it is a strong signal ...
    assert abs(out["gauc_gain"]) < 1e-9                     # ... within users it is nothing


def test_coarse_start_on_large_fits_reaches_the_same_optimum(monkeypatch):
    """Above _COARSE_MIN_ROWS the fit starts from a subsample's solution: same answer as
    Newton from the base rate, and as sklearn."""
    from lis import probe

    users, labels, baseline, hidden = world(6, n=80000)
    X = np.column_stack((baseline, hidden))
    assert len(X) >= probe._COARSE_MIN_ROWS
    coarse = fit_probe(X, labels, l2=0.0)
    monkeypatch.setattr(probe, "_COARSE_MIN_ROWS", 10 ** 9)
    plain = fit_probe(X, labels, l2=0.0)
    np.testing.assert_allclose(probe_scores(coarse, X), probe_scores(plain, X), atol=1e-8)
    reference = LogisticRegression(C=np.inf, tol=1e-12, max_iter=1000).fit(X, labels)
    np.testing.assert_allclose(probe_scores(coarse, X), reference.decision_function(X), atol=1e-5)


def test_probe_leaves_blas_thread_count_as_it_found_it():
    from threadpoolctl import threadpool_info

    before = [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]
    users, labels, baseline, hidden = world(7, n=2000)
    fit_probe(np.column_stack((baseline, hidden)), labels)
    assert [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"] == before
