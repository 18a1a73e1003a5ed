"""Impression hard negatives: items a user was shown near an engagement and did not engage.

A recommender's log knows what an in-batch loss has to guess: the items that were *shown* to the
user who engaged the anchor, in the same session, and passed over. They share the context of
the engagement (the same page, the same candidate generator) and so are the natural hard
negatives of the anchor. For every pair (anchor, positive) :func:`mine_hard_negatives` draws up
to K of them:

- **shown near the anchor's engagement**: an impression (``label`` 0) of a user who engaged the
  anchor, in the same ``session_id`` when the log has sessions (``same_session``), else within
  ``max_gap_seconds`` of that engagement;
- **not engaged**: never engaged by that user anywhere in the log given (one engagement makes
  the item that user's positive, not a negative);
- **not a known positive** (false-negative masking): neither the anchor itself nor an item the
  pair graph relates to the anchor (any pair (anchor, x) or (x, anchor));
- **drawn**: per pair, K distinct candidates sampled without replacement with probability
  proportional to how often they were shown next to the anchor's engagements (seeded).

Pass only the fit window's log (training must not see the evaluation window). Engine-free
(numpy/pandas). Limits: without sessions, the user-level join costs engagements x impressions
per user; a pair whose anchor has no such impressions gets an empty list.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from lis.errors import ConfigError

__all__ = ["HARD_NEGATIVES_COLUMN", "mine_hard_negatives", "add_hard_negatives"]

HARD_NEGATIVES_COLUMN = "hard_negative_ids"
DEFAULT_GAP_SECONDS = 1800.0  # without sessions: impressions within 30 minutes of the engagement


def mine_hard_negatives(log: pd.DataFrame, pairs: pd.DataFrame, k: int, *, same_session: bool | None = None,
                        max_gap_seconds: float | None = None, seed: int = 0) -> list[list[str]]:
    """Up to ``k`` hard-negative item ids per row of ``pairs`` (see the module docstring)."""
    if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 0:
        raise ConfigError(f"hard negatives: k must be a non-negative integer; got {k!r}.")
    if same_session is None:
        same_session = "session_id" in log.columns
    elif same_session and "session_id" not in log.columns:
        raise ConfigError("hard negatives: same_session=True needs a 'session_id' column in the log.")
    gap = DEFAULT_GAP_SECONDS if max_gap_seconds is None else float(max_gap_seconds)
    anchors = pairs["anchor_id"].astype(str).to_numpy()
    positives = pairs["positive_id"].astype(str).to_numpy()
    if k == 0 or len(pairs) == 0:
        return [[] for _ in range(len(pairs))]
    pools = _candidate_pools(log, set(anchors), same_session, gap)
    related = _related(anchors, positives)
    rng = np.random.default_rng(seed)
    out = []
    for anchor, positive in zip(anchors, positives):
        items, counts = pools.get(anchor, (np.empty(0, dtype=object), np.empty(0)))
        keep = np.array([i != positive and i not in related.get(anchor, ()) for i in items], dtype=bool)
        items, counts = items[keep] if len(items) else items, counts[keep] if len(items) else counts
        if len(items) <= k:
            out.append(sorted(map(str, items)))
            continue
        # Weighted sampling without replacement (Efraimidis-Spirakis): the k largest u^(1/w).
        keys = np.log(rng.random(len(items))) / counts
        out.append([str(i) for i in items[np.argsort(-keys, kind="stable")[:k]]])
    return out


def add_hard_negatives(pairs: pd.DataFrame, log: pd.DataFrame, k: int, **options) -> pd.DataFrame:
    """``pairs`` with a ``hard_negative_ids`` list column (:func:`mine_hard_negatives`)."""
    out = pairs.copy()
    out[HARD_NEGATIVES_COLUMN] = mine_hard_negatives(log, pairs, k, **options)
    return out


def _candidate_pools(log: pd.DataFrame, anchors: set, same_session: bool, gap: float) -> dict:
    """anchor -> (candidate item ids, times shown next to an engagement of the anchor)."""
    frame = pd.DataFrame({"user": log["user_id"].astype(str).to_numpy(), "item": log["item_id"].astype(str).to_numpy(),
                          "time": np.asarray(log["timestamp"], dtype=np.int64),
                          "label": np.asarray(log["label"], dtype=np.int64)})
    keys = ["user"]
    if same_session:
        frame["session"] = log["session_id"].to_numpy()
        frame = frame[frame["session"].notna()]
        keys.append("session")
    engaged = frame[frame["label"] == 1]
    shown = frame[frame["label"] == 0]
    seeds = engaged[engaged["item"].isin(anchors)][keys + ["item", "time"]].rename(
        columns={"item": "anchor", "time": "anchor_time"})
    joined = seeds.merge(shown[keys + ["item", "time"]], on=keys)
    if not same_session:
        joined = joined[(joined["time"] - joined["anchor_time"]).abs() <= gap]
    # Not engaged by that user anywhere in this log, and never the anchor itself.
    liked = pd.MultiIndex.from_frame(engaged[["user", "item"]].drop_duplicates())
    mask = ~pd.MultiIndex.from_frame(joined[["user", "item"]]).isin(liked) & (joined["item"] != joined["anchor"])
    counts = joined[mask].groupby(["anchor", "item"]).size()
    pools = {}
    for anchor, group in counts.groupby(level=0):
        pools[anchor] = (group.index.get_level_values(1).to_numpy(dtype=object), group.to_numpy(dtype=np.float64))
    return pools


def _related(anchors, positives) -> dict:
    """item -> items the pair graph relates it to, in either direction."""
    related: dict = {}
    for a, b in zip(anchors, positives):
        related.setdefault(a, set()).add(b)
        related.setdefault(b, set()).add(a)
    return related
