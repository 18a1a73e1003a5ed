"""Pooling a window of similarities: max, mean and attention against a plain reference."""
from __future__ import annotations

import numpy as np
import torch

from lis.pooling import pool_windows


def reference(sims: np.ndarray, valid: np.ndarray, tau: float) -> np.ndarray:
    out = np.zeros((len(sims), 3))
    for r, (row, ok) in enumerate(zip(sims, valid)):
        if not ok.any():
            continue
        s = row[ok]
        w = np.exp((s - s.max()) / tau)
        out[r] = (s.max(), s.mean(), (w * s).sum() / w.sum())
    return out


def test_pool_windows_equals_reference_and_zeroes_empty_windows():
    rng = np.random.default_rng(0)
    sims = rng.uniform(-1, 1, (50, 12)).astype(np.float32)
    valid = rng.random((50, 12)) < 0.5
    valid[:3] = False                                     # empty windows pool to zeros
    tau = 0.1
    pooled = pool_windows(torch.from_numpy(sims / tau), torch.from_numpy(valid), tau).numpy()
    np.testing.assert_allclose(pooled, reference(sims, valid, tau), rtol=1e-5, atol=1e-5)
    assert (pooled[:3] == 0).all()


def test_large_pair_weights_do_not_overflow():
    sims = np.array([[1e4, 3e4, 0.0]], dtype=np.float32)
    pooled = pool_windows(torch.from_numpy(sims / 0.1), torch.ones((1, 3), dtype=torch.bool), 0.1).numpy()
    assert np.isfinite(pooled).all() and abs(pooled[0, 0] - 3e4) < 1 and abs(pooled[0, 2] - 3e4) < 1
