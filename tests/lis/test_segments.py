"""Segments too small for an interval are n/a with the reason, never a zero-width interval."""
from __future__ import annotations

import numpy as np

from lis.segments import MIN_EACH_LABEL, MIN_IMPRESSIONS, MIN_USERS, segment_gains, too_small


def sample(n, positives, n_users):
    labels = np.zeros(n, dtype=np.int8)
    labels[:positives] = 1
    users = np.array([f"u{k % n_users}" for k in range(n)])
    return labels, users


def test_each_minimum_is_named():
    assert too_small(*sample(MIN_IMPRESSIONS, MIN_EACH_LABEL, MIN_USERS)) is None
    assert f"a segment needs {MIN_IMPRESSIONS}" in too_small(*sample(MIN_IMPRESSIONS - 1, 40, 20))
    assert f"needs {MIN_EACH_LABEL} of each" in too_small(*sample(200, MIN_EACH_LABEL - 1, 20))
    assert f"needs {MIN_USERS} for an interval" in too_small(*sample(200, 50, MIN_USERS - 1))


def test_gains_are_n_a_below_the_minimum_and_intervals_above_it():
    labels, users = sample(400, 100, 40)
    scores = np.random.default_rng(0).normal(size=400)
    masks = {"big": np.arange(400) < 400, "tiny": np.arange(400) < 4}
    out = segment_gains(masks, labels, users, scores + labels, scores, n_resamples=50, seed=0)
    assert out["tiny"]["auc_gain"] is None and out["tiny"]["auc_gain_ci"] is None and out["tiny"]["n"] == 4
    assert out["tiny"]["note"].startswith("n/a: 4 impressions")
    lo, hi = out["big"]["auc_gain_ci"]
    assert lo < out["big"]["auc_gain"] < hi and hi > lo
