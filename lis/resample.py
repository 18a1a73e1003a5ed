"""Bootstrap weights of users that any engine can draw on its own: Poisson(1) from a hash.

A user's weight in resample ``b`` is a Poisson(1) count (the Poisson bootstrap: a multinomial
resample of n users with n draws is, for large n, independent Poisson(1) counts per user)
computed from a 64-bit hash of the user id, ``b`` and the seed alone. So the in-memory
evaluator and the Spark engine, which sees each user on some worker and never the list of all
users, draw exactly the same resamples, and a user's weights do not depend on which other users
a log holds. Hash: pandas' ``hash_array`` of the id as text (a fixed-key SipHash, stable across
processes and machines), mixed with ``b`` and the seed by the splitmix64 finaliser; the count is the number of
Poisson(1) CDF values, scaled to 2**64, that the mixed hash reaches (an exact inverse CDF).
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

# P(X <= k) for X ~ Poisson(1), k = 0..19; the tail beyond 19 has probability < 1e-18.
_POISSON_CDF = np.cumsum([math.exp(-1.0) / math.factorial(k) for k in range(20)])
# The same thresholds on the uint64 scale: the count is how many of them a hash reaches.
_THRESHOLDS = np.array([min(int(c * 2.0 ** 64), 2 ** 64 - 1) for c in _POISSON_CDF], dtype=np.uint64)
# Counts above this are rare (p ~ 6e-4) and take a searchsorted; the rest are 5 comparisons.
_COMMON = 5
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX_1, _MIX_2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)
# Resamples per chunk: the (chunk x n_users) uint64 temporaries stay around 16 MB per 100k users.
_CHUNK = 16


def user_keys(users) -> np.ndarray:
    """uint64 key of each user id (compared as text, as everywhere in lis)."""
    values = np.asarray(users).astype(str).astype(object)
    return pd.util.hash_array(values)


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser, in place on a uint64 array (wrapping arithmetic is intended)."""
    x ^= x >> np.uint64(30)
    x *= _MIX_1
    x ^= x >> np.uint64(27)
    x *= _MIX_2
    x ^= x >> np.uint64(31)
    return x


def poisson_weights(keys: np.ndarray, n_resamples: int, seed: int = 0, dtype=np.int64) -> np.ndarray:
    """(n_resamples, len(keys)) Poisson(1) counts, entry [b, u] a function of (keys[u], b, seed) only."""
    keys = np.asarray(keys, dtype=np.uint64)
    out = np.empty((n_resamples, len(keys)), dtype=dtype)
    salt_base = np.uint64((int(seed) * 0x2545F4914F6CDD1D) & 0xFFFFFFFFFFFFFFFF)
    with np.errstate(over="ignore"):
        for lo in range(0, n_resamples, _CHUNK):
            b = np.arange(lo, min(lo + _CHUNK, n_resamples), dtype=np.uint64)
            salt = _mix((b + np.uint64(1)) * _GOLDEN + salt_base)
            x = _mix(keys[None, :] ^ salt[:, None])
            count = (x >= _THRESHOLDS[0]).astype(dtype)
            for k in range(1, _COMMON):
                count += x >= _THRESHOLDS[k]
            rare = x >= _THRESHOLDS[_COMMON - 1]
            count[rare] = np.searchsorted(_THRESHOLDS, x[rare], "right")
            out[lo:lo + len(b)] = count
    return out
