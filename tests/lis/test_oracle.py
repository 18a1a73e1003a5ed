"""The oracle's free embedding table: it learns the pairs, and a large pair set gets enough steps."""
from __future__ import annotations

import numpy as np
import pandas as pd

from lis import oracle
from lis.oracle import fit_pair_embeddings


def clustered_pairs(n_items=60, n_groups=6, seed=0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    group = np.arange(n_items) % n_groups
    anchors, positives = [], []
    for a in range(n_items):
        mates = np.flatnonzero((group == group[a]) & (np.arange(n_items) != a))
        for p in rng.choice(mates, 3, replace=False):
            anchors.append(f"i{a}")
            positives.append(f"i{p}")
    return pd.DataFrame({"anchor_id": anchors, "positive_id": positives, "weight": 1.0})


def test_pairs_become_close_vectors():
    table = fit_pair_embeddings(clustered_pairs(), dim=16, steps=300, seed=0)
    vectors = table.vectors[table.index_of([f"i{k}" for k in range(60)])]
    sims = vectors @ vectors.T
    same = (np.arange(60)[:, None] % 6) == (np.arange(60)[None, :] % 6)
    np.fill_diagonal(same, False)
    assert sims[same].mean() > sims[~same].mean() + 0.3


def test_steps_are_a_floor_that_grows_with_the_pairs(monkeypatch):
    seen = []
    monkeypatch.setattr(oracle, "_train", lambda *args: seen.append(args[6]))
    small = clustered_pairs()                                   # 180 pairs: the floor decides
    fit_pair_embeddings(small, dim=4, steps=600, batch_size=64)
    big = pd.concat([small] * 200, ignore_index=True)           # 36,000 pairs, batch 64
    fit_pair_embeddings(big, dim=4, steps=600, batch_size=64)
    assert seen == [600, int(np.ceil(oracle.MIN_EPOCHS * len(big) / 64))]


def test_tables_fitted_in_worker_processes_are_the_tables_fitted_here_in_the_order_of_the_jobs():
    jobs = [dict(pairs=clustered_pairs(seed=s), dim=8, steps=100, seed=s) for s in range(3)]
    here = oracle.fit_in_processes(jobs, workers=1)
    there = oracle.fit_in_processes(jobs, workers=2)
    assert [t.ids for t in there] == [t.ids for t in here]
    for a, b in zip(there, here):
        np.testing.assert_array_equal(a.vectors, b.vectors)
