"""Exact ranking metrics: AUC, per-user AUC and GAUC, from one sort of a score vector.

* :func:`auc` — exact ROC AUC (Mann-Whitney with tie-averaged ranks: a tied positive/negative
  pair counts one half). Positives and negatives are sorted once each and every positive's
  negative count is read by ``searchsorted``; equals ``sklearn.metrics.roc_auc_score``.
* :func:`gauc` — user-averaged AUC over the users that have both labels. The default is the
  *unweighted* mean (every eligible user counts once, docs/science.md "Metrics");
  ``weighting="impressions"`` weights each user by its impression count. Computed from one sort
  of the negatives by score and one integer sort by (user, rank) — never a per-user Python loop.
* :class:`_ScoreOrder` — the one sort of a score vector that the point AUC, the per-user AUCs
  and the bootstrap (:mod:`lis.bootstrap`) all share.

Limits: scores must be finite-or-infinite floats (NaN is a :class:`DataError`); labels 0/1.
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

    One sort of the negatives by score (:class:`_ScoreOrder`) fixes, for every positive, the
    global ranges of negatives below / not above it; the count of its *own user's* negatives in
    those ranges is then one ``searchsorted`` in the integer keys ``user * stride + rank`` (see
    :meth:`_ScoreOrder.per_user`). Integer counts keep every per-user AUC exact.
    """
    return _ScoreOrder(codes, labels, scores).per_user(n_users)


def gauc(users, labels, scores, weighting: str = "users") -> float:
    """Group AUC: mean of per-user AUCs over users that have both a positive and a negative.

    ``weighting="users"`` (default, docs/science.md section 5) gives each eligible user weight 1;
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


class _ScoreOrder:
    """The one sort of a score vector that its point AUC, per-user AUCs and bootstrap all share.

    Negatives are ordered by score; ``left[i]`` / ``right[i]`` are the numbers of negatives
    strictly below / not above positive ``i`` (``searchsorted``). Ties among negatives need no
    stable order: every count is read at a tie group's boundary.
    """

    def __init__(self, codes: np.ndarray, labels: np.ndarray, scores: np.ndarray):
        neg_scores = scores[~labels]
        order = np.argsort(neg_scores)
        sorted_neg = neg_scores[order]
        self.neg_users = codes[~labels][order]
        # Positives in score order too: sorted queries make searchsorted walk the negatives
        # sequentially (4x faster), and left/right come out sorted for resample_operators.
        pos_scores = scores[labels]
        pos_order = np.argsort(pos_scores)
        self.pos_users = codes[labels][pos_order]
        self.left = np.searchsorted(sorted_neg, pos_scores[pos_order], "left")
        self.right = np.searchsorted(sorted_neg, pos_scores[pos_order], "right")

    def auc(self) -> float:
        """Unweighted AUC; the same integers and the same division as :func:`auc`."""
        n_pos, n_neg = len(self.pos_users), len(self.neg_users)
        twice = self.left.sum() + self.right.sum()
        return float(twice / (2.0 * n_pos * n_neg))

    def per_user(self, n_users: int) -> PerUserAuc:
        """Per-user AUCs. A positive's count of its own user's negatives below it is the number
        of keys ``user * stride + rank`` under ``own_user * stride + left`` (stride > any rank),
        minus the negatives of all earlier users: one integer sort and one ``searchsorted``."""
        n_pos = np.bincount(self.pos_users, minlength=n_users).astype(np.int64)
        n_neg = np.bincount(self.neg_users, minlength=n_users).astype(np.int64)
        stride = len(self.neg_users) + 1
        keys = self.neg_users * stride + np.arange(len(self.neg_users))
        if n_users <= np.iinfo(np.uint16).max:
            # A stable radix sort by user (O(n)) keeps rank order within a user: sorted keys.
            keys = keys[np.argsort(self.neg_users.astype(np.uint16), kind="stable")]
        else:
            keys = np.sort(keys)
        own = self.pos_users * stride
        # Sorted queries (each carries its user: query // stride) make searchsorted sequential.
        queries = np.sort(np.concatenate((own + self.left, own + self.right)))
        query_users = queries // stride
        neg_before_user = np.concatenate(([0], np.cumsum(n_neg)[:-1]))
        below = np.searchsorted(keys, queries) - neg_before_user[query_users]
        numerator = np.bincount(query_users, weights=below.astype(np.float64), minlength=n_users) / 2.0
        with np.errstate(invalid="ignore", divide="ignore"):
            per_user = numerator / (n_pos * n_neg)
        per_user[~((n_pos > 0) & (n_neg > 0))] = np.nan
        return PerUserAuc(per_user, n_pos, n_neg)

    def resample_operators(self, n_users: int, dtype=np.float64):
        """Sparse ``(S, Q)`` of ``dtype`` with ``twice(w) = sum_k cumsum(S @ w)[k] * (Q @ w)[k]``.

        ``twice(w)`` is the weighted Mann-Whitney count (x2) for user weights w (the reference
        loop is ``WeightedAuc`` in tests/lis/test_bootstrap.py): the sum over positives i of w[user i] * (cum[left_i] + cum[right_i]), cum
        being the running sum of the sorted negatives' user weights. cum is only ever read at
        the distinct values ``reads`` of left/right, so the negatives fall into segments between
        consecutive reads: row k of S counts the users of segment k (a CSR matrix whose index
        arrays are just the sorted negatives' users and the reads: nothing to sort), and row k
        of Q counts the users of the positives reading cum at reads[k] (2 for a positive whose
        left = right). A batch of resamples is then two sparse x dense products with the
        (n_users x batch) weight matrix.
        """
        import scipy.sparse as sp

        # The distinct read positions and each read's row, by marking them: O(n), no sort.
        read = np.zeros(len(self.neg_users) + 1, dtype=bool)
        read[self.left] = True
        read[self.right] = True
        reads = np.flatnonzero(read)
        row_of = np.cumsum(read) - 1
        n_reads = len(reads)
        indptr = np.concatenate(([0], reads))
        indices = self.neg_users[: reads[-1]].astype(np.int32)
        S = sp.csr_matrix((np.ones(len(indices), dtype), indices, indptr), shape=(n_reads, n_users))
        # Entries of Q: a positive without a tied negative reads one point twice (one entry of
        # 2), a tied one reads two points. Left reads then right reads, each already sorted
        # (positives are in score order), so the stable sort is a single merge of two runs.
        tied = self.right != self.left
        rows = np.concatenate((row_of[self.left], row_of[self.right[tied]]))
        data = np.concatenate((np.where(tied, 1.0, 2.0), np.ones(int(tied.sum())))).astype(dtype)
        users = np.concatenate((self.pos_users, self.pos_users[tied]))
        order = np.argsort(rows, kind="stable")
        q_indptr = np.concatenate(([0], np.cumsum(np.bincount(rows, minlength=n_reads))))
        Q = sp.csr_matrix((data[order], users[order].astype(np.int32), q_indptr), shape=(n_reads, n_users))
        return S, Q
