"""The LIS/AIS probe: a logistic regression on [base_logit, controls, phi] and its paired gain.

The probe is fitted on the probe-fit rows and scored on the probe-test rows. The baseline
probe sees [base_logit, controls] only, so Gain(E) = metric(with phi) - metric(without phi)
is due to the similarity features alone (docs/science.md section 5). The AUC gain compares
global probes; the GAUC gain compares *within-user* probes, fitted on the same columns centred
within each user (:func:`within_user`), because only within-user variation can move a
user-averaged AUC (section 5 gives the measurement behind this choice).

The fit is a deterministic Newton (IRLS) solver in float64 on standardised features with a
tiny L2 penalty on the slopes (not the intercept), so separable data still converges; a
backtracking step keeps every iteration decreasing the penalised log-loss. Feature counts are
small (a handful of columns), so each Newton step is one p x p solve over the rows. The rows
are what cost: columns are stored standardised as contiguous (p, n) rows, one exp per step
serves the loss and the gradient, and the Hessian is reused once steps are small. In
:func:`probe_gain` both probes share those columns and the with-phi fit starts from the
baseline's optimum (zero phi slopes).
Not supported: sample weights, multi-class labels.
"""
from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass

import numpy as np

from lis.errors import DataError
from lis.bootstrap import UserResamples, paired_bootstrap, user_resamples


@dataclass(frozen=True)
class ProbeModel:
    """A fitted probe: scores are ``intercept + ((X - mean) / scale) @ coef`` (logits)."""

    mean: np.ndarray
    scale: np.ndarray
    coef: np.ndarray
    intercept: float
    n_iter: int


def _as_matrix(X, what: str) -> np.ndarray:
    # float32 stays float32 (phi is float32): every use below promotes it to float64 exactly,
    # so converting here would only add a copy.
    X = np.asarray(X)
    if X.dtype not in (np.float32, np.float64):
        X = X.astype(np.float64)
    if X.ndim == 1:
        X = X[:, None]
    if X.ndim != 2:
        raise DataError(f"probe: {what} must be a 1-D or 2-D array; got shape {X.shape}.")
    bad = ~np.isfinite(X)
    if bad.any():
        row, col = map(int, np.argwhere(bad)[0])
        raise DataError(f"probe: {what} must be finite; row {row}, column {col} holds {X[row, col].item()!r}.")
    return X


@functools.cache
def _blas_controller():
    from threadpoolctl import ThreadpoolController   # ships with scikit-learn, a dependency

    return ThreadpoolController()


@contextlib.contextmanager
def _one_blas_thread():
    """Run the body with one BLAS thread. The probe's products are thin (p <= ~10 rows) and
    memory-bound: a second OpenBLAS thread gains little on an idle machine, and on a busy
    2-core one its spin-waiting made probe_gain ~1.5x slower (as lis.threads found for torch)."""
    with _blas_controller().limit(limits=1, user_api="blas"):
        yield


def _loss_terms(z: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
    """Mean log-loss of logits ``z`` and ``e = exp(-|z|)``, which the next gradient reuses.

    log(1 + e^z) - y z = max(z, 0) + log1p(exp(-|z|)) - y z: stable for large |z|, and the one
    exp serves both the loss here and the probabilities in :func:`_sigmoid_from`.
    """
    e = np.exp(-np.abs(z))
    loss = np.log1p(e)
    loss += np.maximum(z, 0.0)
    loss -= y * z
    return float(loss.mean()), e


def _sigmoid_from(z: np.ndarray, e: np.ndarray) -> np.ndarray:
    # 1 / (1 + e^-z) from e = exp(-|z|): 1 / (1 + e) for z >= 0, e / (1 + e) for z < 0.
    p = 1.0 / (1.0 + e)
    np.multiply(p, e, out=p, where=z < 0)
    return p


# Columns per block of the weighted Gram product: a (p x block) float64 buffer stays in cache
# and is reused, where one n-sized product would allocate (and page-fault in) ~30 MB per step.
_GRAM_BLOCK = 1 << 15


def _weighted_gram(XT: np.ndarray, w: np.ndarray) -> np.ndarray:
    """``XT @ diag(w) @ XT.T`` for w >= 0, as a sum of symmetric products over column blocks."""
    p, n = XT.shape
    root = np.sqrt(w)
    buffer = np.empty((p, min(n, _GRAM_BLOCK)))
    gram = np.zeros((p, p))
    for lo in range(0, n, _GRAM_BLOCK):
        block = buffer[:, :min(n, lo + _GRAM_BLOCK) - lo]
        np.multiply(XT[:, lo:lo + block.shape[1]], root[lo:lo + block.shape[1]], out=block)
        gram += block @ block.T
    return gram


def _standardize(*blocks: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Column means, scales (std; 1 for a constant column) and the standardised columns of the
    blocks side by side, as one (p, n) C-contiguous float64 array: each column is copied once
    into its row, centred and scaled in place, and every Newton pass then reads contiguous rows."""
    columns = [block[:, j] for block in blocks for j in range(block.shape[1])]
    n = blocks[0].shape[0]
    XT = np.empty((len(columns), n))
    mean, scale = np.empty(len(columns)), np.empty(len(columns))
    for j, column in enumerate(columns):
        row = XT[j]
        row[:] = column                          # float32 -> float64 is exact
        mean[j] = row.mean()
        row -= mean[j]
        scale[j] = np.sqrt(np.dot(row, row) / n)
        if scale[j] == 0:
            scale[j] = 1.0
        row /= scale[j]
    return mean, scale, XT


def _check_labels(y_fit, n: int) -> np.ndarray:
    y = np.asarray(y_fit, dtype=np.float64)
    if y.shape != (n,):
        raise DataError(f"probe: y_fit must hold one label per row of X_fit ({n}); got shape {y.shape}.")
    if not np.isin(y, (0.0, 1.0)).all():
        raise DataError("probe: y_fit must hold 0 or 1.")
    if y.min() == y.max():
        raise DataError(f"probe: fit rows need both labels; all {len(y)} are {int(y[0])}.")
    return y


_MAX_ITER, _TOL = 100, 1e-10
# Coarse-to-fine start: on a large fit, first solve on every _COARSE_STRIDE-th row (to a loose
# tolerance). Its optimum is within sampling noise (~1e-2) of the full one, so the full-data
# Newton needs ~2 fewer passes; the answer is still the full-data optimum at _TOL.
_COARSE_STRIDE, _COARSE_MIN_ROWS, _COARSE_TOL = 8, 1 << 16, 1e-4


def _fit_standardized(XT: np.ndarray, y: np.ndarray, l2: float, max_iter: int = _MAX_ITER,
                      tol: float = _TOL, beta: np.ndarray | None = None) -> tuple[np.ndarray, int]:
    """:func:`_newton` on all rows, started from the fit on a systematic subsample of them."""
    if XT.shape[1] >= _COARSE_MIN_ROWS:
        y_coarse = y[::_COARSE_STRIDE]
        if 0 < y_coarse.sum() < len(y_coarse):
            XT_coarse = np.ascontiguousarray(XT[:, ::_COARSE_STRIDE])
            beta, _ = _newton(XT_coarse, y_coarse, l2, max_iter, max(tol, _COARSE_TOL), beta)
    return _newton(XT, y, l2, max_iter, tol, beta)


def fit_probe(X_fit, y_fit, l2: float = 1e-6, max_iter: int = _MAX_ITER, tol: float = _TOL) -> ProbeModel:
    """Fit a logistic regression on ``X_fit`` (n x p) for labels ``y_fit`` (0/1), deterministically.

    Columns are standardised with the fit rows' mean and standard deviation (a constant column
    gets scale 1 and so a zero slope). ``l2`` is the penalty per row on the standardised slopes.
    Raises :class:`DataError` if the labels hold a single class.
    """
    X = _as_matrix(X_fit, "X_fit")
    y = _check_labels(y_fit, X.shape[0])
    mean, scale, XT = _standardize(X)
    with _one_blas_thread():
        beta, it = _fit_standardized(XT, y, l2, max_iter, tol)
    return ProbeModel(mean=mean, scale=scale, coef=beta[1:], intercept=float(beta[0]), n_iter=it)


# Below this step size the Hessian is reused (a chord step): Newton has converged enough that
# the curvature barely changes, and the Hessian is the costliest pass over the rows.
_REUSE_HESSIAN_BELOW = 1e-3


def _newton(XT: np.ndarray, y: np.ndarray, l2: float, max_iter: int, tol: float,
            beta: np.ndarray | None = None) -> tuple[np.ndarray, int]:
    """Damped Newton on standardised columns ``XT`` (p x n); returns ([intercept, slopes], iterations).

    Starts at ``beta`` (a warm start) or at the base rate. Every line-searched step decreases
    the penalised log-loss (backtracking). Logits are updated along the step direction (one
    product per iteration), the exp of a candidate serves its loss and the next gradient, once
    steps are small the last Hessian is reused, and a step already below the stopping threshold
    is taken without a line search: the fixed point (gradient 0) and the tolerance are those of
    plain Newton, only the passes over the rows are fewer.
    """
    n = len(y)
    penalty = np.full(XT.shape[0] + 1, l2)
    penalty[0] = 0.0                            # never shrink the intercept
    if beta is None:
        rate = y.mean()
        beta = np.zeros(XT.shape[0] + 1)
        beta[0] = np.log(rate / (1.0 - rate))   # start at the base rate: fewer Newton steps
    beta = np.array(beta, dtype=np.float64)
    z = beta[0] + beta[1:] @ XT
    loss, e = _loss_terms(z, y)
    objective = loss + 0.5 * np.dot(penalty, beta ** 2)
    hess, last_move = None, np.inf
    it = 0
    for it in range(1, max_iter + 1):
        p = _sigmoid_from(z, e)
        residual = p - y
        grad = np.empty_like(beta)
        grad[0] = residual.sum()
        grad[1:] = XT @ residual
        grad = grad / n + penalty * beta
        if hess is None or last_move >= _REUSE_HESSIAN_BELOW:
            w = p * (1.0 - p)
            hess = np.empty((len(beta), len(beta)))
            hess[0, 0] = w.sum()
            hess[0, 1:] = hess[1:, 0] = XT @ w
            hess[1:, 1:] = _weighted_gram(XT, w)
            hess = hess / n + np.diag(penalty + 1e-12)
        step = np.linalg.solve(hess, grad)
        if np.max(np.abs(step)) < tol or 0.5 * np.dot(grad, step) < tol * 1e-3:
            # Converged: the step (or the decrease the quadratic model predicts for it) is below
            # the stopping threshold, so take it without the line search's pass over the rows.
            beta = beta - step
            break
        dz = step[0] + step[1:] @ XT
        t = 1.0
        while True:                             # backtracking: never accept an increase
            candidate = beta - t * step
            z_candidate = z - t * dz
            loss, e_candidate = _loss_terms(z_candidate, y)
            value = loss + 0.5 * np.dot(penalty, candidate ** 2)
            if value <= objective + 1e-15 or t < 1e-8:
                break
            t *= 0.5
        beta, z, e = candidate, z_candidate, e_candidate
        improvement, objective = objective - value, value
        last_move = np.max(np.abs(t * step))
        if last_move < tol or improvement < tol * 1e-3:
            break
    return beta, it


def probe_scores(model: ProbeModel, X_test) -> np.ndarray:
    """Logits of the fitted probe on ``X_test`` (n x p, same columns as the fit)."""
    X = _as_matrix(X_test, "X_test")
    if X.shape[1] != len(model.coef):
        raise DataError(f"probe: X_test has {X.shape[1]} columns but the probe was fitted on {len(model.coef)}.")
    return model.intercept + ((X - model.mean) / model.scale) @ model.coef


def _folded_scores(beta: np.ndarray, mean: np.ndarray, scale: np.ndarray, *blocks: np.ndarray) -> np.ndarray:
    """Logits ``beta0 + ((X - mean) / scale) @ slopes`` with the standardisation folded into the
    slopes, so the test rows are read once and never copied (equal to :func:`probe_scores` up to
    rounding)."""
    slopes = beta[1:] / scale
    out = np.full(len(blocks[0]), beta[0] - np.dot(mean, slopes))
    start = 0
    for block in blocks:                         # float32 blocks are promoted to float64 exactly
        out += block @ slopes[start:start + block.shape[1]]
        start += block.shape[1]
    return out


def within_user(XT: np.ndarray, users) -> np.ndarray:
    """``XT`` (p x n) with every row centred within each user (the within transformation of a
    fixed-effects model): what is left of a column is how it varies *inside* a user's rows."""
    import pandas as pd

    codes, uniques = pd.factorize(np.asarray(users))
    counts = np.bincount(codes, minlength=len(uniques)).astype(np.float64)
    out = np.empty_like(XT)
    for j, row in enumerate(XT):
        means = np.bincount(codes, weights=row, minlength=len(uniques)) / counts
        np.subtract(row, means[codes], out=out[j])
        # A column constant within every user leaves rounding residue (~1e-16 of its scale), which
        # standardising would blow up into a noise column: clear it, so its slope is exactly 0.
        scale = np.abs(row).max(initial=0.0)
        out[j][np.abs(out[j]) <= 1e-12 * scale] = 0.0
    return out


def _paired_fits(XT: np.ndarray, y: np.ndarray, k: int, l2: float) -> tuple[np.ndarray, np.ndarray]:
    """Optima of the baseline probe (first ``k`` rows of ``XT``) and of the full one, the latter
    warm-started from the former with zero phi slopes (the same logits, so fewer Newton steps)."""
    beta_without, _ = _fit_standardized(XT[:k], y, l2)
    start = np.concatenate((beta_without, np.zeros(XT.shape[0] - k)))
    beta_with, _ = _fit_standardized(XT, y, l2, beta=start)
    return beta_without, beta_with


def probe_gain(base_fit, base_test, phi_fit, phi_test, y_fit, y_test, users_test, users_fit,
               bootstrap: UserResamples | None = None, n_resamples: int = 200, seed: int = 0,
               level: float = 0.95, weighting: str = "users", l2: float = 1e-6,
               return_scores: bool = False) -> dict:
    """Gain of the similarity features phi over the baseline probe, with paired bootstrap intervals.

    ``base_*`` are the baseline columns ([base_logit, controls]; 1-D or n x k), ``phi_*`` the
    similarity features (n x m). Both probes are fitted on the fit rows and scored on the test
    rows. ``bootstrap`` is a :class:`~lis.bootstrap.UserResamples` drawn for ``users_test`` (pass
    the same object for every table so all tables see the same resamples); when None it is
    drawn with ``n_resamples`` and ``seed``.

    Two pairs of probes (docs/science.md, "GAUC gain"): the AUC gain compares *global* probes
    fitted on the columns as they are; the GAUC gain compares *within-user* probes fitted on the
    same columns centred within each user of ``users_fit``, so their slopes are learned from
    how a column varies inside a user's impressions: the only variation a user-averaged AUC can
    see. (A global probe's control slopes fit between-user effects that reorder impressions
    within a user; noise features then partly undo that, a spurious GAUC gain.)

    Returns a flat dict: ``auc_with``, ``auc_without``, ``auc_gain``, ``auc_gain_ci`` ([lo, hi]),
    ``auc_gain_se`` and the same for ``gauc_*``, plus ``n_fit``, ``n_test``, ``n_resamples``,
    ``level``; with ``return_scores`` also the test scores of the global probes
    (``scores_with``, ``scores_without``) and of the within-user ones (``gauc_scores_with``,
    ``gauc_scores_without``).
    """
    base_fit, base_test = _as_matrix(base_fit, "base_fit"), _as_matrix(base_test, "base_test")
    phi_fit, phi_test = _as_matrix(phi_fit, "phi_fit"), _as_matrix(phi_test, "phi_test")
    if len(base_fit) != len(phi_fit) or len(base_test) != len(phi_test):
        raise DataError(
            f"probe: base and phi must have the same rows; fit {len(base_fit)} vs {len(phi_fit)}, "
            f"test {len(base_test)} vs {len(phi_test)}."
        )
    if len(np.asarray(users_fit)) != len(base_fit):
        raise DataError(f"probe: users_fit must hold one user per fit row ({len(base_fit)}); "
                        f"got {len(np.asarray(users_fit))}.")
    y = _check_labels(y_fit, len(base_fit))
    if bootstrap is None:
        bootstrap = user_resamples(users_test, n_resamples, seed)
    k = base_fit.shape[1]
    y_test = np.asarray(y_test)
    with _one_blas_thread():
        # Both probes share the standardised fit columns (a column's mean and scale do not
        # depend on the others): the baseline probe reads the first k rows of the block.
        mean, scale, XT = _standardize(base_fit, phi_fit)
        beta_without, beta_with = _paired_fits(XT, y, k, l2)
        scores = {"scores_without": _folded_scores(beta_without, mean[:k], scale[:k], base_test),
                  "scores_with": _folded_scores(beta_with, mean, scale, base_test, phi_test)}
        # Within-user probes: centring a standardised column within users and re-standardising
        # it is the same column up to a constant per user, which no within-user ranking sees.
        _, w_scale, WT = _standardize(within_user(XT, users_fit).T)
        del XT
        w_without, w_with = _paired_fits(WT, y, k, l2)
        del WT
        # Test scores up to a constant per user (which no within-user ranking sees): the
        # slopes applied to the standardised, uncentred test columns.
        scores["gauc_scores_without"] = _folded_scores(w_without, mean[:k], w_scale[:k] * scale[:k], base_test)
        scores["gauc_scores_with"] = _folded_scores(w_with, mean, w_scale * scale, base_test, phi_test)
        stats = paired_bootstrap(y_test, scores["scores_with"], scores["scores_without"], resamples=bootstrap,
                                 level=level, weighting=weighting, metrics=("auc",))
        stats |= paired_bootstrap(y_test, scores["gauc_scores_with"], scores["gauc_scores_without"],
                                  resamples=bootstrap, level=level, weighting=weighting, metrics=("gauc",))
    out = {"n_fit": int(len(base_fit)), "n_test": int(len(base_test)), "n_resamples": len(bootstrap),
           "level": level}
    for metric, values in stats.items():
        out[f"{metric}_with"] = values["with"]
        out[f"{metric}_without"] = values["without"]
        out[f"{metric}_gain"] = values["gain"]
        out[f"{metric}_gain_ci"] = values["gain_ci"]
        out[f"{metric}_gain_se"] = values["gain_se"]
    if return_scores:
        out.update(scores)
    return out
