"""Free item-embedding tables fitted to preference pairs: the LIS oracle's embedding mode.

:func:`fit_pair_embeddings` learns one vector per item that appears in a pairs frame with the
same kind of loss the VLM is aligned with (symmetric in-batch InfoNCE), so the oracle and a
trained model are scored through identical similarity features. Used for

* the leaked oracle E* of LIS (pairs built from the fit window plus the evaluation window of
  the other user folds), and
* the "trained on the past" reference tables of the validity tests (pairs from the fit window
  only), whose AIS must stay at or below the builder's LIS.

Items absent from the pairs are left out of the table (reported as missing, never given a
random vector that would pass for knowledge). Deterministic on CPU for a fixed seed. It does
not model content: an item without pairs has no vector, which is exactly the ceiling's point.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import torch

from lis.embeddings import EmbeddingTable, make_manifest
from lis.errors import DataError
from lis.threads import one_torch_thread

# Passes over the pairs an oracle gets at least. Measured on random pairs: on the bench preset
# (185k pairs) 600 steps of 512 (1.7 passes) left an AUC gain of -0.0001 [-0.0002, -0.0000] and
# 1500 steps (4.1 passes) -0.00001 [-0.00004, +0.00001]; on the demo (19k pairs) 300 steps (8
# passes) left -0.0025 [-0.0042, -0.0010] on seed 0, so the 600-step floor (16 passes) stays.
MIN_EPOCHS = 4.0


def fit_pair_embeddings(
    pairs: pd.DataFrame,
    dim: int = 64,
    steps: int = 600,
    batch_size: int = 512,
    lr: float = 0.05,
    logit_scale: float = 20.0,
    seed: int = 0,
    trained_until: int | None = None,
    source: str = "oracle",
    min_epochs: float = MIN_EPOCHS,
) -> EmbeddingTable:
    """Fit a free embedding table to ``pairs`` (anchor_id, positive_id, weight).

    Pairs are sampled in proportion to their weight; each step is a symmetric InfoNCE over the
    batch with duplicate items masked out of the negatives. ``steps`` is a floor: a large pair
    set gets enough steps to sample about ``min_epochs`` times as many pairs as it holds
    (docs/science.md section 6: an under-trained oracle of random pairs is not yet noise). A few
    seconds for tens of thousands of pairs on 2 cores.
    """
    if len(pairs) == 0:
        raise DataError("pairs: no preference pairs to fit an embedding table to (the builder returned 0 pairs).")
    anchors = pairs["anchor_id"].astype(str).to_numpy()
    positives = pairs["positive_id"].astype(str).to_numpy()
    ids, codes = np.unique(np.concatenate([anchors, positives]), return_inverse=True)
    anchor_codes = torch.from_numpy(codes[: len(anchors)].astype(np.int64))
    positive_codes = torch.from_numpy(codes[len(anchors):].astype(np.int64))
    weights = torch.tensor(pairs["weight"].to_numpy(dtype=np.float64))

    generator = torch.Generator().manual_seed(seed)
    table = torch.nn.Embedding(len(ids), dim)
    with torch.no_grad():
        table.weight.normal_(0.0, 0.1, generator=generator)
    optimiser = torch.optim.Adam(table.parameters(), lr=lr)
    batch = min(batch_size, len(pairs))
    steps = max(int(steps), math.ceil(min_epochs * len(pairs) / batch))
    with one_torch_thread():
        _train(table, optimiser, anchor_codes, positive_codes, weights, batch, steps, logit_scale, generator)
    vectors = torch.nn.functional.normalize(table.weight.detach(), dim=1).numpy()
    manifest = make_manifest(dim, source, trained_until=None if trained_until is None else int(trained_until))
    return EmbeddingTable(list(ids), vectors, manifest)


def fit_in_processes(jobs: list[dict], workers: int = 1) -> list[EmbeddingTable]:
    """:func:`fit_pair_embeddings` of each job (its keyword arguments), in up to ``workers``
    fresh interpreters (:mod:`lis.interpreters`: safe from any process, threads or not); the
    tables come back in the order of ``jobs``. Each fit runs on one torch thread from its own
    seed, so a table is the same whichever process fits it."""
    from lis.interpreters import run_in_interpreters

    workers = min(int(workers), len(jobs))
    if workers <= 1:
        return list(map(_fit_job, jobs))
    return run_in_interpreters(_fit_job, jobs, workers)


def _fit_job(job: dict) -> EmbeddingTable:
    return fit_pair_embeddings(**job)


def _train(table, optimiser, anchor_codes, positive_codes, weights, batch, steps, logit_scale, generator) -> None:
    for _ in range(steps):
        rows = torch.multinomial(weights, batch, replacement=True, generator=generator)
        a, p = anchor_codes[rows], positive_codes[rows]
        loss = symmetric_info_nce(table(a), table(p), a, p, logit_scale)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()


def symmetric_info_nce(anchor, positive, anchor_codes, positive_codes, logit_scale: float) -> torch.Tensor:
    """In-batch InfoNCE both ways; an off-diagonal column holding the row's own positive item
    (or the same item twice) is masked instead of being pushed away as a negative."""
    a = torch.nn.functional.normalize(anchor, dim=1)
    p = torch.nn.functional.normalize(positive, dim=1)
    logits = logit_scale * a @ p.T
    # Symmetric mask, so the same one serves logits and logits.T: a column is no negative when
    # it holds the row's own anchor or positive item again.
    same_item = (positive_codes[:, None] == positive_codes[None, :]) | (anchor_codes[:, None] == anchor_codes[None, :])
    same_item |= (anchor_codes[:, None] == positive_codes[None, :]) | (positive_codes[:, None] == anchor_codes[None, :])
    same_item.fill_diagonal_(False)
    logits = logits.masked_fill(same_item, float("-inf"))
    target = torch.arange(len(a))
    return 0.5 * (
        torch.nn.functional.cross_entropy(logits, target) + torch.nn.functional.cross_entropy(logits.T, target)
    )


def pair_matrix(pairs: pd.DataFrame, index, scale: float | None = None):
    """The LIS oracle's pairs mode: a symmetric sparse (n x n) matrix of pair weights over the
    items of a :class:`lis.features.HistoryIndex` (max weight 1), and the mask of items that
    occur in any pair (the others count as missing, like items absent from a table).

    ``scale`` divides the weights instead of their maximum over the index's items (the Spark
    engine's blocks each see some items, but must scale as the whole log does)."""
    import scipy.sparse as sp

    lookup = pd.Index(index.item_ids)
    a = lookup.get_indexer(pairs["anchor_id"].astype(str))
    p = lookup.get_indexer(pairs["positive_id"].astype(str))
    keep = (a >= 0) & (p >= 0)
    w = pairs["weight"].to_numpy(dtype=np.float64)[keep]
    if scale is None:
        scale = w.max() if len(w) else 1.0
    w = w / scale if len(w) else w  # scale-free: the probe standardises, the attention tau does not
    n = len(lookup)
    matrix = sp.coo_matrix((w, (a[keep], p[keep])), shape=(n, n)).tocsr()
    matrix = matrix.maximum(matrix.T)  # candidate->history and history->candidate alike
    present = index.present_items(np.unique(np.concatenate([pairs["anchor_id"], pairs["positive_id"]]).astype(str)))
    return matrix, present


def cross_fitted_features(index, fold: np.ndarray, oracles: list, scales: list | None = None):
    """(phi, controls) of every row of ``index``: each row gets the oracle of its own user's fold.

    ``oracles[k]`` is fold k's oracle, an :class:`EmbeddingTable` (embedding mode) or its pair
    frame (pairs mode, weights scaled by ``scales[k]`` when given, else by the largest weight
    among pairs of items in ``index``). One kernel for both engines: the Spark engine calls it
    per block of users, the in-memory evaluator on the whole window.
    """
    n = len(index.rows)
    phi = np.zeros((n, 3), dtype=np.float32)
    controls = np.zeros((n, 3), dtype=np.float32)
    for k, oracle in enumerate(oracles):
        mask = fold == k
        if not mask.any():
            continue
        sub = index.subset(mask)
        if isinstance(oracle, EmbeddingTable):
            phi[mask], controls[mask] = sub.features(oracle), sub.controls(oracle)
        else:
            weights, present = pair_matrix(oracle, index, scale=scales[k] if scales else None)
            phi[mask] = sub.pair_features(weights)
            controls[mask] = sub.controls(present=present)
    return phi, controls
