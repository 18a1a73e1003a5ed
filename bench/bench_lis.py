"""Benchmark of the LIS numeric core: features, probe, AUC, GAUC, memory.

Run:  .venv/bin/python bench/bench_lis.py [--users 20000 --items 20000 --targets 1200000]

Builds a synthetic log directly with numpy (fit-window rows at 50% engagement so histories
reach L=50, then >= 1M target rows at ~10%), runs each baseline and our code on the same input
in the same process, checks that they agree, and prints one table: size, baseline time, ours,
ratio. Baselines that would take minutes (row-by-row features, a per-user sklearn loop) run
on a subsample and are extrapolated per impression / per user; the table says so. Timings
are wall-clock on a possibly shared machine: the load average is printed with the machine.
"""
from __future__ import annotations

import argparse
import os
import resource
import sys
import time

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import roc_auc_score

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from lis.embeddings import EmbeddingTable  # noqa: E402
from lis.features import HistoryIndex, pool_windows  # noqa: E402
from lis.metrics import auc, gauc, user_resamples  # noqa: E402
from lis.probe import probe_gain  # noqa: E402

ROWS = []


def row(what, size, baseline, ours, note=""):
    ratio = f"{baseline / ours:.1f}x" if baseline and ours else "-"
    ROWS.append((what, size, f"{baseline:.3f}" if baseline else "-", f"{ours:.3f}", ratio, note))


def timed(fn, *args, repeat=1):
    best, out = np.inf, None
    for _ in range(repeat):
        start = time.perf_counter()
        out = fn(*args)
        best = min(best, time.perf_counter() - start)
    return out, best


def synthetic_log(n_users, n_items, n_fit, n_targets, dim, seed=0):
    """A time-sorted log (labels random, base_logit informative) and a random d-dim table: phi gain ~ 0."""
    rng = np.random.default_rng(seed)
    n = n_fit + n_targets
    latents = rng.normal(size=(n_items, dim)).astype(np.float32)
    users = rng.integers(0, n_users, n)
    items = rng.integers(0, n_items, n)
    rate = np.concatenate((np.full(n_fit, 0.5), np.full(n_targets, 0.1)))
    labels = (rng.random(n) < rate).astype(np.int8)
    log = pd.DataFrame({
        "user_id": users, "item_id": items.astype(str),
        "timestamp": (np.arange(n) // 3).astype(np.int64), "label": labels,
        "base_logit": rng.normal(size=n) + 0.8 * labels,
    })
    target = np.arange(n) >= n_fit
    return log, target, EmbeddingTable([str(i) for i in range(n_items)], latents)


def reference_features(log_users, log_items, log_times, eng, index_rows, table, max_len, tau=0.1):
    """Row by row: the user's engaged (time, item) lists, slice the last L before t, E[hist] @ E[cand]."""
    position = {item: k for k, item in enumerate(table.ids)}
    unit = table.vectors / np.linalg.norm(table.vectors, axis=1, keepdims=True)
    out = np.zeros((len(index_rows), 3), dtype=np.float32)
    for k, r in enumerate(index_rows):
        times, items = eng[log_users[r]]
        end = np.searchsorted(times, log_times[r], "left")
        hist = [position[i] for i in items[max(0, end - max_len):end] if i in position]
        cand = position.get(log_items[r])
        if cand is None or not hist:
            continue
        sims = unit[hist] @ unit[cand]
        w = np.exp((sims - sims.max()) / tau)
        out[k] = (sims.max(), sims.mean(), (w * sims).sum() / w.sum())
    return out


def batched_gather_features(index, table, n, chunk=20000, tau=0.1):
    """The memory-bound way: materialise E[hist] (n, L, d) per chunk, then one bmm (DESIGN section 5)."""
    vectors, present = index._item_vectors(table)
    L = index.max_len
    out = []
    for lo in range(0, n, chunk):
        ks = np.arange(lo, min(n, lo + chunk))
        pos = index._start[ks, None] + np.arange(L)[None, :]
        inside = pos < index._end[ks, None]
        codes = np.where(inside, index._eng_item[np.minimum(pos, len(index._eng_item) - 1)], len(index.item_ids))
        codes = torch.from_numpy(codes)
        hist = vectors[codes]                                        # (chunk, L, d): the gather
        cand = vectors[torch.from_numpy(index._t_item[ks])] / tau
        sims = torch.bmm(hist, cand[:, :, None])[..., 0]
        valid = torch.from_numpy(inside) & present[codes]
        out.append(pool_windows(sims, valid, tau))
    return torch.cat(out).numpy()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=20000)
    parser.add_argument("--items", type=int, default=20000)
    parser.add_argument("--fit-rows", type=int, default=2_000_000)
    parser.add_argument("--targets", type=int, default=1_200_000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--max-len", type=int, default=50)
    parser.add_argument("--auc-size", type=int, default=10_000_000)
    parser.add_argument("--ref-sample", type=int, default=3000, help="impressions for the row-by-row reference")
    parser.add_argument("--loop-users", type=int, default=1000, help="users for the per-user sklearn loop")
    args = parser.parse_args(argv)
    load_start = os.getloadavg()[0]

    log, target, table = synthetic_log(args.users, args.items, args.fit_rows, args.targets, args.dim)
    n = int(target.sum())

    # (a) features ---------------------------------------------------------------------------
    index, t_build = timed(HistoryIndex.build, log, target, args.max_len)
    feats, t_feat = timed(index.features, table, repeat=2)
    cpu0 = time.process_time()
    index.features(table)
    cpu_feat = time.process_time() - cpu0
    log_users, log_items, log_times = log.user_id.to_numpy(), log.item_id.to_numpy(), log.timestamp.to_numpy()
    engaged = log[log.label == 1]
    eng = {u: (g.timestamp.to_numpy(), g.item_id.to_numpy()) for u, g in engaged.groupby("user_id", sort=False)}
    eng.update({u: (np.zeros(0, np.int64), np.zeros(0, object)) for u in set(log_users) - set(eng)})
    sample = np.random.default_rng(1).choice(n, args.ref_sample, replace=False)
    ref, t_ref = timed(reference_features, log_users, log_items, log_times, eng, index.rows[sample], table, args.max_len)
    np.testing.assert_allclose(feats[sample], ref, atol=1e-5)
    n_gather = min(n, 200_000)
    gathered, t_gather = timed(batched_gather_features, index, table, n_gather)
    np.testing.assert_allclose(feats[:n_gather], gathered, atol=1e-5)
    row("features: index build (once)", f"{n:,} imps", None, t_build, f"{n / t_build / 1e6:.2f}M/s, reused by every table")
    row("features vs row-by-row ref", f"{n:,} imps", t_ref / args.ref_sample * n, t_feat,
        f"ours {n / t_feat / 1e6:.2f}M/s (CPU {cpu_feat:.2f}s); ref on {args.ref_sample} imps, extrapolated")
    row("features vs batched E[hist] gather", f"{n:,} imps", t_gather / n_gather * n, t_feat,
        f"gather {n_gather / t_gather / 1e6:.3f}M/s on {n_gather:,} imps, extrapolated")

    # (b) probe: features + controls + fit + score (+ bootstrap) -------------------------------
    half = n // 2
    fit, test = np.arange(n) < half, np.arange(n) >= half
    labels = log.label.to_numpy()[index.rows]
    base = log.base_logit.to_numpy()[index.rows]
    users = log.user_id.to_numpy()[index.rows]
    resamples, t_res = timed(user_resamples, users[test], 200, 0)

    def probe_once():
        phi = index.features(table)
        controls = index.controls(table)
        baseline = np.column_stack((base, controls))
        return probe_gain(baseline[fit], baseline[test], phi[fit], phi[test], labels[fit], labels[test],
                          users[test], bootstrap=resamples, return_scores=True)

    result, t_probe = timed(probe_once)
    row("probe: features+fit+score+bootstrap(200)", f"{n:,} imps", None, t_probe,
        f"{n / t_probe / 1e6:.2f}M/s; AUC gain {result['auc_gain']:+.4f} CI "
        f"[{result['auc_gain_ci'][0]:+.4f}, {result['auc_gain_ci'][1]:+.4f}]")

    # (c) AUC on 10M scores with ties -----------------------------------------------------------
    rng = np.random.default_rng(2)
    big_labels = (rng.random(args.auc_size) < 0.1).astype(np.int8)
    big_scores = np.round(rng.normal(size=args.auc_size) + 0.3 * big_labels, 3)
    ours_auc, t_auc = timed(auc, big_labels, big_scores, repeat=2)
    sk_auc, t_sk = timed(roc_auc_score, big_labels, big_scores)
    assert abs(ours_auc - sk_auc) < 1e-9, (ours_auc, sk_auc)
    row("AUC vs sklearn roc_auc_score", f"{args.auc_size:,} scores, ties", t_sk, t_auc, "target >= 3x")

    # (d) GAUC vs a per-user sklearn loop --------------------------------------------------------
    scores = result["scores_with"]
    test_users, test_labels = users[test], labels[test]
    ours_gauc, t_gauc = timed(gauc, test_users, test_labels, scores, repeat=2)
    order = np.argsort(test_users, kind="stable")
    cuts = np.flatnonzero(np.diff(test_users[order])) + 1
    groups = np.split(order, cuts)
    chosen = [groups[k] for k in np.random.default_rng(3).choice(len(groups), min(args.loop_users, len(groups)), replace=False)]

    def sklearn_loop(groups):
        values = [roc_auc_score(test_labels[g], scores[g]) for g in groups if 0 < test_labels[g].sum() < len(g)]
        return float(np.mean(values))

    loop_value, t_loop = timed(sklearn_loop, chosen)
    sub = np.concatenate(chosen)
    assert abs(loop_value - gauc(test_users[sub], test_labels[sub], scores[sub])) < 1e-9
    t_loop_all = t_loop / len(chosen) * len(groups)
    row("GAUC vs per-user sklearn loop", f"{len(scores):,} imps, {len(groups):,} users", t_loop_all, t_gauc,
        f"loop on {len(chosen)} users, extrapolated; target >= 30x")

    # (e) memory and machine ----------------------------------------------------------------------
    peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"machine: {affinity} cores usable ({os.cpu_count()} online), torch {torch.__version__}, "
          f"numpy {np.__version__}, feature workers {index.workers}, load average {load_start:.1f} -> "
          f"{os.getloadavg()[0]:.1f}")
    print(f"data: {args.users:,} users, {args.items:,} items, {len(log):,} log rows ({n:,} targets), "
          f"L={args.max_len}, d={args.dim}, mean history {index.history_length.mean():.1f}")
    header = ("what", "size", "baseline s", "ours s", "ratio", "note")
    widths = [max(len(str(r[i])) for r in ROWS + [header]) for i in range(5)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths) + "  {}"
    print(fmt.format(*header))
    for r in ROWS:
        print(fmt.format(*r))
    print(f"peak RSS: {peak_gib:.2f} GiB (target <= 4 GiB)")


if __name__ == "__main__":
    main()
