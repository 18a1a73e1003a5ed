"""Benchmark of the LIS numeric core: features, probe, AUC, GAUC, the evaluator API, memory.

Run:  .venv/bin/python bench/bench_lis.py                     # the `bench` preset (default)
      .venv/bin/python bench/bench_lis.py --source synthetic  # long histories, numpy-made log

Sources:
* ``preset`` (default): the simulated platform's ``bench`` preset (seed 1: 1.16M impressions,
  20k items), simulated once into ``--world`` (reused when it is already there, ~35 s
  otherwise; delete it after the world changes). Every impression is a target (history L=50 from the log before it); the table
  scored is d=64: the true 16-d latents through a random projection plus noise, so the gain
  is real. The evaluator's own API (LISEvaluator on the 30% evaluation window) is timed too.
  Histories are longer in the feed world (users engage ~24 items in two months) than in the
  previous one (~9), so the features do more work per impression.
* ``synthetic``: a log built with numpy (fit-window rows at 50% engagement so histories reach
  L=50, then >= 1M target rows at ~10%), the worst case for the features.

Each baseline and our code run on the same input in the same process, are checked to agree,
and one table is printed: size, baseline time, ours, ratio. Baselines that would take minutes
(row-by-row features, a per-user sklearn loop, the reference bootstrap) run on a subsample and
are extrapolated per impression / per user / per resample; the table says so. The reference
AIS probe is the straightforward pipeline: row-by-row Python features, scikit-learn
LogisticRegression with and without phi, roc_auc_score, and a user bootstrap of the AUC gain
by resampled rows (ours also bootstraps GAUC, so the ratio is conservative). Timings are
wall-clock on a possibly shared machine: the load average is printed with the machine.
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
from lis.features import HistoryIndex  # noqa: E402
from lis.pooling import pool_windows  # noqa: E402
from lis.bootstrap import user_resamples  # noqa: E402
from lis.metrics import auc, gauc  # noqa: E402
from lis.probe import probe_gain  # noqa: E402
from lis.threads import one_torch_thread  # noqa: E402

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


def preset_world(world_dir, seed: int, dim: int, progress=print):
    """The ``bench`` preset's log (all rows targets) and a d=``dim`` table carrying the true latents."""
    from pathlib import Path

    from lis.datadir import load_datadir
    from lis.embeddings import load_embeddings
    from lis.synth import simulate

    world = Path(world_dir)
    marker = world / "synth.json"
    import json

    if not marker.exists() or json.loads(marker.read_text()).get("seed") != seed or \
            json.loads(marker.read_text()).get("preset") != "bench":
        progress(f"simulating the bench preset (seed {seed}) into {world} ...")
        simulate("bench", seed, world, progress=False)
    data = load_datadir(world, check_images=False)
    truth = load_embeddings(world / "truth.safetensors")
    rng = np.random.default_rng(seed)
    # A random projection keeps the latents' geometry (up to noise) at the dimension we bench.
    projection = rng.normal(size=(truth.dim, dim)).astype(np.float32) / np.sqrt(truth.dim)
    vectors = truth.vectors @ projection + 0.3 * rng.normal(size=(len(truth.ids), dim)).astype(np.float32)
    return data, EmbeddingTable(truth.ids, vectors, {})


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
    """The memory-bound way: materialise E[hist] (n, L, d) per chunk, then one bmm (docs/design.md, "Measured notes")."""
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


def reference_probe(features, base, labels, users, fit, test, n_resamples, seed=0):
    """The straightforward probe: sklearn LogisticRegression with/without phi, roc_auc_score, and a
    bootstrap over users by resampled rows. Returns (auc gain, seconds of fits and point AUCs,
    seconds per resample)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    def fitted_scores(X):
        scaler = StandardScaler().fit(X[fit])
        model = LogisticRegression(C=1e6, max_iter=1000).fit(scaler.transform(X[fit]), labels[fit])
        return model.decision_function(scaler.transform(X[test]))

    start = time.perf_counter()
    without = fitted_scores(base)
    with_phi = fitted_scores(np.column_stack((base, features)))
    y = labels[test]
    gain = roc_auc_score(y, with_phi) - roc_auc_score(y, without)
    t_fit = time.perf_counter() - start
    rows_of = pd.Series(np.arange(len(y))).groupby(users[test]).apply(np.asarray)
    rng = np.random.default_rng(seed)
    start = time.perf_counter()
    for _ in range(n_resamples):
        rows = np.concatenate(rows_of.iloc[rng.integers(0, len(rows_of), len(rows_of))].to_list())
        roc_auc_score(y[rows], with_phi[rows]) - roc_auc_score(y[rows], without[rows])
    return gain, t_fit, (time.perf_counter() - start) / max(n_resamples, 1)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", choices=("preset", "synthetic"), default="preset",
                        help="the bench preset of the simulated platform (default) or a numpy-made log")
    parser.add_argument("--world", default=os.path.join(os.environ.get("TMPDIR", "/tmp"), "lis_bench_world"),
                        help="where the preset world is simulated once and reused (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=1, help="preset seed (default: %(default)s)")
    parser.add_argument("--ref-resamples", type=int, default=10,
                        help="bootstrap resamples the reference runs (extrapolated to 200)")
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

    evaluator = None
    if args.source == "preset":
        data, table = preset_world(args.world, args.seed, args.dim)
        log, target = data.log, np.ones(len(data.log), dtype=bool)
        evaluator = bench_evaluator(data, table)
        # Base logits for every row from the evaluator's ranker (in-sample on the fit window:
        # fine for timing, and the probe only needs a column).
        log = log.assign(base_logit=evaluator.ranker.predict_logits(log))
        describe = (f"bench preset (seed {args.seed}): {data.log['user_id'].nunique():,} users, "
                    f"{len(data.catalogue):,} items")
    else:
        log, target, table = synthetic_log(args.users, args.items, args.fit_rows, args.targets, args.dim)
        describe = f"synthetic: {args.users:,} users, {args.items:,} items"
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
    with one_torch_thread():   # the gather's best setting on a shared 2-core machine, as ours
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
                          users[test], users[fit], bootstrap=resamples, return_scores=True)

    result, t_probe = timed(probe_once)
    controls = index.controls(table)
    ref_gain, t_ref_sklearn, t_ref_resample = reference_probe(
        index.features(table), np.column_stack((base, controls)), labels, users, fit, test, args.ref_resamples)
    assert abs(ref_gain - result["auc_gain"]) < 2e-3, (ref_gain, result["auc_gain"])
    t_reference = t_ref / args.ref_sample * n + t_ref_sklearn + 200 * t_ref_resample
    row("AIS probe vs reference pipeline", f"{n:,} imps", t_reference, t_probe,
        f"ours {n / t_probe / 1e6:.2f}M/s: features+controls+4 fits (global and within-user probes)+score+bootstrap(200, AUC+GAUC); "
        f"ref = row-by-row features (extrap.) {t_ref / args.ref_sample * n:.0f}s + sklearn fits {t_ref_sklearn:.1f}s "
        f"+ 200 resamples (extrap. from {args.ref_resamples}) {200 * t_ref_resample:.0f}s; "
        f"AUC gain ours {result['auc_gain']:+.4f} [{result['auc_gain_ci'][0]:+.4f}, {result['auc_gain_ci'][1]:+.4f}], "
        f"ref {ref_gain:+.4f}")
    if evaluator is not None:
        n_eval = len(evaluator.index.rows)
        ais, t_ais = timed(evaluator.score_table, table, "bench")
        row("LISEvaluator.score_table (AIS, eval window)", f"{n_eval:,} imps", None, t_ais,
            f"{n_eval / t_ais / 1e6:.2f}M/s; AUC gain {ais['auc_gain']:+.4f}; evaluator built once in "
            f"{evaluator.build_seconds:.1f}s (ranker fit, index, resamples)")

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
    user_codes = pd.factorize(test_users)[0]      # ids may be strings (the preset) or ints
    order = np.argsort(user_codes, kind="stable")
    cuts = np.flatnonzero(np.diff(user_codes[order])) + 1
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
    print(f"data: {describe}, {len(log):,} log rows ({n:,} targets), "
          f"L={args.max_len}, d={args.dim}, mean history {index.history_length.mean():.1f}")
    header = ("what", "size", "baseline s", "ours s", "ratio", "note")
    widths = [max(len(str(r[i])) for r in ROWS + [header]) for i in range(5)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths) + "  {}"
    print(fmt.format(*header))
    for r in ROWS:
        print(fmt.format(*r))
    print(f"peak RSS: {peak_gib:.2f} GiB (target <= 4 GiB)")


def bench_evaluator(data, table):
    """The evaluator as the CLI builds it (built-in ranker, 30% evaluation window), timed."""
    from lis.evaluator import EvaluatorConfig, LISEvaluator

    start = time.perf_counter()
    evaluator = LISEvaluator(data.log, data.catalogue, EvaluatorConfig(), name="bench")
    evaluator.build_seconds = time.perf_counter() - start
    return evaluator


if __name__ == "__main__":
    main()
