"""Symmetric in-batch InfoNCE for item embeddings, distributed the open_clip way.

A batch holds B preference pairs (anchor item, positive item, weight). Every anchor is scored
against every positive of the *global* batch (all ranks); its own positive is the target and
the others are negatives, and the same the other way round (positive -> anchors). Columns that
are not true negatives are masked out (logit -inf) instead of being pushed away:

- duplicates: a column holding the row's own target item at another position (the same item
  twice in the batch), or holding the row's own item (an anchor that is also some pair's
  positive, or the reverse);
- known pairs: a column (i, j) whose ids (anchor_i, positive_j) form a known related pair,
  checked in both orders (relatedness is treated as symmetric).

Scaling convention (what makes the distributed loss equal the single-process one):
with W ranks and a global batch of N pairs with weights w, the global loss is

    L = 1/2 * [ sum_i w_i CE(a_i -> P) + sum_j w_j CE(p_j -> A) ] / sum_k w_k

(the weighted mean over rows of each direction, averaged over the two directions). Rank r
returns ``loss_r`` such that mean_r(loss_r) == L:
- ``local_loss=True``: rank r scores only its own rows against all gathered columns and
  returns W * (its rows' share of the sum) / (global weight sum);
- ``local_loss=False``: every rank scores the full N x N matrix and returns L itself.
With ``gather_with_grad=True`` both settings give every rank the gradient of sum_r loss_r =
W * L with respect to its own embeddings, so DDP/DeepSpeed's gradient *average* over ranks
yields exactly dL/dθ, as a single process on the concatenated batch would compute.
``gather_with_grad=False`` (open_clip's cheaper option) gives each rank's own rows the
gradient of its own ``loss_r`` only: with ``local_loss=True`` the terms in which this rank's
embeddings serve as negatives for other ranks' rows are lost (a different, biased gradient);
with ``local_loss=False`` the direction is right but the parameter gradient is dL/dθ / W.
Use it only to save memory/communication, knowingly.

Limits: embeddings are L2-normalised inside (cosine similarity; ``normalize=False`` to pass
already normalised or raw vectors); item ids must be int64 indices below 2**31 (pairs are
encoded as ``a << 32 | b``); ranks may hold different batch sizes (padding in the gather).
Known pairs must be the same on every rank (they are not gathered).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from align.distributed import all_gather_no_grad, all_gather_with_grad, gather_sizes, world_info

__all__ = ["InfoNCELoss", "encode_pairs"]

_ID_LIMIT = 2**31


def encode_pairs(anchor_ids, positive_ids=None) -> torch.Tensor:
    """Encode known (anchor, positive) id pairs as sorted unique int64 keys ``a << 32 | b``.

    Accepts two 1-D integer sequences, a (K, 2) tensor/array, or an iterable of (a, b) tuples.
    Both orders of every pair are stored, so membership is symmetric. Build it once (on every
    rank) and pass it as ``known_pairs`` to avoid re-encoding per step.
    """
    if positive_ids is None:
        pairs = torch.as_tensor(
            anchor_ids if torch.is_tensor(anchor_ids) else list(anchor_ids), dtype=torch.int64
        ).reshape(-1, 2)
        a, b = pairs[:, 0], pairs[:, 1]
    else:
        a = torch.as_tensor(anchor_ids, dtype=torch.int64).reshape(-1)
        b = torch.as_tensor(positive_ids, dtype=torch.int64).reshape(-1)
    if a.numel() and (min(a.min(), b.min()) < 0 or max(a.max(), b.max()) >= _ID_LIMIT):
        raise ValueError(f"known pair ids must lie in [0, 2**31); got min {min(a.min(), b.min())}, "
                         f"max {max(a.max(), b.max())}")
    keys = torch.cat([(a << 32) | b, (b << 32) | a])
    return torch.unique(keys)  # sorted: torch.isin/searchsorted can use it directly


class InfoNCELoss(nn.Module):
    """Symmetric in-batch InfoNCE with a learnable temperature, correct across ranks.

    Args:
        init_scale: initial logit scale (inverse temperature); stored as its log. Default 20.
        max_scale: the scale is clamped to this in forward (open_clip: 100); past it the
            scale gets no gradient.
        learn_scale: False freezes the scale (kept as a buffer-like parameter without grad).
        gather_with_grad: gather other ranks' embeddings with gradient (exact; see module
            doc). False gathers detached copies: cheaper, different gradient.
        local_loss: score only this rank's rows against all columns (N x B per direction
            instead of N x N). Same loss mean and, with gather_with_grad, the same gradient.
        mask_duplicates: mask columns repeating the row's target item or the row's own item.
        normalize: L2-normalise the embeddings before the dot products (cosine similarity).
        matryoshka_dims: e.g. ``[128, 64, 32, 16]``: the loss is the mean of the losses on these
            nested prefixes of the embeddings (each prefix re-normalised); accuracy is the
            largest's. None: the full embedding only.

    forward(anchor_emb (B, d), positive_emb (B, d), anchor_ids (B,) int64,
            positive_ids (B,) int64, weights (B,) float > 0 or None,
            known_pairs: None | ``encode_pairs`` keys (1-D int64) | (K, 2) ids | iterable of
            (anchor, positive) tuples; anything but keys is encoded on every call),
            negative_emb (M, d) and negative_ids (M,) int64 or None: hard negatives, extra
            columns of every anchor row's logits (gathered from every rank like the positives;
            masked like them where a duplicate or a known pair of the row's anchor)
    returns dict(loss: scalar with grad, logit_scale: detached scalar,
                 accuracy: detached scalar, the weighted fraction of rows of both directions
                 whose target beats every unmasked column, over the global batch).

    Use under DDP/DeepSpeed: every rank must call forward and backward (both run
    collectives). Keep this module inside the module that DDP/DeepSpeed wraps (or all-reduce
    ``log_scale.grad`` yourself): with ``local_loss=True`` each rank computes a different
    temperature gradient, and without averaging the ranks' temperatures drift apart. Under
    DeepSpeed bf16 the ``log_scale`` parameter itself is held in bf16 for the forward (a step
    of about 0.4% in the scale); the logits are computed in float32 regardless.

    Does not do: hard-negative mining (see ``lis.hard_negatives``), a learnable bias (SigLIP), or queues of past batches.
    """

    def __init__(
        self,
        init_scale: float = 20.0,
        max_scale: float = 100.0,
        learn_scale: bool = True,
        gather_with_grad: bool = True,
        local_loss: bool = True,
        mask_duplicates: bool = True,
        normalize: bool = True,
        matryoshka_dims=None,
    ):
        super().__init__()
        if not 0 < init_scale <= max_scale:
            raise ValueError(f"init_scale must be in (0, max_scale={max_scale}]; got {init_scale}")
        # Shape (1,), not a 0-d tensor: DeepSpeed's engine views every parameter as bytes to
        # broadcast it, which fails on 0-d tensors (deepspeed 0.19.8, torch 2.13).
        self.log_scale = nn.Parameter(torch.tensor([math.log(init_scale)]), requires_grad=learn_scale)
        self.max_scale = float(max_scale)
        self.gather_with_grad = gather_with_grad
        self.local_loss = local_loss
        self.mask_duplicates = mask_duplicates
        self.normalize = normalize
        dims = sorted({int(d) for d in matryoshka_dims or ()}, reverse=True)
        if any(d <= 0 for d in dims):
            raise ValueError(f"matryoshka_dims must be positive; got {list(matryoshka_dims)}")
        self.matryoshka_dims = tuple(dims) or None

    @property
    def logit_scale(self) -> torch.Tensor:
        """The clamped scale exp(log_scale) used in forward."""
        return self.log_scale.exp().clamp(max=self.max_scale).reshape(())

    def forward(self, anchor_emb, positive_emb, anchor_ids, positive_ids, weights=None, known_pairs=None,
                negative_emb=None, negative_ids=None):
        b = anchor_emb.shape[0]
        if positive_emb.shape[0] != b or anchor_ids.shape != (b,) or positive_ids.shape != (b,):
            raise ValueError(
                f"InfoNCELoss: expected anchor_emb/positive_emb (B, d) and ids (B,); got "
                f"{tuple(anchor_emb.shape)}, {tuple(positive_emb.shape)}, "
                f"{tuple(anchor_ids.shape)}, {tuple(positive_ids.shape)}"
            )
        if (negative_emb is None) != (negative_ids is None) or (
                negative_emb is not None and negative_ids.shape != (negative_emb.shape[0],)):
            raise ValueError("InfoNCELoss: negative_emb (M, d) and negative_ids (M,) go together")
        if weights is None:
            weights = anchor_emb.new_ones(b)
        # Weights stay in >= float32 even under bf16 training (they only scale rows).
        weights = weights.to(torch.promote_types(anchor_emb.dtype, torch.float32)).reshape(b)
        if self.normalize:
            anchor_emb = F.normalize(anchor_emb, dim=-1)
            positive_emb = F.normalize(positive_emb, dim=-1)
            if negative_emb is not None:
                negative_emb = F.normalize(negative_emb, dim=-1)

        info = world_info()
        # Only embeddings need a device matching the backend; ids/weights follow them.
        sizes = gather_sizes(b, anchor_emb.device)
        start = sum(sizes[: info.rank])
        gather = all_gather_with_grad if self.gather_with_grad else _gather_keep_local(start)
        all_a = gather(anchor_emb, sizes)
        all_p = gather(positive_emb, sizes)
        all_aid = all_gather_no_grad(anchor_ids.to(anchor_emb.device, torch.int64), sizes)
        all_pid = all_gather_no_grad(positive_ids.to(anchor_emb.device, torch.int64), sizes)
        all_w = all_gather_no_grad(weights, sizes)
        # Hard negatives: extra anchor->positive columns, gathered from every rank like the positives.
        all_n, col_ids = self._gather_negatives(negative_emb, negative_ids, info, all_pid)

        # Rows scored on this rank: its own slice (local_loss) or the whole global batch.
        rows = slice(start, start + b) if self.local_loss else slice(0, all_a.shape[0])
        # Logits in at least float32: a scale up to 100 on bf16 dot products loses the ranking.
        dtype = torch.promote_types(all_a.dtype, torch.float32)
        all_a, all_p, all_w = all_a.to(dtype), all_p.to(dtype), all_w.to(dtype)
        columns_a2p = all_p if all_n is None else torch.cat([all_p, all_n.to(dtype)])
        scale = self.logit_scale.to(dtype)
        target = torch.arange(rows.start, rows.stop, device=all_a.device)

        # For p2a, row j is positive j and column i anchor i: the same tests with the two id
        # lists swapped (the target of row j is anchor j). Hard negatives are columns of a2p only.
        mask_a2p = self._mask(all_aid, col_ids, rows, known_pairs)
        mask_p2a = self._mask(all_pid, all_aid, rows, known_pairs)
        w = all_w[rows]
        total_w = all_w.sum()
        ce, hits = 0.0, None
        for dim in self.matryoshka_dims or (None,):
            a, p, c = _prefix(all_a, dim, self.normalize), _prefix(all_p, dim, self.normalize), \
                _prefix(columns_a2p, dim, self.normalize)
            logits_a2p = scale * a[rows] @ c.T  # (R, N [+ M]): anchor row -> positive (+ negative) columns
            logits_p2a = scale * p[rows] @ a.T  # (R, N): positive row -> anchor columns
            if mask_a2p is not None:
                logits_a2p = logits_a2p.masked_fill(mask_a2p, float("-inf"))
            if mask_p2a is not None:
                logits_p2a = logits_p2a.masked_fill(mask_p2a, float("-inf"))
            ce = ce + F.cross_entropy(logits_a2p, target, reduction="none") + F.cross_entropy(
                logits_p2a, target, reduction="none")
            if hits is None:  # accuracy at the full (largest) dimension
                with torch.no_grad():
                    hits = ((logits_a2p.argmax(1) == target).to(dtype) + (logits_p2a.argmax(1) == target).to(dtype))
        n_dims = len(self.matryoshka_dims or (None,))
        # local_loss: W * this rank's share of the global sum, so the mean over ranks is L.
        factor = info.world_size if self.local_loss else 1
        loss = factor * (w * ce).sum() / (2 * total_w * n_dims)

        with torch.no_grad():
            weighted_hits = (w * hits).sum().reshape(1)
            if self.local_loss:  # sum the other ranks' rows in too: accuracy of the global batch
                weighted_hits = all_gather_no_grad(weighted_hits, [1] * info.world_size).sum()
            accuracy = weighted_hits.sum() / (2 * total_w)
        return {"loss": loss, "logit_scale": scale.detach(), "accuracy": accuracy}

    def _gather_negatives(self, negative_emb, negative_ids, info, all_pid):
        """``(all negatives or None, a2p column ids)``: every rank's hard negatives, in rank order."""
        if negative_emb is None:
            return None, all_pid
        sizes = gather_sizes(negative_emb.shape[0], negative_emb.device)
        if sum(sizes) == 0:
            return None, all_pid
        start = sum(sizes[: info.rank])
        gather = all_gather_with_grad if self.gather_with_grad else _gather_keep_local(start)
        all_n = gather(negative_emb, sizes)
        all_nid = all_gather_no_grad(negative_ids.to(negative_emb.device, torch.int64), sizes)
        return all_n, torch.cat([all_pid, all_nid])

    def _mask(self, row_ids_all, col_ids_all, rows: slice, known_pairs):
        """(R, N) bool: True where column j is not a negative for row i (never on the target).

        ``row_ids_all`` are the ids of the row side (anchors for a2p), ``col_ids_all`` the ids
        of the column side; the target of global row i is column i.
        """
        n = col_ids_all.shape[0]
        row_ids = row_ids_all[rows]
        row_target = col_ids_all[rows]
        mask = torch.zeros(row_ids.shape[0], n, dtype=torch.bool, device=col_ids_all.device)
        if self.mask_duplicates:
            mask |= col_ids_all[None, :] == row_target[:, None]  # the target item again
            mask |= col_ids_all[None, :] == row_ids[:, None]  # the row's own item
        if known_pairs is not None:
            keys = known_pairs
            if not (torch.is_tensor(keys) and keys.dim() == 1):
                keys = encode_pairs(keys)
            keys = keys.to(col_ids_all.device)
            # Keys hold both orders, so testing (row, col) covers (anchor, positive) either way.
            cand = (row_ids[:, None] << 32) | col_ids_all[None, :]
            mask |= torch.isin(cand, keys)
        if not mask.any():
            return None
        local = torch.arange(mask.shape[0], device=mask.device)
        mask[local, local + rows.start] = False  # the target itself is never masked
        return mask


def _prefix(emb: torch.Tensor, dim: int | None, normalize: bool) -> torch.Tensor:
    """The first ``dim`` coordinates (re-normalised when the loss normalises); all of them for None."""
    if dim is None or dim >= emb.shape[1]:
        return emb
    return F.normalize(emb[:, :dim], dim=-1) if normalize else emb[:, :dim]


def _gather_keep_local(start: int):
    """open_clip's gather_with_grad=False: detached copies of other ranks, own slice with grad."""

    def gather(t, sizes):
        full = all_gather_no_grad(t, sizes)
        if full.shape[0] == t.shape[0]:  # single process: nothing was gathered
            return t
        return torch.cat([full[:start], t, full[start + t.shape[0]:]], dim=0)

    return gather
