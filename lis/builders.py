"""Preference-data builders: a log slice in, item pairs ``(anchor_id, positive_id, weight)`` out.

Every builder is a small function registered in :data:`BUILDERS`; call them through
:func:`build_pairs`, which checks option names, and returns a frame sorted by
``anchor_id``, then ``weight`` descending, then ``positive_id`` (so the output is
deterministic for a given input and seed). Builders:

``co_engagement``  NoteLLM-style co-engagement (the main behavioural builder).
``ranker_knn``     nearest neighbours in the ID-based ranker's item table.
``category``       random pairs within a catalogue category (a control).
``random``         random pairs among the slice's items (the null control; LIS ~ 0).
``user``           a user-supplied pairs file.

Options common to the sampling builders: ``top_k`` (pairs kept per anchor). See each
function's docstring for the rest. :func:`corrupt_pairs` damages a fraction of the pairs on
purpose, for the validity check "LIS falls as pairs are corrupted".
"""
from __future__ import annotations

import inspect
import math
import os
from typing import Callable

import numpy as np
import pandas as pd

from lis.errors import ConfigError, DataError, describe_value

PAIR_COLUMNS = ("anchor_id", "positive_id", "weight")


# ----------------------------------------------------------------------------- entry point
def build_pairs(name: str, log_slice: pd.DataFrame, catalogue: pd.DataFrame | None = None, ranker=None,
                seed: int = 0, **options) -> pd.DataFrame:
    """Build pairs with builder ``name`` from ``log_slice`` (a log frame, e.g. one window).

    ``catalogue`` is needed by ``category``; ``ranker`` (an :class:`lis.rankers.IdCtrRanker`)
    is used by ``ranker_knn`` (fitted on ``log_slice`` when None); ``seed`` drives every
    random choice. Unknown builders or options, and bad option values, raise
    :class:`ConfigError` (the CLI turns it into exit status 2).
    """
    if name not in BUILDERS:
        raise ConfigError(f"unknown pairs builder {describe_value(name)}; choose one of {', '.join(BUILDERS)}.")
    builder = BUILDERS[name]
    allowed = builder_options(name)
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        listed = ", ".join(f"{key}={value!r}" for key, value in allowed.items()) or "none"
        raise ConfigError(f"builder '{name}' has no option '{unknown[0]}'; its options are: {listed}.")
    pairs = builder(log_slice, catalogue=catalogue, ranker=ranker, seed=int(seed), **options)
    return _sorted_pairs(pairs)


def builder_options(name: str) -> dict:
    """Option names of builder ``name`` with their defaults (from its keyword-only parameters)."""
    signature = inspect.signature(BUILDERS[name])
    return {p.name: p.default for p in signature.parameters.values() if p.kind is inspect.Parameter.KEYWORD_ONLY
            and p.name not in ("catalogue", "ranker", "seed")}


# ----------------------------------------------------------------------------- co_engagement
def co_engagement(log: pd.DataFrame, *, catalogue=None, ranker=None, seed: int = 0, top_k: int = 10,
                  window: int = 5, max_gap_seconds: float | None = None, same_session: bool | None = None,
                  symmetric: bool = True, low: float = 0.0, high: float = math.inf) -> pd.DataFrame:
    """NoteLLM co-engagement: s(A->B) = sum over users u who engaged A and then B of 1/N_u.

    Only engaged impressions (``label == 1``) count. N_u is the number of distinct items u
    engaged in the slice, so a heavy user's many pairs count for less. "A then B" means B
    is one of the next ``window`` engagements of u after A (default 5; this also bounds
    the cost: at most ``window`` neighbours per engagement), with a strictly later
    timestamp, a different item, and close enough:

    - ``same_session``: both in the same ``session_id`` (rows with a null session never
      pair). Default None = on when the log has a ``session_id`` column.
    - ``max_gap_seconds``: at most this many seconds apart. Default None = 1 day when
      sessions are not used, unlimited when they are; an explicit value always applies.

    A user adds 1/N_u to a pair at most once, however often they repeat it.

    ``symmetric`` (default True): score the unordered pair, s(A,B) = sum over users who
    engaged both (in either order, within the gap) of 1/N_u, and emit it in both
    directions. We default to it for item-embedding training because the contrastive loss
    and the cosine it trains are symmetric anyway (the direction is lost), and pooling both
    directions doubles the evidence per pair and gives every item anchors. ``False``
    keeps NoteLLM's directional A->B scores.

    Scores outside [``low``, ``high``] are dropped (defaults 0 and inf keep everything;
    raise ``low`` to drop one-off coincidences, lower ``high`` to drop pairs of hot items),
    then the ``top_k`` highest-scoring positives per anchor are kept (ties by id).
    Weight = the score. Cost: linear in the number of engagements times ``window``.
    """
    top_k = _int_option("co_engagement", "top_k", top_k, 1)
    window = _int_option("co_engagement", "window", window, 1)
    low, high = _float_option("co_engagement", "low", low), _float_option("co_engagement", "high", high)
    if same_session is None:
        same_session = "session_id" in log.columns
    elif same_session and "session_id" not in log.columns:
        raise ConfigError("builder 'co_engagement': same_session=True needs a 'session_id' column in the log.")
    if max_gap_seconds is None and not same_session:
        max_gap_seconds = 86400
    if max_gap_seconds is not None:
        max_gap_seconds = _float_option("co_engagement", "max_gap_seconds", max_gap_seconds)

    engaged = log.loc[log["label"].to_numpy() == 1]
    if len(engaged) == 0:
        return _empty_pairs()
    users, _ = pd.factorize(engaged["user_id"].astype(str))
    items, item_ids = pd.factorize(engaged["item_id"].astype(str))
    times = engaged["timestamp"].to_numpy(dtype=np.int64)
    sessions = pd.factorize(engaged["session_id"])[0] if same_session else None  # null -> -1
    # Each user's engagements in time order (ties keep log order).
    order = np.lexsort((np.arange(len(users)), times, users))
    users, items, times = users[order], items[order], times[order]
    sessions = sessions[order] if sessions is not None else None

    n_items = len(item_ids)
    distinct = np.unique(users.astype(np.int64) * n_items + items)
    n_per_user = np.bincount(distinct // n_items, minlength=users.max() + 1)

    pair_users, pair_keys = _sequence_neighbours(users, items, times, sessions, window, max_gap_seconds,
                                                 n_items, symmetric)
    if len(pair_keys) == 0:
        return _empty_pairs()
    # A user counts once per pair: drop repeated (user, pair) rows.
    unique_rows = ~pd.DataFrame({"u": pair_users, "k": pair_keys}).duplicated().to_numpy()
    pair_users, pair_keys = pair_users[unique_rows], pair_keys[unique_rows]
    keys, inverse = np.unique(pair_keys, return_inverse=True)
    # Each pair's 1/N_u summed in ascending order (bincount adds in row order): a float that does
    # not depend on the order users come in, so the Spark engine (lis.spark.builders) gets it too.
    contribution = 1.0 / n_per_user[pair_users]
    order = np.lexsort((contribution, inverse))
    scores = np.bincount(inverse[order], weights=contribution[order], minlength=len(keys))
    anchors, positives = keys // n_items, keys % n_items
    if symmetric:  # keys are (min, max); emit both directions
        anchors, positives = np.concatenate([anchors, positives]), np.concatenate([positives, anchors])
        scores = np.concatenate([scores, scores])
    keep = (scores >= low) & (scores <= high) & (scores > 0)
    return _top_k(item_ids.to_numpy(), anchors[keep], positives[keep], scores[keep], top_k)


def _sequence_neighbours(users, items, times, sessions, window, max_gap, n_items, symmetric):
    """(user, pair key) for every engagement and each of its next ``window`` engagements
    that qualify; key = a * n_items + b (with a < b when symmetric)."""
    out_users, out_keys = [], []
    for step in range(1, window + 1):
        if step >= len(users):
            break
        a, b = slice(0, len(users) - step), slice(step, len(users))
        ok = (users[a] == users[b]) & (times[b] > times[a]) & (items[a] != items[b])
        if max_gap is not None:
            ok &= (times[b] - times[a]) <= max_gap
        if sessions is not None:
            ok &= (sessions[a] == sessions[b]) & (sessions[a] >= 0)
        first, second = items[a][ok].astype(np.int64), items[b][ok].astype(np.int64)
        if symmetric:
            first, second = np.minimum(first, second), np.maximum(first, second)
        out_users.append(users[a][ok])
        out_keys.append(first * n_items + second)
    if not out_keys:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    return np.concatenate(out_users), np.concatenate(out_keys)


# ----------------------------------------------------------------------------- ranker_knn
def ranker_knn(log: pd.DataFrame, *, catalogue=None, ranker=None, seed: int = 0, top_k: int = 10,
               min_count: int = 5, dim: int = 32) -> pd.DataFrame:
    """Top-``top_k`` cosine neighbours in the ranker's item ID-embedding table.

    ``ranker``: a fitted :class:`lis.rankers.IdCtrRanker`; when None one is fitted on this
    log slice (``dim`` factors, seeded by ``seed``). Only items with at least ``min_count``
    training impressions in the ranker take part (rare items have noisy factors).
    Anchors are those items that also appear in the slice; positives may be any of them.
    Weight = cosine similarity; non-positive similarities are dropped.
    Cost: one matrix product over the table, done in blocks (n_items^2 * dim).
    """
    from lis.rankers import IdCtrRanker

    top_k = _int_option("ranker_knn", "top_k", top_k, 1)
    min_count = _int_option("ranker_knn", "min_count", min_count, 1)
    if ranker is None:
        dim = _int_option("ranker_knn", "dim", dim, 1)
        ranker = IdCtrRanker.fit(log, dim=dim, seed=seed)
    ids, vectors = ranker.item_embeddings(min_count=min_count)
    ids = np.asarray(ids, dtype=object)
    in_slice = pd.Index(ids).isin(pd.unique(log["item_id"].astype(str)))
    if len(ids) < 2 or not in_slice.any():
        return _empty_pairs()
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    unit = (vectors / np.maximum(norms, 1e-12)).astype(np.float32)
    anchor_rows = np.flatnonzero(in_slice)
    k = min(top_k, len(ids) - 1)
    # torch.topk: several times faster than numpy's argpartition on wide blocks.
    import torch

    table = torch.from_numpy(unit)
    block = max(1, (1 << 24) // len(ids))  # ~64 MB of similarities per block
    anchors, positives, weights = [], [], []
    for start in range(0, len(anchor_rows), block):
        rows = anchor_rows[start: start + block]
        sims = table[torch.from_numpy(rows)] @ table.T
        sims[torch.arange(len(rows)), torch.from_numpy(rows)] = -torch.inf  # never your own neighbour
        best = torch.topk(sims, k, dim=1)
        anchors.append(np.repeat(rows, k))
        positives.append(best.indices.numpy().ravel())
        weights.append(best.values.numpy().ravel().astype(np.float64))
    anchors, positives, weights = map(np.concatenate, (anchors, positives, weights))
    keep = weights > 0
    return _top_k(ids, anchors[keep], positives[keep], weights[keep], top_k)


# ----------------------------------------------------------------------------- controls
def category(log: pd.DataFrame, *, catalogue=None, ranker=None, seed: int = 0, top_k: int = 10) -> pd.DataFrame:
    """Random pairs within a catalogue category: for each item of the slice, ``top_k``
    distinct other slice items of its category drawn uniformly (fewer when the category is
    smaller). Weight 1. Items with a null category are skipped. Needs a catalogue with a
    ``category`` column (else :class:`DataError`)."""
    top_k = _int_option("category", "top_k", top_k, 1)
    if catalogue is None or "category" not in catalogue.columns:
        raise DataError("catalogue: column 'category' is missing; the 'category' builder needs it "
                        "(use 'random' as the control instead).")
    items = np.sort(pd.unique(log["item_id"].astype(str)))
    by_item = pd.Series(catalogue["category"].to_numpy(), index=catalogue["item_id"].astype(str))
    by_item = by_item[~by_item.index.duplicated()]
    groups = by_item.reindex(items)
    known = groups.notna().to_numpy()
    codes = pd.factorize(groups[known].astype(str), sort=True)[0]
    return _random_within_groups(items[known], codes, top_k, np.random.default_rng(seed))


def random_pairs(log: pd.DataFrame, *, catalogue=None, ranker=None, seed: int = 0, top_k: int = 10) -> pd.DataFrame:
    """Random pairs: for each item of the slice, ``top_k`` distinct other slice items drawn
    uniformly. Weight 1. The null control: its LIS should be ~0."""
    top_k = _int_option("random", "top_k", top_k, 1)
    items = np.sort(pd.unique(log["item_id"].astype(str)))
    return _random_within_groups(items, np.zeros(len(items), np.int64), top_k, np.random.default_rng(seed))


def _random_within_groups(items: np.ndarray, groups: np.ndarray, k: int, rng: np.random.Generator) -> pd.DataFrame:
    """For each item, ``k`` distinct other members of its group, uniformly (all of them when
    the group is smaller). Groups are visited in code order, so output depends only on seed."""
    anchors, positives = [], []
    for group in np.unique(groups):
        members = np.flatnonzero(groups == group)
        m = len(members)
        if m < 2:
            continue
        kk = min(k, m - 1)
        # Offsets 1..m-1 from each anchor's position: distinct offsets = distinct other items.
        offsets = 1 + _distinct_samples(m - 1, kk, m, rng)
        partner = (np.arange(m)[:, None] + offsets) % m
        anchors.append(np.repeat(members, kk))
        positives.append(members[partner.ravel()])
    if not anchors:
        return _empty_pairs()
    anchors, positives = np.concatenate(anchors), np.concatenate(positives)
    return _frame(items[anchors], items[positives], np.ones(len(anchors)))


def _distinct_samples(n: int, k: int, rows: int, rng: np.random.Generator) -> np.ndarray:
    """``rows`` independent draws of ``k`` distinct integers from [0, n) (Floyd's algorithm,
    vectorised over rows): O(rows * k^2), never O(rows * n)."""
    chosen = np.empty((rows, k), dtype=np.int64)
    for column, j in enumerate(range(n - k, n)):
        t = rng.integers(0, j + 1, size=rows)
        taken = (chosen[:, :column] == t[:, None]).any(axis=1)
        chosen[:, column] = np.where(taken, j, t)
    return chosen


# ----------------------------------------------------------------------------- user file
def user_pairs(log: pd.DataFrame, *, catalogue=None, ranker=None, seed: int = 0, path: str | None = None) -> pd.DataFrame:
    """The user's own pairs file at ``path`` (any table format :mod:`lis.tables` reads),
    validated by :func:`lis.schemas.load_pairs` (ids must be in the catalogue when one is
    given; a missing weight column means weight 1). The log slice is not used."""
    if path is None:
        raise ConfigError("builder 'user' needs the option path=PAIRS_FILE (CLI: --pairs-file).")
    if not os.path.exists(path):
        raise DataError(f"{path}: pairs file not found.")
    from lis.schemas import load_pairs

    item_ids = None if catalogue is None else catalogue["item_id"]
    pairs = load_pairs(path, item_ids=item_ids)
    return _frame(pairs["anchor_id"].astype(str).to_numpy(), pairs["positive_id"].astype(str).to_numpy(),
                  pairs["weight"].to_numpy(dtype=np.float64))


BUILDERS: dict[str, Callable[..., pd.DataFrame]] = {
    "co_engagement": co_engagement,
    "ranker_knn": ranker_knn,
    "category": category,
    "random": random_pairs,
    "user": user_pairs,
}


# ----------------------------------------------------------------------------- corruption
def corrupt_pairs(pairs: pd.DataFrame, fraction: float, item_ids, seed: int = 0) -> pd.DataFrame:
    """Replace the positive of ``round(fraction * len(pairs))`` pairs with a random item.

    Rows keep their order, anchor and weight. Replacements are drawn uniformly from
    ``item_ids`` (never the anchor itself when another item exists). Nested by design: with
    the same seed, the rows corrupted at a lower fraction are corrupted identically at a
    higher one, so a corruption curve is monotone in the damage, not in the noise.
    """
    fraction = float(fraction)
    if not 0.0 <= fraction <= 1.0:
        raise ConfigError(f"corruption fraction must lie in [0, 1]; got {describe_value(fraction)}.")
    pool = np.asarray(pd.unique(pd.Series(item_ids, dtype=object).astype(str)), dtype=object)
    if len(pool) == 0:
        raise ConfigError("corrupt_pairs needs at least one item id to draw replacements from.")
    out = pairs.reset_index(drop=True).copy()
    n = len(out)
    rng = np.random.default_rng(seed)
    order = rng.permutation(n)
    draws = rng.integers(0, len(pool), size=n)  # one draw per row, used only if the row is picked
    rows = order[: int(round(fraction * n))]
    replacement = pool[draws[rows]]
    same = replacement == out["anchor_id"].to_numpy(dtype=object)[rows]
    if len(pool) > 1:
        replacement[same] = pool[(draws[rows][same] + 1) % len(pool)]
    positives = out["positive_id"].to_numpy(dtype=object).copy()
    positives[rows] = replacement
    out["positive_id"] = pd.Series(positives, dtype=out["positive_id"].dtype)
    return out


# ----------------------------------------------------------------------------- helpers
def _top_k(item_ids: np.ndarray, anchors: np.ndarray, positives: np.ndarray, weights: np.ndarray,
           k: int) -> pd.DataFrame:
    """Keep the ``k`` heaviest positives per anchor (codes index ``item_ids``), ties by id."""
    if len(anchors) == 0:
        return _empty_pairs()
    rank = np.empty(len(item_ids), dtype=np.int64)
    rank[np.argsort(item_ids.astype(str), kind="stable")] = np.arange(len(item_ids))
    order = np.lexsort((rank[positives], -weights, rank[anchors]))
    anchors, positives, weights = anchors[order], positives[order], weights[order]
    starts = np.flatnonzero(np.r_[True, anchors[1:] != anchors[:-1]])
    position = np.arange(len(anchors)) - np.repeat(starts, np.diff(np.r_[starts, len(anchors)]))
    keep = position < k
    return _frame(item_ids[anchors[keep]], item_ids[positives[keep]], weights[keep])


def _frame(anchors, positives, weights) -> pd.DataFrame:
    return pd.DataFrame({
        "anchor_id": pd.Series(np.asarray(anchors, dtype=object), dtype=str),
        "positive_id": pd.Series(np.asarray(positives, dtype=object), dtype=str),
        "weight": np.asarray(weights, dtype=np.float64),
    })


def _empty_pairs() -> pd.DataFrame:
    return _frame([], [], [])


def _sorted_pairs(pairs: pd.DataFrame) -> pd.DataFrame:
    pairs = pairs.sort_values(["anchor_id", "weight", "positive_id"], ascending=[True, False, True],
                              kind="stable")
    return pairs.reset_index(drop=True)[list(PAIR_COLUMNS)]


def _int_option(builder: str, option: str, value, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ConfigError(f"builder '{builder}': option '{option}' must be an integer >= {low}; "
                          f"got {describe_value(value)}.")
    return int(value)


def _float_option(builder: str, option: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) or math.isnan(value):
        raise ConfigError(f"builder '{builder}': option '{option}' must be a number; got {describe_value(value)}.")
    return float(value)
