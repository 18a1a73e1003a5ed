"""Similarity features phi(E; u, i, t) of an item-embedding table, computed without per-impression gathers.

For every *target* impression (user u, candidate item i, time t) the history H_u(t) is the last
``max_len`` (L) items u engaged with (label 1) strictly before t, drawn from the whole log
before t (earlier fit-window rows included). **Tie rule:** an engagement with the same
timestamp as the impression is *not* in its history. A user who engaged an item twice has it
twice in the history.

Features of a table (:meth:`HistoryIndex.features`, float32, columns :data:`FEATURE_NAMES`):
cosine between the candidate's vector and each history item's vector, pooled as max, mean and
attention (softmax of cosine / tau, weighting the cosines; tau = 0.1). History items absent
from the table are dropped from the history (the window of L items is fixed by the log, so the
usable history may be shorter); a candidate absent from the table, or an impression with no
usable history, gets all-zero features. Controls (:meth:`HistoryIndex.controls`, columns
:data:`CONTROL_NAMES`) do not come from the vectors: log1p of the history length in the log,
a history-missing flag (no usable history item) and a candidate-missing flag.

:meth:`HistoryIndex.pair_features` is the LIS fast-mode variant: the similarity of
(candidate, history item) is a sparse pair weight ``weights[candidate, history_item]`` (0 for
pairs not stored) instead of a cosine; pooling is the same code.

How it is fast (docs/science.md section 12, "Performance"): nothing per impression is gathered. Each user's target
impressions are cut into *blocks* of up to ``block_rows`` consecutive impressions; a block's
windows are contiguous ranges of the user's engaged sequence, so the block needs one matrix
product between its candidate vectors and one *span* of that sequence, and a range mask picks
each impression's window. Blocks of similar shape are padded into batches and run as one
``torch.bmm``. All of this is index structure built once by :meth:`HistoryIndex.build` and reused
for every table; a table costs one normalisation plus the batched products.

Limits: a block whose span would exceed ``2 * max_len`` engagements (a bursty heavy user) is
split into smaller blocks, so results stay exact, only the padding grows. While features are
computed torch is set to one intra-op thread (process-wide, restored afterwards) and the
batches run on ``workers`` Python threads (default 2). Item ids are compared as strings.
Memory: the index holds a boolean window mask of about n_targets x (max_len + 8) bytes.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from lis.errors import DataError
from lis.pooling import DEFAULT_TAU, pair_block_sims, pool_windows
from lis.threads import one_torch_thread

FEATURE_NAMES = ("sim_max", "sim_mean", "sim_attention")
CONTROL_NAMES = ("log1p_history_length", "history_missing", "candidate_missing")
# Row counts a block is padded to; finer than powers of two so small users waste little.
_ROW_LADDER = np.array([1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64])
# Elements (rows x span) per batch: big enough to amortise Python, small enough to stay in cache.
_BATCH_ELEMENTS = 1 << 17


@dataclass
class _Batch:
    """Padded blocks of one shape. Item codes use ``n_items`` as the padding sentinel."""

    cand: torch.Tensor       # (nb, R) int64 candidate item codes
    span: torch.Tensor       # (nb, W) int64 item codes of the block's span of engaged items
    window: torch.Tensor     # (nb, R, W) bool: span entry c is in row r's window (table-independent)
    rows: torch.Tensor       # (k,) int64 flat positions (in nb*R) of real (non-padding) rows
    dst: torch.Tensor        # (k,) int64 target index each real row writes to


class HistoryIndex:
    """Per-impression histories of a log, as reusable index structure for fast features.

    Build with :meth:`build`. Attributes: ``rows`` (position of each target impression in the
    log), ``item_ids`` (the log's item vocabulary, which the code arrays index), ``max_len``.
    Features are returned in the order of ``rows`` (log order). :meth:`subset` restricts the
    targets (e.g. to one cross-fitting fold) while sharing the engaged sequences.
    """

    def __init__(self, *, item_ids, eng_item, max_len, rows, t_user, t_item, start, end, block_rows=32,
                 workers=None):
        self.item_ids = item_ids
        # Python threads sharing the batches; torch itself runs single-threaded (see _pooled).
        self.workers = int(workers) if workers else min(2, os.cpu_count() or 1)
        self.max_len = int(max_len)
        self.block_rows = int(block_rows)
        self._eng_item = eng_item           # (E,) engaged item codes ordered by (user, time)
        self.rows = rows                    # (N,) log positions of the targets, increasing
        self._t_user = t_user
        self._t_item = t_item
        self._start = start                 # (N,) window [start, end) in the engaged arrays
        self._end = end
        self._batches = self._make_batches()

    # ------------------------------------------------------------------ construction
    @classmethod
    def build(cls, log: pd.DataFrame, target_mask=None, max_len: int = 50, block_rows: int = 32,
              name: str = "log", workers: int | None = None) -> "HistoryIndex":
        """Index the histories of the target rows of ``log`` (all rows when ``target_mask`` is None).

        ``log`` needs columns user_id, item_id, timestamp, label in non-decreasing time order.
        ``target_mask`` is a boolean array over the log's rows (or an array of row positions).
        """
        missing = [c for c in ("user_id", "item_id", "timestamp", "label") if c not in log.columns]
        if missing:
            raise DataError(f"{name}: missing column(s) {missing} needed for histories.")
        if max_len < 1:
            raise DataError(f"{name}: history length max_len must be >= 1; got {max_len}.")
        n = len(log)
        if n == 0:
            raise DataError(f"{name}: no rows; histories need at least one impression.")
        time_rank = _time_ranks(log["timestamp"].to_numpy(), name)
        # Factorise raw values and stringify only the uniques (ids compare as strings with tables).
        user, _ = pd.factorize(log["user_id"], sort=False)
        item, item_uniques = pd.factorize(log["item_id"], sort=False)
        item_ids = np.asarray(item_uniques).astype(str)
        labels = log["label"].to_numpy()
        engaged = np.flatnonzero(labels == 1)
        # Stable sort by user keeps time order inside each user: the engaged sequence.
        eng = engaged[np.argsort(user[engaged], kind="stable")]
        eng_user = user[eng].astype(np.int64)
        stride = np.int64(time_rank[-1] + 2)
        eng_key = eng_user * stride + time_rank[eng]
        n_users = int(user.max()) + 1
        eng_ptr = np.concatenate(([0], np.cumsum(np.bincount(eng_user, minlength=n_users))))

        rows = _target_rows(target_mask, n, name)
        t_user = user[rows].astype(np.int64)
        # 'left': engagements at the very same time are not history (the tie rule).
        end = np.searchsorted(eng_key, t_user * stride + time_rank[rows], "left")
        start = np.maximum(end - max_len, eng_ptr[t_user])
        return cls(item_ids=item_ids, eng_item=item[eng].astype(np.int64),
                   max_len=max_len, rows=rows, t_user=t_user, t_item=item[rows].astype(np.int64),
                   start=start, end=end, block_rows=block_rows, workers=workers)

    def subset(self, target_mask) -> "HistoryIndex":
        """A new index over a subset of this index's targets (boolean mask over ``rows``)."""
        keep = np.asarray(target_mask, dtype=bool)
        if keep.shape != self.rows.shape:
            raise DataError(f"subset: mask must have one entry per target ({len(self.rows)}); got {keep.shape}.")
        return HistoryIndex(item_ids=self.item_ids, eng_item=self._eng_item, max_len=self.max_len,
                            rows=self.rows[keep], t_user=self._t_user[keep], t_item=self._t_item[keep],
                            start=self._start[keep], end=self._end[keep], block_rows=self.block_rows,
                            workers=self.workers)

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def history_length(self) -> np.ndarray:
        """Number of history items of each target in the log (before any table drops items)."""
        return self._end - self._start

    def history_items(self, k: int) -> np.ndarray:
        """Item codes of target ``k``'s history, oldest first (for inspection and tests)."""
        return self._eng_item[self._start[k]:self._end[k]]

    def _make_batches(self) -> list[_Batch]:
        """Cut each user's targets into blocks, split wide blocks, pad similar shapes into batches."""
        n = len(self.rows)
        if n == 0:
            return []
        order = np.argsort(self._t_user, kind="stable")   # (user, time) order
        s_user, s_start, s_end = self._t_user[order], self._start[order], self._end[order]
        first, count = _initial_blocks(s_user, self.block_rows)
        cap = max(2 * self.max_len, 16)
        while True:   # halve blocks whose span is much wider than one window (bursty heavy users)
            width = s_end[first + count - 1] - s_start[first]
            wide = (width > cap) & (count > 1)
            if not wide.any():
                break
            half = count[wide] // 2
            first = np.concatenate((first[~wide], first[wide], first[wide] + half))
            count = np.concatenate((count[~wide], half, count[wide] - half))
        width = s_end[first + count - 1] - s_start[first]
        r_pad = _ROW_LADDER[np.searchsorted(_ROW_LADDER, count)]
        w_pad = np.maximum(8 * ((width + 7) // 8), 8)
        sentinel = len(self.item_ids)
        batches = []
        shape_order = np.lexsort((w_pad, r_pad))
        shapes = np.stack((r_pad[shape_order], w_pad[shape_order]), axis=1)
        cuts = np.flatnonzero(np.any(np.diff(shapes, axis=0) != 0, axis=1)) + 1
        for group in np.split(shape_order, cuts):
            R, W = int(r_pad[group[0]]), int(w_pad[group[0]])
            per_batch = max(1, _BATCH_ELEMENTS // (R * W))
            for lo_b in range(0, len(group), per_batch):
                blocks = group[lo_b:lo_b + per_batch]
                batches.append(self._batch(blocks, first, count, R, W, order, s_start, s_end, sentinel))
        return batches

    def _batch(self, blocks, first, count, R, W, order, s_start, s_end, sentinel) -> _Batch:
        f, c = first[blocks], count[blocks]
        pos = f[:, None] + np.arange(R)[None, :]
        real = np.arange(R)[None, :] < c[:, None]
        pos = np.where(real, pos, f[:, None])                 # padding rows copy row 0, then are ignored
        span0 = s_start[f]
        lo = np.where(real, s_start[pos] - span0[:, None], 0)
        hi = np.where(real, s_end[pos] - span0[:, None], 0)
        cand = np.where(real, self._t_item[order[pos]], sentinel)
        span_pos = span0[:, None] + np.arange(W)[None, :]
        in_span = span_pos < s_end[f + c - 1][:, None]
        if len(self._eng_item):
            span = np.where(in_span, self._eng_item[np.minimum(span_pos, len(self._eng_item) - 1)], sentinel)
        else:   # nobody engaged with anything: every span is padding
            span = np.full(span_pos.shape, sentinel, dtype=np.int64)
        flat = np.flatnonzero(real.ravel())
        cols = np.arange(W)[None, None, :]
        window = (cols >= lo[..., None]) & (cols < hi[..., None])
        return _Batch(cand=torch.from_numpy(cand), span=torch.from_numpy(span), window=torch.from_numpy(window),
                      rows=torch.from_numpy(flat), dst=torch.from_numpy(order[pos].ravel()[flat]))

    # ------------------------------------------------------------------ per table
    def features(self, table, tau: float = DEFAULT_TAU) -> np.ndarray:
        """(n_targets, 3) float32 cosine features (max, mean, attention) of an ``EmbeddingTable``."""
        vectors, present = self._item_vectors(table)
        scaled = vectors / tau                     # sim / tau straight out of the product

        def cosine(batch: _Batch) -> torch.Tensor:
            nb, R = batch.cand.shape
            cand = scaled.index_select(0, batch.cand.reshape(-1)).view(nb, R, -1)
            span = vectors.index_select(0, batch.span.reshape(-1)).view(nb, batch.span.shape[1], -1)
            return torch.bmm(cand, span.transpose(1, 2))

        return self._pooled(cosine, present, tau)

    def pair_features(self, weights, item_ids=None, tau: float = DEFAULT_TAU) -> np.ndarray:
        """(n_targets, 3) float32 features where sim(candidate c, history item h) = ``weights[c, h]``.

        ``weights`` is a scipy.sparse (n x n) matrix over ``item_ids`` (default: this index's
        ``item_ids``); pairs not stored have similarity 0. Items outside ``item_ids`` count as
        missing, exactly like items absent from an embedding table. The caller chooses the
        direction (pass ``weights.T`` or a symmetrised matrix for the other conventions).
        """
        import scipy.sparse as sp

        if not sp.issparse(weights):
            raise DataError(f"pair_features: weights must be a scipy.sparse matrix; got {type(weights).__name__}.")
        csr = sp.csr_matrix(weights, dtype=np.float32)
        csr.sum_duplicates()
        n_w = csr.shape[0]
        if csr.shape[0] != csr.shape[1]:
            raise DataError(f"pair_features: weights must be square; got shape {csr.shape}.")
        if item_ids is None:
            if n_w != len(self.item_ids):
                raise DataError(f"pair_features: weights are {n_w} x {n_w} but the index has {len(self.item_ids)} items; pass item_ids.")
            item_pos = np.arange(n_w, dtype=np.int64)
        else:
            if len(item_ids) != n_w:
                raise DataError(f"pair_features: {len(item_ids)} item_ids for a {n_w} x {n_w} weight matrix.")
            lookup = pd.Index(np.asarray(item_ids, dtype=str))
            item_pos = lookup.get_indexer(self.item_ids.astype(str)).astype(np.int64)
        item_pos = np.append(item_pos, -1)                    # the padding sentinel is missing
        present = torch.from_numpy(item_pos >= 0)
        indptr, indices = csr.indptr.astype(np.int64), csr.indices.astype(np.int64)
        data = csr.data / np.float32(tau)          # sim / tau, as the pooling expects

        def pair(batch: _Batch) -> torch.Tensor:
            return torch.from_numpy(pair_block_sims(item_pos[batch.cand.numpy()], item_pos[batch.span.numpy()],
                                                     indptr, indices, data, n_w + 1))

        return self._pooled(pair, present, tau)

    @property
    def target_items(self) -> np.ndarray:
        """Code (position in ``item_ids``) of each target impression's candidate, in ``rows`` order."""
        return self._t_item

    def controls(self, table=None, present=None) -> np.ndarray:
        """(n_targets, 3) float32 controls: log1p(history length), history-missing, candidate-missing.

        Pass an ``EmbeddingTable`` (or ``present``: a boolean array over ``item_ids`` saying which
        items have a vector / pair row). The length is the log's; the history-missing flag is 1
        when no history item is usable with this table.
        """
        if present is None:
            if table is None:
                raise DataError("controls: pass an embedding table or a 'present' mask over item_ids.")
            present = _table_rows(table, self.item_ids) >= 0
        present = np.asarray(present, dtype=bool)
        if len(present) != len(self.item_ids):
            raise DataError(f"controls: present mask has {len(present)} entries; the index has {len(self.item_ids)} items.")
        usable = np.concatenate(([0], np.cumsum(present[self._eng_item])))
        n_usable = usable[self._end] - usable[self._start]
        out = np.empty((len(self.rows), 3), dtype=np.float32)
        out[:, 0] = np.log1p(self._end - self._start)
        out[:, 1] = n_usable == 0
        out[:, 2] = ~present[self._t_item]
        return out

    def present_items(self, item_ids) -> np.ndarray:
        """Boolean mask over this index's ``item_ids``: which appear in ``item_ids`` (for :meth:`controls`)."""
        return pd.Index(np.asarray(item_ids, dtype=str)).get_indexer(self.item_ids.astype(str)) >= 0

    def _item_vectors(self, table) -> tuple[torch.Tensor, torch.Tensor]:
        """Unit vectors per index item (zero row for missing items and the sentinel) and presence."""
        rows = _table_rows(table, self.item_ids)
        vectors = np.asarray(table.vectors, dtype=np.float32)
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        # A zero vector stays zero (cosine 0) rather than dividing by zero.
        unit = vectors / np.maximum(norms, 1e-12)
        out = np.zeros((len(self.item_ids) + 1, vectors.shape[1]), dtype=np.float32)
        have = rows >= 0
        out[:-1][have] = unit[rows[have]]
        present = np.append(have, False)
        return torch.from_numpy(out), torch.from_numpy(present)

    def _pooled(self, similarity, present: torch.Tensor, tau: float) -> np.ndarray:
        """Run ``similarity(batch) -> (nb, R, W)`` (already / tau) on every batch and pool each window.

        Batches are small (cache-sized), where torch's intra-op threads cost more than they give
        (on a busy 2-core machine 2 intra-op threads were 15x slower), so torch runs
        single-threaded and the batches are shared among ``self.workers`` Python threads
        (torch releases the GIL inside each op). Batches write disjoint output rows.
        """
        out = torch.zeros((len(self.rows), 3), dtype=torch.float32)

        def run(batches):
            with torch.no_grad():
                for batch in batches:
                    nb, _, W = batch.window.shape
                    usable = present.index_select(0, batch.span.reshape(-1)).view(nb, 1, W)
                    pooled = pool_windows(similarity(batch), batch.window & usable, tau).reshape(-1, 3)
                    out[batch.dst] = pooled[batch.rows]

        workers = max(1, min(self.workers, len(self._batches)))
        with one_torch_thread():
            if workers == 1:
                run(self._batches)
            else:
                from concurrent.futures import ThreadPoolExecutor

                with ThreadPoolExecutor(workers) as pool:
                    list(pool.map(run, [self._batches[k::workers] for k in range(workers)]))
        result = out.numpy()
        result[~present.numpy()[self._t_item]] = 0.0            # a missing candidate has no similarity
        return result


def similarity_features(index: HistoryIndex, table, tau: float = DEFAULT_TAU) -> np.ndarray:
    """Features then controls side by side: (n_targets, 6) float32 (``FEATURE_NAMES + CONTROL_NAMES``)."""
    return np.concatenate((index.features(table, tau), index.controls(table)), axis=1)


# ---------------------------------------------------------------------- helpers
def _time_ranks(timestamps: np.ndarray, name: str) -> np.ndarray:
    """Dense rank of each (already sorted) timestamp: equal times share a rank."""
    if np.issubdtype(timestamps.dtype, np.datetime64):
        timestamps = timestamps.astype("datetime64[ns]").astype(np.int64)
    timestamps = np.asarray(timestamps)
    if not np.issubdtype(timestamps.dtype, np.number):
        raise DataError(f"{name}: column 'timestamp' must be numeric or datetime; got dtype {timestamps.dtype}.")
    steps = np.diff(timestamps)
    if (steps < 0).any():
        row = int(np.flatnonzero(steps < 0)[0]) + 1
        raise DataError(
            f"{name}: column 'timestamp' must be in non-decreasing order; row {row} holds "
            f"{timestamps[row]!r} after {timestamps[row - 1]!r}."
        )
    return np.concatenate(([0], np.cumsum(steps > 0))).astype(np.int64)


def _target_rows(target_mask, n: int, name: str) -> np.ndarray:
    if target_mask is None:
        return np.arange(n, dtype=np.int64)
    target_mask = np.asarray(target_mask)
    if target_mask.dtype == bool:
        if target_mask.shape != (n,):
            raise DataError(f"{name}: target mask must have one entry per log row ({n}); got shape {target_mask.shape}.")
        return np.flatnonzero(target_mask).astype(np.int64)
    rows = np.unique(target_mask.astype(np.int64))
    if len(rows) and (rows[0] < 0 or rows[-1] >= n):
        raise DataError(f"{name}: target rows must lie in [0, {n}); got {int(rows[0] if rows[0] < 0 else rows[-1])}.")
    return rows


def _initial_blocks(sorted_user: np.ndarray, block_rows: int) -> tuple[np.ndarray, np.ndarray]:
    """Cut each user's run of targets (in (user, time) order) into chunks of <= block_rows."""
    boundaries = np.flatnonzero(np.diff(sorted_user)) + 1
    seg_start = np.concatenate(([0], boundaries))
    seg_len = np.diff(np.concatenate((seg_start, [len(sorted_user)])))
    per_user = (seg_len + block_rows - 1) // block_rows
    user_of_block = np.repeat(np.arange(len(seg_start)), per_user)
    k = np.arange(len(user_of_block)) - np.repeat(np.cumsum(per_user) - per_user, per_user)
    first = seg_start[user_of_block] + k * block_rows
    count = np.minimum(block_rows, seg_start[user_of_block] + seg_len[user_of_block] - first)
    return first.astype(np.int64), count.astype(np.int64)


def _table_rows(table, item_ids: np.ndarray) -> np.ndarray:
    """Row of each index item in ``table`` (-1 where the table lacks it)."""
    return pd.Index(np.asarray(table.ids, dtype=str)).get_indexer(item_ids.astype(str)).astype(np.int64)
