"""Exact AUC and GAUC with Poisson-bootstrap intervals from mergeable statistics.

GAUC: per-user AUCs are computed inside each block (users never span blocks) by the in-memory
:func:`lis.metrics.per_user_auc`; a block returns its weighted sums, and per resample ``b`` the
sums ``sum_u c_bu w_u d_u`` and ``sum_u c_bu w_u`` with ``c_bu`` the user's Poisson weight
(:func:`lis.resample.poisson_weights`, the weights the in-memory engine draws too).

AUC: the test rows of both score vectors are shuffled into score ranges (bounds from a sample;
equal scores always share a range), each range sorts its rows and returns, per resample,
its positive weight P, negative weight N and its own Mann-Whitney count (x2); the driver adds
``2 * P_r * (N of all lower ranges)``. Every count is an integer held exactly in float64, so
each resample's AUC is the same float as in memory; no binning anywhere.
"""
from __future__ import annotations

import numpy as np

from lis.bootstrap import MIN_USERS, MIN_USERS_WITH_BOTH_LABELS
from lis.errors import DataError
from lis.metrics import per_user_auc
from lis.resample import poisson_weights

# Rows per chunk inside a range: keeps the (B x chunk) weight block near 16 MB at B = 200.
_CHUNK_ROWS = 8192


def gauc_block(labels, codes, keys, s_with, s_without, n_resamples: int, seed: int) -> dict:
    """A block's GAUC sums ('users' weighting); ``s_without`` may be None (point only)."""
    n_users = len(keys)
    stats_w = per_user_auc(codes, n_users, labels, s_with)
    weight = stats_w.weights("users")
    out = {"w": weight.sum(), "pw": np.dot(weight, np.nan_to_num(stats_w.auc)), "eligible": int(stats_w.eligible.sum()),
           "users": n_users}
    if s_without is not None:
        stats_wo = per_user_auc(codes, n_users, labels, s_without)
        out["pwo"] = np.dot(weight, np.nan_to_num(stats_wo.auc))
        counts = poisson_weights(keys, n_resamples, seed).astype(np.float64)
        out["num"] = counts @ (weight * np.nan_to_num(stats_w.auc - stats_wo.auc))
        out["den"] = counts @ weight
    return out


def merge(parts: list[dict]) -> dict:
    out = {}
    for part in parts:
        for key, value in part.items():
            out[key] = out[key] + value if key in out else value
    return out


def range_stats(scores: np.ndarray, labels: np.ndarray, keys: np.ndarray, n_resamples: int, seed: int):
    """(P, N, twice) of one score range, each (1 + n_resamples,): row 0 unweighted, then resamples."""
    order = np.argsort(scores, kind="stable")
    scores, labels, keys = scores[order], labels[order], keys[order]
    n = len(scores)
    P, N, twice = (np.zeros(1 + n_resamples) for _ in range(3))
    if n == 0:
        return P, N, twice
    group_start = np.flatnonzero(np.r_[True, scores[1:] != scores[:-1]])
    lo = 0
    while lo < n:
        # Cut at a tie-group boundary so a group never spans two chunks.
        j = int(np.searchsorted(group_start, lo + _CHUNK_ROWS, "right")) - 1   # last group start <= lo + chunk
        if lo + _CHUNK_ROWS >= n:
            hi = n
        elif group_start[j] > lo:
            hi = int(group_start[j])
        else:                                   # one tie group longer than a chunk
            hi = int(group_start[j + 1]) if j + 1 < len(group_start) else n
        unique, inverse = np.unique(keys[lo:hi], return_inverse=True)
        weights = np.vstack((np.ones(len(unique)), poisson_weights(unique, n_resamples, seed)))[:, inverse]
        pos = labels[lo:hi].astype(bool)
        starts = group_start[(group_start >= lo) & (group_start < hi)] - lo
        neg_w = np.add.reduceat(np.where(pos, 0.0, weights), starts, axis=1)
        pos_w = np.add.reduceat(np.where(pos, weights, 0.0), starts, axis=1)
        below = N[:, None] + np.cumsum(neg_w, axis=1) - neg_w
        twice += np.einsum("bg,bg->b", pos_w, 2.0 * below + neg_w)
        N += neg_w.sum(axis=1)
        P += pos_w.sum(axis=1)
        lo = hi
    return P, N, twice


def auc_from_ranges(parts: list) -> np.ndarray:
    """AUCs (row 0 point, then resamples) from ``[(range, P, N, twice), ...]`` of one score vector."""
    parts = sorted(parts, key=lambda part: part[0])
    P_total = np.sum([p[1] for p in parts], axis=0)
    N_total = np.sum([p[2] for p in parts], axis=0)
    twice = np.zeros_like(P_total)
    lower = np.zeros_like(P_total)
    for _, P, N, within in parts:
        twice += within + 2.0 * P * lower
        lower += N
    denom = 2.0 * P_total * N_total
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, twice / denom, np.nan)


def check_users(n_users: int, both: int, what: str) -> None:
    """:func:`lis.bootstrap.check_bootstrap_users` from counts aggregated on the cluster."""
    if n_users < MIN_USERS or both < MIN_USERS_WITH_BOTH_LABELS:
        raise DataError(
            f"{what}: {n_users} user(s), {both} with both an engaged and a non-engaged impression; a bootstrap "
            f"over users needs at least {MIN_USERS} users and {MIN_USERS_WITH_BOTH_LABELS} with both labels "
            "(use a longer log or a larger evaluation window)."
        )


def interval(diffs: np.ndarray, level: float) -> tuple[list[float], float]:
    """Percentile interval and standard error of the finite resample differences (as in memory)."""
    diffs = diffs[np.isfinite(diffs)]
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(diffs, [alpha, 1.0 - alpha]) if len(diffs) else (np.nan, np.nan)
    return [float(lo), float(hi)], float(diffs.std(ddof=1)) if len(diffs) > 1 else np.nan
