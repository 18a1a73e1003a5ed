"""Poisson(1) bootstrap weights from a hash of (user id, resample, seed): what both engines draw."""
from __future__ import annotations

import math

import numpy as np

from lis.bootstrap import user_resamples
from lis.resample import poisson_weights, user_keys


def test_a_users_weights_depend_on_its_id_resample_and_seed_only():
    users = [f"u{k}" for k in range(500)]
    everyone = poisson_weights(user_keys(users), 40, seed=3)
    some = poisson_weights(user_keys(users[100:110]), 40, seed=3)
    assert np.array_equal(everyone[:, 100:110], some)
    assert not np.array_equal(everyone, poisson_weights(user_keys(users), 40, seed=4))
    assert np.array_equal(poisson_weights(user_keys([7, "7"]), 5)[:, 0], poisson_weights(user_keys(["7"]), 5)[:, 0])


def test_weights_are_poisson_one():
    weights = poisson_weights(user_keys(np.arange(20_000)), 50, seed=0)
    assert abs(weights.mean() - 1.0) < 0.01 and abs(weights.var() - 1.0) < 0.02
    for k in range(4):
        assert abs((weights == k).mean() - math.exp(-1) / math.factorial(k)) < 0.005


def test_in_memory_resamples_are_the_hash_weights_of_each_user():
    users = np.array(["b", "a", "b", "c", "a"])
    resamples = user_resamples(users, 30, seed=2)
    assert resamples.codes.tolist() == [0, 1, 0, 2, 1]
    assert np.array_equal(resamples.counts, poisson_weights(user_keys(["b", "a", "c"]), 30, seed=2))
