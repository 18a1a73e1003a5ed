"""The LIS probe on blocks: Newton steps on distributed sums, then exact metrics.

The same estimator as :func:`lis.probe.probe_gain`: global probes (AUC gain) and within-user
probes (GAUC gain) on [base_logit, controls] without and with phi, each a logistic regression
on standardised columns with the same tiny L2 on the slopes, fitted on probe-fit rows. Each
Newton iteration is one pass over the blocks returning the loss, gradient and Hessian sums
(p <= 7 columns: a few hundred bytes per block); a backtracking step never increases the
penalised loss. The optimum is unique, so both engines land on it to ~1e-10, and the scores,
AUCs and intervals agree to far better than 1e-6. Standardisation and within-user centring
(users never span blocks) are sums too; the rounding residue of a column constant within
users is cleared against its global maximum, as in memory.
"""
from __future__ import annotations

import numpy as np

from lis.probe import _folded_scores, _loss_terms, _sigmoid_from, _weighted_gram
from lis.spark import metrics

_MAX_ITER, _TOL, _L2 = 100, 1e-10, 1e-6


def _within(XT: np.ndarray, codes: np.ndarray) -> np.ndarray:
    counts = np.bincount(codes).astype(np.float64)
    out = np.empty_like(XT)
    for j, row in enumerate(XT):
        out[j] = row - (np.bincount(codes, weights=row, minlength=len(counts)) / counts)[codes]
    return out


def _stats(XT: np.ndarray, y: np.ndarray, beta: np.ndarray):
    """Loss, gradient and Hessian sums of the logistic loss at ``beta`` on columns ``XT``."""
    z = beta[0] + beta[1:] @ XT
    loss, e = _loss_terms(z, y)
    p = _sigmoid_from(z, e)
    residual, w = p - y, p * (1.0 - p)
    grad = np.concatenate(([residual.sum()], XT @ residual))
    hess = np.empty((len(beta), len(beta)))
    hess[0, 0] = w.sum()
    hess[0, 1:] = hess[1:, 0] = XT @ w
    hess[1:, 1:] = _weighted_gram(XT, w)
    return loss * len(y), grad, hess


def _pass(rdd, points: list):
    """One job: the sums of :func:`_stats` at every ``(key, rows, beta)`` of ``points``."""
    def local(block):
        return [_stats(block[key][:rows], block["y"], beta) for key, rows, beta in points]
    parts = rdd.map(local).collect()
    return [tuple(np.sum([part[j][m] for part in parts], axis=0) for m in range(3)) for j in range(len(points))]


class _Fit:
    """One damped Newton fit (the in-memory rules: backtracking, same stopping tests)."""

    def __init__(self, key: str, rows: int, beta: np.ndarray, n: int):
        self.key, self.rows, self.n = key, rows, n
        self.penalty = np.full(rows + 1, _L2)
        self.penalty[0] = 0.0
        self.beta, self.candidate, self.t, self.step = None, np.array(beta, dtype=np.float64), 1.0, None
        self.done, self.iterations = False, 0

    def value(self, loss: float, beta: np.ndarray) -> float:
        return loss / self.n + 0.5 * np.dot(self.penalty, beta ** 2)

    def update(self, loss, grad, hess) -> None:
        """Take the evaluated candidate's sums; set the next candidate or finish."""
        value = self.value(loss, self.candidate)
        if self.beta is not None and not (value <= self.objective + 1e-15 or self.t < 1e-8):
            self.t *= 0.5                                   # backtrack
            self.candidate = self.beta - self.t * self.step
            return
        if self.beta is not None:
            improvement, moved = self.objective - value, np.max(np.abs(self.t * self.step))
        self.beta, self.objective, self.grad, self.hess = self.candidate, value, grad, hess
        self.iterations += 1
        if self.iterations > 1 and (moved < _TOL or improvement < _TOL * 1e-3) or self.iterations > _MAX_ITER:
            self.done = True
            return
        g = grad / self.n + self.penalty * self.beta
        step = np.linalg.solve(hess / self.n + np.diag(self.penalty + 1e-12), g)
        if np.max(np.abs(step)) < _TOL or 0.5 * np.dot(g, step) < _TOL * 1e-3:
            self.beta, self.done = self.beta - step, True
            return
        self.step, self.t = step, 1.0
        self.candidate = self.beta - step


def newton_many(rdd, fits: list[_Fit]) -> list[np.ndarray]:
    """Run several fits side by side: each pass over the blocks serves every unfinished fit."""
    while True:
        active = [fit for fit in fits if not fit.done]
        if not active:
            return [fit.beta for fit in fits]
        for fit, sums in zip(active, _pass(rdd, [(f.key, f.rows, f.candidate) for f in active])):
            fit.update(*sums)


def _paired(rdd, k: int, p: int, n: int, rate: float):
    """Baseline (first k columns) and full probes, global ('XT') and within-user ('WT'). Both
    start at the base rate (the in-memory full fit starts at the baseline's optimum: the same
    unique optimum, reached here in the same passes as the baseline)."""
    start = np.zeros(p + 1)
    start[0] = np.log(rate / (1.0 - rate))
    fits = [_Fit(key, rows, start[:rows + 1], n) for key in ("XT", "WT") for rows in (k, p)]
    return newton_many(rdd, fits)


def probe_gain(columns, k: int, p: int, n_resamples: int, seed: int, level: float = 0.95) -> dict:
    """``columns``: RDD of dicts with ``X`` (n x p float64: ``k`` base columns, then phi), ``y``,
    ``is_test``, ``users`` (local codes), ``keys`` (uint64 per local user).
    Returns the flat dict of :func:`lis.probe.probe_gain` (without the score vectors)."""
    from pyspark import StorageLevel

    columns = columns.persist(StorageLevel.MEMORY_AND_DISK)

    def fit_rows(b):
        keep = ~b["is_test"]
        return np.ascontiguousarray(b["X"][keep].T), b["y"][keep].astype(np.float64), b["users"][keep]
    # Pass 1: means, rows, positives; pass 2: scales and each column's largest deviation.
    parts = columns.map(lambda b: (lambda XT, y, u: (XT.sum(axis=1), len(y), y.sum()))(*fit_rows(b))).collect()
    n = sum(q[1] for q in parts)
    mean, rate = np.sum([q[0] for q in parts], axis=0) / n, sum(q[2] for q in parts) / n

    def spread(b):
        XT = fit_rows(b)[0] - mean[:, None]
        return (XT ** 2).sum(axis=1), np.abs(XT).max(axis=1, initial=0.0)
    parts = columns.map(spread).collect()
    scale = np.sqrt(np.sum([q[0] for q in parts], axis=0) / n)
    scale[scale == 0] = 1.0
    peak = np.max([q[1] for q in parts], axis=0) / scale

    def standardised(b):
        XT, y, users = fit_rows(b)
        XT = (XT - mean[:, None]) / scale[:, None]
        WT = _within(XT, np.unique(users, return_inverse=True)[1])
        WT[np.abs(WT) <= 1e-12 * peak[:, None]] = 0.0      # rounding residue, as in memory
        return {"XT": XT, "WT": WT, "y": y}
    fit = columns.map(standardised).filter(lambda b: len(b["y"]) > 0).persist(StorageLevel.MEMORY_AND_DISK)
    parts = fit.map(lambda b: (b["WT"].sum(axis=1), (b["WT"] ** 2).sum(axis=1))).collect()
    w_mean = np.sum([q[0] for q in parts], axis=0) / n
    w_scale = np.sqrt(np.maximum(np.sum([q[1] for q in parts], axis=0) / n - w_mean ** 2, 0.0))
    w_scale[w_scale == 0] = 1.0
    fit = fit.map(lambda b: b | {"WT": (b["WT"] - w_mean[:, None]) / w_scale[:, None]})
    fit = fit.persist(StorageLevel.MEMORY_AND_DISK)
    g_without, g_with, w_without, w_with = _paired(fit, k, p, n, rate)
    fit.unpersist()

    def scores(block):
        X = block["X"][block["is_test"]]
        base, phi = X[:, :k], X[:, k:]
        return {"labels": block["y"][block["is_test"]].astype(bool),
                "codes": block["users"][block["is_test"]], "keys": block["keys"],
                "auc": (_folded_scores(g_with, mean, scale, base, phi), _folded_scores(g_without, mean[:k], scale[:k], base)),
                "gauc": (_folded_scores(w_with, mean, w_scale * scale, base, phi),
                         _folded_scores(w_without, mean[:k], w_scale[:k] * scale[:k], base))}
    test = columns.map(scores).persist(StorageLevel.MEMORY_AND_DISK)
    out = {"n_fit": int(n), "n_resamples": n_resamples, "level": level}
    out |= gauc_gain(test, n_resamples, seed, level)
    out |= auc_gain(test, n_resamples, seed, level)
    test.unpersist()
    columns.unpersist()
    return out


def gauc_gain(test, n_resamples: int, seed: int, level: float) -> dict:
    def local(block):
        codes = np.unique(block["codes"], return_inverse=True)
        keys = block["keys"][codes[0]]
        return metrics.gauc_block(block["labels"], codes[1], keys, *block["gauc"], n_resamples, seed) | {
            "n_test": len(block["labels"])}
    sums = metrics.merge(test.map(local).collect())
    with_, without = sums["pw"] / sums["w"], sums["pwo"] / sums["w"]
    with np.errstate(invalid="ignore", divide="ignore"):
        diffs = np.where(sums["den"] > 0, sums["num"] / sums["den"], np.nan)
    ci, se = metrics.interval(diffs, level)
    return {"n_test": int(sums["n_test"]), "gauc_with": with_, "gauc_without": without, "gauc_gain": with_ - without, "gauc_gain_ci": ci,
            "gauc_gain_se": se}


def auc_gain(test, n_resamples: int, seed: int, level: float) -> dict:
    aucs = exact_aucs(test, "auc", n_resamples, seed)
    with_, without = aucs[0], aucs[1]
    ci, se = metrics.interval(with_[1:] - without[1:], level)
    return {"auc_with": float(with_[0]), "auc_without": float(without[0]), "auc_gain": float(with_[0] - without[0]),
            "auc_gain_ci": ci, "auc_gain_se": se}


def exact_aucs(test, field: str, n_resamples: int, seed: int, vectors: int = 2) -> list[np.ndarray]:
    """Per score vector of ``block[field]`` (a tuple of ``vectors``): AUC of row 0 (point) and of
    every resample."""
    sample = np.concatenate(test.map(lambda b: np.sort(b[field][0])[::64]).collect())
    n_ranges = max(1, test.getNumPartitions())
    bounds = np.unique(np.quantile(sample, np.linspace(0, 1, n_ranges + 1)[1:-1])) if len(sample) else np.zeros(0)

    def split(block):
        keys = block["keys"][block["codes"]]
        for v in range(vectors):
            scores = block[field][v]
            where = np.searchsorted(bounds, scores, "right")
            for r in np.unique(where):
                mask = where == r
                yield (v, int(r)), (scores[mask], block["labels"][mask], keys[mask])

    def reduce(item):
        (v, r), parts = item
        parts = list(parts)
        P, N, twice = metrics.range_stats(np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]),
                                          np.concatenate([p[2] for p in parts]), n_resamples, seed)
        return v, (r, P, N, twice)
    stats = test.flatMap(split).groupByKey(numPartitions=max(1, n_ranges)).map(reduce).collect()
    return [metrics.auc_from_ranges([s for v_, s in stats if v_ == v]) for v in range(vectors)]
