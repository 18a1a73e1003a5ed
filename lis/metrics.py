"""Exact ranking metrics and the paired user bootstrap the LIS probe reports.

* :func:`auc` — exact ROC AUC (Mann-Whitney with tie-averaged ranks: a tied positive/negative
  pair counts one half). Positives and negatives are sorted once each and every positive's
  negative count is read by ``searchsorted``; equals ``sklearn.metrics.roc_auc_score``.
* :func:`gauc` — user-averaged AUC over the users that have both labels. The default is the
  *unweighted* mean (every eligible user counts once, DESIGN section 1); ``weighting="impressions"``
  weights each user by its impression count. Computed with one sort per class by the key
  (user, score) — never a per-user Python loop.
* :func:`paired_bootstrap` — percentile interval of metric(with) - metric(without) over users
  resampled with replacement; both score vectors see the same resamples (paired). Resamples are
  an explicit :class:`UserResamples` object so an evaluator can draw them once and reuse them
  for every table it scores.

Limits: scores must be finite-or-infinite floats (NaN is a :class:`DataError`); labels 0/1.
Sample weights other than user resample counts are not supported.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from lis.errors import DataError, describe_value

GAUC_WEIGHTINGS = ("users", "impressions")


# --------------------------------------------------------------------------- input checks
def _check_inputs(labels, scores, what: str) -> tuple[np.ndarray, np.ndarray]:
    labels = np.asarray(labels)
    scores = np.asarray(scores, dtype=np.float64)
    if labels.ndim != 1 or scores.ndim != 1 or len(labels) != len(scores):
        raise DataError(
            f"{what}: labels and scores must be 1-D arrays of equal length; got shapes "
            f"{labels.shape} and {scores.shape}."
        )
    if len(labels) == 0:
        raise DataError(f"{what}: no impressions (empty labels and scores).")
    if labels.dtype != bool:
        bad = (labels != 0) & (labels != 1)
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise DataError(f"{what}: labels must be 0 or 1; row {row} holds {describe_value(labels[row].item())}.")
        labels = labels == 1
    nan = np.isnan(scores)
    if nan.any():
        raise DataError(f"{what}: scores must not be NaN; row {int(np.flatnonzero(nan)[0])} is NaN.")
    return labels, scores


def _user_codes(users, n: int, what: str) -> tuple[np.ndarray, int]:
    """Dense int64 codes 0..n_users-1 of any hashable user ids (order of first appearance)."""
    users = np.asarray(users)
    if users.ndim != 1 or len(users) != n:
        raise DataError(f"{what}: users must be 1-D with one entry per impression ({n}); got shape {users.shape}.")
    codes, uniques = pd.factorize(users)
    if (codes < 0).any():
        row = int(np.flatnonzero(codes < 0)[0])
        raise DataError(f"{what}: users must not be missing; row {row} holds {describe_value(users[row])}.")
    return codes.astype(np.int64), len(uniques)


# --------------------------------------------------------------------------- AUC
def auc(labels, scores) -> float:
    """Exact ROC AUC of ``scores`` for binary ``labels`` (ties count 1/2).

    One sort of the positives' and one of the negatives' scores; for each positive the number
    of negatives below it (``searchsorted`` left) and not above it (right) gives its
    tie-averaged Mann-Whitney count. Integer counts keep the result exact.
    Raises :class:`DataError` for empty input or when only one class is present.
    """
    labels, scores = _check_inputs(labels, scores, "auc")
    pos = np.sort(scores[labels])
    neg = np.sort(scores[~labels])
    if len(pos) == 0 or len(neg) == 0:
        raise DataError(
            f"auc: needs both labels; got {len(pos)} positives and {len(neg)} negatives "
            f"among {len(labels)} impressions."
        )
    # Queries are sorted, so searchsorted walks the negatives almost sequentially.
    twice = np.searchsorted(neg, pos, "left").sum() + np.searchsorted(neg, pos, "right").sum()
    return float(twice / (2.0 * len(pos) * len(neg)))


# --------------------------------------------------------------------------- GAUC
@dataclass(frozen=True)
class PerUserAuc:
    """Per-user AUC (NaN where a user lacks a class) and the per-user class counts."""

    auc: np.ndarray        # (n_users,) float64
    n_pos: np.ndarray      # (n_users,) int64
    n_neg: np.ndarray      # (n_users,) int64

    @property
    def eligible(self) -> np.ndarray:
        return (self.n_pos > 0) & (self.n_neg > 0)

    def weights(self, weighting: str) -> np.ndarray:
        """Weight of each user in the GAUC mean (0 for users without both labels)."""
        if weighting not in GAUC_WEIGHTINGS:
            raise DataError(f"gauc: weighting must be one of {GAUC_WEIGHTINGS}; got {weighting!r}.")
        base = np.ones(len(self.auc)) if weighting == "users" else (self.n_pos + self.n_neg).astype(np.float64)
        return np.where(self.eligible, base, 0.0)


def per_user_auc(codes: np.ndarray, n_users: int, labels: np.ndarray, scores: np.ndarray) -> PerUserAuc:
    """AUC of every user from integer user ``codes`` (0..n_users-1), boolean labels, float scores.

    The complex key ``user + i*score`` sorts lexicographically by (user, score) in one exact
    ``np.sort`` per class (no precision lost: user codes < 2**53 are exact in float64). A
    positive's count of lower negatives in its own user is then a ``searchsorted`` minus the
    number of negatives of all earlier users.
    """
    n_pos = np.bincount(codes[labels], minlength=n_users).astype(np.int64)
    n_neg = np.bincount(codes[~labels], minlength=n_users).astype(np.int64)
    pos_key = np.sort(_complex_key(codes[labels], scores[labels]))
    neg_key = np.sort(_complex_key(codes[~labels], scores[~labels]))
    below = np.searchsorted(neg_key, pos_key, "left") + np.searchsorted(neg_key, pos_key, "right")
    neg_before_user = np.concatenate(([0], np.cumsum(n_neg)[:-1]))
    sorted_pos_users = pos_key.real.astype(np.int64)
    twice = below - 2 * neg_before_user[sorted_pos_users]
    numerator = np.bincount(sorted_pos_users, weights=twice.astype(np.float64), minlength=n_users) / 2.0
    with np.errstate(invalid="ignore", divide="ignore"):
        per_user = numerator / (n_pos * n_neg)
    per_user[~((n_pos > 0) & (n_neg > 0))] = np.nan
    return PerUserAuc(per_user, n_pos, n_neg)


def _complex_key(codes: np.ndarray, scores: np.ndarray) -> np.ndarray:
    # Set the parts directly: ``codes + 1j * scores`` would turn an infinite score into a NaN real part.
    key = np.empty(len(codes), dtype=np.complex128)
    key.real = codes
    key.imag = scores
    return key


def gauc(users, labels, scores, weighting: str = "users") -> float:
    """Group AUC: mean of per-user AUCs over users that have both a positive and a negative.

    ``weighting="users"`` (default, DESIGN section 1) gives each eligible user weight 1;
    ``"impressions"`` weights a user by its number of impressions. Users with a single class
    are excluded. Raises :class:`DataError` for empty input or when no user has both labels.
    """
    labels, scores = _check_inputs(labels, scores, "gauc")
    codes, n_users = _user_codes(users, len(labels), "gauc")
    stats = per_user_auc(codes, n_users, labels, scores)
    return _gauc_from_stats(stats, weighting)


def _gauc_from_stats(stats: PerUserAuc, weighting: str) -> float:
    weights = stats.weights(weighting)
    if weights.sum() == 0:
        raise DataError(
            f"gauc: no user has both a positive and a negative impression "
            f"({len(stats.auc)} users, {int(stats.n_pos.sum())} positives, {int(stats.n_neg.sum())} negatives)."
        )
    return float(np.dot(weights, np.nan_to_num(stats.auc)) / weights.sum())


# --------------------------------------------------------------------------- bootstrap
@dataclass(frozen=True)
class UserResamples:
    """Bootstrap resamples of users, drawn once and reused for every table scored.

    ``codes[i]`` is the user (0..n_users-1) of impression ``i``; ``counts[b, u]`` is how often
    user ``u`` is drawn in resample ``b`` (multinomial, n_users draws). Built by
    :func:`user_resamples`.
    """

    codes: np.ndarray      # (n,) int64
    counts: np.ndarray     # (B, n_users) int64
    seed: int

    @property
    def n_users(self) -> int:
        return int(self.counts.shape[1])

    def __len__(self) -> int:
        return int(self.counts.shape[0])


def user_resamples(users, n_resamples: int = 200, seed: int = 0) -> UserResamples:
    """Draw ``n_resamples`` bootstrap resamples of the distinct ``users`` (seeded, deterministic)."""
    users = np.asarray(users)
    if len(users) == 0:
        raise DataError("bootstrap: no impressions to resample (empty users).")
    if n_resamples < 1:
        raise DataError(f"bootstrap: n_resamples must be >= 1; got {n_resamples}.")
    codes, n_users = _user_codes(users, len(users), "bootstrap")
    rng = np.random.default_rng(seed)
    counts = rng.multinomial(n_users, np.full(n_users, 1.0 / n_users), size=n_resamples).astype(np.int64)
    return UserResamples(codes, counts, int(seed))


class _WeightedAuc:
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


def paired_bootstrap(
    labels,
    scores_with,
    scores_without,
    users=None,
    resamples: UserResamples | None = None,
    n_resamples: int = 200,
    seed: int = 0,
    level: float = 0.95,
    metrics=("auc", "gauc"),
    weighting: str = "users",
) -> dict:
    """Point estimates and a paired bootstrap interval of metric(with) - metric(without).

    Users are resampled with replacement (``resamples`` if given — it must have been drawn for
    the same impressions — else drawn from ``users`` with ``n_resamples`` and ``seed``); both
    score vectors are evaluated on the same resamples. For AUC a resample weights every
    impression by its user's draw count; for GAUC the per-user AUCs are fixed and a resample is
    a weighted mean of them. The interval is the percentile interval at ``level``.

    Returns ``{metric: {"with", "without", "gain", "gain_ci": [lo, hi], "gain_se"}}``.
    Resamples in which a metric is undefined (e.g. no eligible user) are skipped.
    """
    labels, scores_with = _check_inputs(labels, scores_with, "bootstrap")
    _, scores_without = _check_inputs(labels, scores_without, "bootstrap")
    if len(scores_with) != len(scores_without):
        raise DataError("bootstrap: scores_with and scores_without must have the same length.")
    if resamples is None:
        if users is None:
            raise DataError("bootstrap: pass users or precomputed resamples.")
        resamples = user_resamples(users, n_resamples, seed)
    if len(resamples.codes) != len(labels):
        raise DataError(
            f"bootstrap: resamples were drawn for {len(resamples.codes)} impressions but "
            f"{len(labels)} labels were given."
        )
    alpha = (1.0 - level) / 2.0
    out = {}
    for metric in metrics:
        if metric == "auc":
            point_w, point_wo = auc(labels, scores_with), auc(labels, scores_without)
            diffs = _auc_resample_diffs(resamples, labels, scores_with, scores_without)
        elif metric == "gauc":
            stats_w = per_user_auc(resamples.codes, resamples.n_users, labels, scores_with)
            stats_wo = per_user_auc(resamples.codes, resamples.n_users, labels, scores_without)
            point_w, point_wo = _gauc_from_stats(stats_w, weighting), _gauc_from_stats(stats_wo, weighting)
            diffs = _gauc_resample_diffs(resamples, stats_w, stats_wo, weighting)
        else:
            raise DataError(f"bootstrap: unknown metric {metric!r}; expected 'auc' or 'gauc'.")
        diffs = diffs[np.isfinite(diffs)]
        lo, hi = (np.quantile(diffs, [alpha, 1.0 - alpha]) if len(diffs) else (np.nan, np.nan))
        out[metric] = {
            "with": point_w,
            "without": point_wo,
            "gain": point_w - point_wo,
            "gain_ci": [float(lo), float(hi)],
            "gain_se": float(diffs.std(ddof=1)) if len(diffs) > 1 else np.nan,
        }
    return out


def _auc_resample_diffs(resamples, labels, scores_with, scores_without) -> np.ndarray:
    with_auc = _WeightedAuc(resamples.codes, labels, scores_with)
    without_auc = _WeightedAuc(resamples.codes, labels, scores_without)
    return np.array([with_auc(c) - without_auc(c) for c in resamples.counts])


def _gauc_resample_diffs(resamples, stats_w: PerUserAuc, stats_wo: PerUserAuc, weighting) -> np.ndarray:
    # Eligibility depends on labels only, so it is the same for both score vectors.
    weights = resamples.counts * stats_w.weights(weighting)[None, :]
    total = weights.sum(axis=1)
    diff = np.nan_to_num(stats_w.auc - stats_wo.auc)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, weights @ diff / total, np.nan)
