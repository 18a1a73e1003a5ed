"""AIS by segment: gains of one table on slices of the probe-test impressions.

Segments: cold/warm items (seen or not in the fit window), popularity terciles (fit-window
impression counts) and up to 20 catalogue categories. A segment's gain is read from the probe
scores of the whole probe-test half (no refit per segment), with the evaluator's paired
bootstrap over the segment's users. A segment too small for an interval to mean anything
(fewer than :data:`MIN_IMPRESSIONS` impressions, :data:`MIN_EACH_LABEL` positives or
negatives, or :data:`MIN_USERS` users) is reported ``n/a`` with the reason: never as a
zero-width interval.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from lis.bootstrap import paired_bootstrap

MIN_IMPRESSIONS = 100
MIN_EACH_LABEL = 10
MIN_USERS = 10
MAX_CATEGORIES = 20


def segment_masks(test_log: pd.DataFrame, fit_log: pd.DataFrame, catalogue: pd.DataFrame | None) -> dict:
    """Boolean masks over ``test_log`` rows: cold/warm items, popularity terciles, categories."""
    items = test_log["item_id"].astype(str)
    fit_items = fit_log["item_id"].astype(str)
    masks = {}
    cold = ~items.isin(set(fit_items)).to_numpy()
    masks["cold_items"], masks["warm_items"] = cold, ~cold
    popularity = fit_items.value_counts().reindex(items).fillna(0).to_numpy()
    cuts = np.quantile(popularity, [1 / 3, 2 / 3])
    tercile = np.searchsorted(cuts, popularity, side="right")
    for level, label in enumerate(("popularity_low", "popularity_mid", "popularity_high")):
        masks[label] = tercile == level
    if catalogue is not None and "category" in catalogue.columns:
        category = catalogue.set_index(catalogue["item_id"].astype(str))["category"]
        values = category.reindex(items).astype(str).to_numpy()
        for name in sorted(pd.unique(values))[:MAX_CATEGORIES]:
            masks[f"category={name}"] = values == name
    return masks


def too_small(labels: np.ndarray, users: np.ndarray) -> str | None:
    """Why a segment cannot carry an interval (None when it can)."""
    n, pos = len(labels), int(labels.sum())
    if n < MIN_IMPRESSIONS:
        return f"n/a: {n} impressions (a segment needs {MIN_IMPRESSIONS})"
    if min(pos, n - pos) < MIN_EACH_LABEL:
        return f"n/a: {pos} positives and {n - pos} negatives (a segment needs {MIN_EACH_LABEL} of each)"
    n_users = len(pd.unique(users))
    if n_users < MIN_USERS:
        return f"n/a: {n_users} users (a segment needs {MIN_USERS} for an interval over users)"
    return None


def segment_gains(masks: dict, labels: np.ndarray, users: np.ndarray, scores_with: np.ndarray,
                  scores_without: np.ndarray, n_resamples: int, seed: int) -> dict:
    """``{segment: {"n", "auc_gain", "auc_gain_ci"}}``; ``auc_gain`` None and a ``note`` when the
    segment is too small (:func:`too_small`)."""
    out = {}
    for name, mask in masks.items():
        reason = too_small(labels[mask], users[mask])
        if reason is not None:
            out[name] = {"n": int(mask.sum()), "auc_gain": None, "auc_gain_ci": None, "note": reason}
            continue
        stats = paired_bootstrap(labels[mask], scores_with[mask], scores_without[mask], users=users[mask],
                                 n_resamples=n_resamples, seed=seed, metrics=("auc",))["auc"]
        out[name] = {"n": int(mask.sum()), "auc_gain": stats["gain"], "auc_gain_ci": stats["gain_ci"]}
    return out
