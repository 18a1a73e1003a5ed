"""The LIS/AIS probe: a logistic regression on [base_logit, controls, phi] and its paired gain.

The probe is fitted on the probe-fit rows and scored on the probe-test rows. The baseline
probe sees [base_logit, controls] only, so Gain(E) = metric(with phi) - metric(without phi)
is due to the similarity features alone (DESIGN section 1).

The fit is a deterministic Newton (IRLS) solver in float64 on standardised features with a
tiny L2 penalty on the slopes (not the intercept), so separable data still converges; a
backtracking step keeps every iteration decreasing the penalised log-loss. Feature counts are
small (a handful of columns), so each Newton step is one p x p solve over the rows.
Not supported: sample weights, multi-class labels.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lis.errors import DataError
from lis.metrics import UserResamples, paired_bootstrap, user_resamples


@dataclass(frozen=True)
class ProbeModel:
    """A fitted probe: scores are ``intercept + ((X - mean) / scale) @ coef`` (logits)."""

    mean: np.ndarray
    scale: np.ndarray
    coef: np.ndarray
    intercept: float
    n_iter: int


def _as_matrix(X, what: str) -> np.ndarray:
    X = np.asarray(X, dtype=np.float64)
    if X.ndim == 1:
        X = X[:, None]
    if X.ndim != 2:
        raise DataError(f"probe: {what} must be a 1-D or 2-D array; got shape {X.shape}.")
    bad = ~np.isfinite(X)
    if bad.any():
        row, col = map(int, np.argwhere(bad)[0])
        raise DataError(f"probe: {what} must be finite; row {row}, column {col} holds {X[row, col].item()!r}.")
    return X


def _log_loss(z: np.ndarray, y: np.ndarray) -> float:
    # log(1 + e^z) - y z, stable for large |z|
    return float(np.mean(np.logaddexp(0.0, z) - y * z))


def fit_probe(X_fit, y_fit, l2: float = 1e-6, max_iter: int = 100, tol: float = 1e-10) -> ProbeModel:
    """Fit a logistic regression on ``X_fit`` (n x p) for labels ``y_fit`` (0/1), deterministically.

    Columns are standardised with the fit rows' mean and standard deviation (a constant column
    gets scale 1 and so a zero slope). ``l2`` is the penalty per row on the standardised slopes.
    Raises :class:`DataError` if the labels hold a single class.
    """
    X = _as_matrix(X_fit, "X_fit")
    y = np.asarray(y_fit, dtype=np.float64)
    if y.shape != (X.shape[0],):
        raise DataError(f"probe: y_fit must hold one label per row of X_fit ({X.shape[0]}); got shape {y.shape}.")
    if not np.isin(y, (0.0, 1.0)).all():
        raise DataError("probe: y_fit must hold 0 or 1.")
    if y.min() == y.max():
        raise DataError(f"probe: fit rows need both labels; all {len(y)} are {int(y[0])}.")
    mean = X.mean(axis=0)
    scale = X.std(axis=0)
    scale[scale == 0] = 1.0
    Z = np.empty((X.shape[0], X.shape[1] + 1))
    Z[:, 0] = 1.0
    Z[:, 1:] = (X - mean) / scale
    n = len(y)
    penalty = np.full(Z.shape[1], l2)
    penalty[0] = 0.0                            # never shrink the intercept
    rate = y.mean()
    beta = np.zeros(Z.shape[1])
    beta[0] = np.log(rate / (1.0 - rate))       # start at the base rate: fewer Newton steps
    objective = _log_loss(Z @ beta, y) + 0.5 * np.dot(penalty, beta ** 2)
    it = 0
    for it in range(1, max_iter + 1):
        z = Z @ beta
        p = 1.0 / (1.0 + np.exp(-z))
        grad = Z.T @ (p - y) / n + penalty * beta
        hess = (Z * (p * (1.0 - p))[:, None]).T @ Z / n + np.diag(penalty + 1e-12)
        step = np.linalg.solve(hess, grad)
        t = 1.0
        while True:                             # backtracking: never accept an increase
            candidate = beta - t * step
            value = _log_loss(Z @ candidate, y) + 0.5 * np.dot(penalty, candidate ** 2)
            if value <= objective + 1e-15 or t < 1e-8:
                break
            t *= 0.5
        beta, improvement, objective = candidate, objective - value, value
        if np.max(np.abs(t * step)) < tol or improvement < tol * 1e-3:
            break
    return ProbeModel(mean=mean, scale=scale, coef=beta[1:], intercept=float(beta[0]), n_iter=it)


def probe_scores(model: ProbeModel, X_test) -> np.ndarray:
    """Logits of the fitted probe on ``X_test`` (n x p, same columns as the fit)."""
    X = _as_matrix(X_test, "X_test")
    if X.shape[1] != len(model.coef):
        raise DataError(f"probe: X_test has {X.shape[1]} columns but the probe was fitted on {len(model.coef)}.")
    return model.intercept + ((X - model.mean) / model.scale) @ model.coef


def probe_gain(base_fit, base_test, phi_fit, phi_test, y_fit, y_test, users_test,
               bootstrap: UserResamples | None = None, n_resamples: int = 200, seed: int = 0,
               level: float = 0.95, weighting: str = "users", l2: float = 1e-6,
               return_scores: bool = False) -> dict:
    """Gain of the similarity features phi over the baseline probe, with paired bootstrap intervals.

    ``base_*`` are the baseline columns ([base_logit, controls]; 1-D or n x k), ``phi_*`` the
    similarity features (n x m). Both probes are fitted on the fit rows and scored on the test
    rows. ``bootstrap`` is a :class:`~lis.metrics.UserResamples` drawn for ``users_test`` (pass
    the same object for every table so all tables see the same resamples); when None it is
    drawn with ``n_resamples`` and ``seed``.

    Returns a flat dict: ``auc_with``, ``auc_without``, ``auc_gain``, ``auc_gain_ci`` ([lo, hi]),
    ``auc_gain_se`` and the same for ``gauc_*``, plus ``n_fit``, ``n_test``, ``n_resamples``,
    ``level`` (and ``scores_with``/``scores_without`` when ``return_scores``).
    """
    base_fit, base_test = _as_matrix(base_fit, "base_fit"), _as_matrix(base_test, "base_test")
    phi_fit, phi_test = _as_matrix(phi_fit, "phi_fit"), _as_matrix(phi_test, "phi_test")
    if len(base_fit) != len(phi_fit) or len(base_test) != len(phi_test):
        raise DataError(
            f"probe: base and phi must have the same rows; fit {len(base_fit)} vs {len(phi_fit)}, "
            f"test {len(base_test)} vs {len(phi_test)}."
        )
    without = fit_probe(base_fit, y_fit, l2=l2)
    with_phi = fit_probe(np.hstack((base_fit, phi_fit)), y_fit, l2=l2)
    scores_without = probe_scores(without, base_test)
    scores_with = probe_scores(with_phi, np.hstack((base_test, phi_test)))
    if bootstrap is None:
        bootstrap = user_resamples(users_test, n_resamples, seed)
    stats = paired_bootstrap(np.asarray(y_test), scores_with, scores_without, resamples=bootstrap,
                             level=level, weighting=weighting)
    out = {"n_fit": int(len(base_fit)), "n_test": int(len(base_test)), "n_resamples": len(bootstrap),
           "level": level}
    for metric, values in stats.items():
        out[f"{metric}_with"] = values["with"]
        out[f"{metric}_without"] = values["without"]
        out[f"{metric}_gain"] = values["gain"]
        out[f"{metric}_gain_ci"] = values["gain_ci"]
        out[f"{metric}_gain_se"] = values["gain_se"]
    if return_scores:
        out["scores_with"], out["scores_without"] = scores_with, scores_without
    return out
