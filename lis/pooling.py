"""Pooling a window of similarities into features, and the sparse pair lookup of pairs mode.

:func:`pool_windows` turns the similarities of a candidate with the items of its history window
into the three features (max, mean, attention); :func:`pair_block_sims` builds those
similarities from stored pair weights instead of cosines (the LIS oracle's pairs mode). Both are
called by :class:`lis.features.HistoryIndex` on padded batches of blocks.
"""
from __future__ import annotations

import numpy as np
import torch

DEFAULT_TAU = 0.1


def pool_windows(scaled: torch.Tensor, valid: torch.Tensor, tau: float = DEFAULT_TAU) -> torch.Tensor:
    """Pool similarities over the last axis where ``valid``: (..., W) -> (..., 3) max, mean, attention.

    ``scaled`` holds similarity / tau (callers fold 1/tau into the candidate vectors or the pair
    weights, saving a pass). Attention = sum softmax(sim / tau) * sim over the valid entries,
    max-subtracted so large pair weights cannot overflow. Rows with no valid entry pool to zeros.
    Written as few full passes over the (..., W) tensor as possible: this is the hot loop.
    """
    masked = scaled.masked_fill(~valid, float("-inf"))
    top = masked.amax(dim=-1)
    weights_valid = valid.to(scaled.dtype)
    count = weights_valid.sum(dim=-1)
    empty = count == 0
    top.masked_fill_(empty, 0.0)
    weights = masked.sub_(top[..., None]).exp_()                # exp(-inf) = 0 outside the window
    total = weights.sum(dim=-1).masked_fill_(empty, 1.0)
    attention = torch.linalg.vecdot(weights, scaled) / total
    mean = torch.linalg.vecdot(scaled, weights_valid) / count.clamp(min=1.0)
    pooled = torch.stack((top, mean, attention), dim=-1).mul_(tau)
    return pooled.masked_fill_(empty[..., None], 0.0)


def _ranges(starts: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Concatenated ranges [s, s+len): (owner index of each element, element value)."""
    owner = np.repeat(np.arange(len(starts)), lengths)
    offset = np.arange(len(owner)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    return owner, starts[owner] + offset


def pair_block_sims(cand, span, indptr, indices, data, stride) -> np.ndarray:
    """Dense (nb, R, W) pair weights weights[cand[b, r], span[b, c]] by a sparse join.

    Joins each candidate's stored pairs with the items of its block's span on the key
    (block, item): work is proportional to the stored pairs touched, not to R x W lookups.
    Codes are positions in the weight matrix, -1 for missing items.
    """
    nb, R = cand.shape
    W = span.shape[1]
    sims = np.zeros((nb, R, W), dtype=np.float32)
    sb, sc = np.nonzero(span >= 0)
    span_key = sb * stride + span[sb, sc]
    order = np.argsort(span_key, kind="stable")
    span_key, sc, sb = span_key[order], sc[order], sb[order]
    qb, qr = np.nonzero(cand >= 0)
    a = cand[qb, qr]
    owner, nz = _ranges(indptr[a], indptr[a + 1] - indptr[a])
    if len(nz) == 0 or len(span_key) == 0:
        return sims
    key = qb[owner] * stride + indices[nz]
    lo = np.searchsorted(span_key, key, "left")
    hits = np.searchsorted(span_key, key, "right") - lo
    match, at = _ranges(lo, hits)                       # an item may occur several times in a span
    sims[qb[owner[match]], qr[owner[match]], sc[at]] = data[nz[match]]
    return sims
