"""The built-in ID ranker learns planted structure; base_logit pass-through is validated."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from lis.errors import DataError
from lis.rankers import IdCtrRanker, column_logits
from lis.windows import split_windows


def planted_log(n_users=300, n_items=100, n_rows=15_000, dim=4, seed=0):
    """A log whose click probability is sigmoid(-1 + <user, item>) for planted factors."""
    rng = np.random.default_rng(seed)
    users, items = rng.normal(size=(n_users, dim)), rng.normal(size=(n_items, dim)) * 1.2
    u, i = rng.integers(0, n_users, n_rows), rng.integers(0, n_items, n_rows)
    p = 1 / (1 + np.exp(1.0 - (users[u] * items[i]).sum(1)))
    return pd.DataFrame({
        "user_id": np.char.add("u", u.astype(str)), "item_id": np.char.add("i", i.astype(str)),
        "timestamp": np.sort(rng.integers(1_700_000_000, 1_702_000_000, n_rows)).astype(np.int64),
        "label": (rng.random(n_rows) < p).astype(np.int8),
    })


@pytest.fixture(scope="module")
def world():
    log = planted_log()
    windows = split_windows(log)
    ranker = IdCtrRanker.fit(windows.slice(log, "fit"), dim=8, epochs=10, seed=0)
    return log, windows, ranker


def test_ranker_learns_planted_preferences(world):
    log, windows, ranker = world
    held_out = windows.slice(log, "eval")
    assert roc_auc_score(held_out["label"], ranker.predict_logits(held_out)) > 0.65


def test_ranker_is_deterministic_for_a_seed(world):
    log, windows, ranker = world
    again = IdCtrRanker.fit(windows.slice(log, "fit"), dim=8, epochs=10, seed=0)
    np.testing.assert_array_equal(ranker.predict_logits(log), again.predict_logits(log))
    other = IdCtrRanker.fit(windows.slice(log, "fit"), dim=8, epochs=10, seed=1)
    assert not np.array_equal(ranker.predict_logits(log), other.predict_logits(log))


def test_unknown_users_and_items_are_cold(world):
    log, _, ranker = world
    rows = pd.DataFrame({"user_id": ["nobody", "nobody", "u1"], "item_id": ["nothing", "i1", "nothing"]})
    logits = ranker.predict_logits(rows)
    assert logits.dtype == np.float64
    assert logits[0] == pytest.approx(ranker._bias)
    assert logits[1] == pytest.approx(ranker._bias + ranker._item_bias[ranker.item_index.get_loc("i1")])
    assert logits[2] == pytest.approx(ranker._bias + ranker._user_bias[ranker.user_index.get_loc("u1")])


def test_item_embeddings_keep_items_with_enough_impressions(world):
    _, _, ranker = world
    ids, vectors = ranker.item_embeddings()
    assert len(ids) == 100 and vectors.shape == (100, 8) and vectors.dtype == np.float32
    few = ranker.item_embeddings(min_count=int(np.median(ranker.item_counts)) + 1)[0]
    assert 0 < len(few) < len(ids)
    counts = dict(zip(ranker.item_index, ranker.item_counts))
    assert min(counts[i] for i in few) > np.median(ranker.item_counts)


def test_builtin_logits_train_on_the_fit_window_only(world):
    log, windows, _ = world
    ranker = IdCtrRanker.fit(windows.slice(log, "fit"), dim=8, epochs=2)
    logits = ranker.predict_logits(log)
    assert logits.shape == (len(log),) and np.isfinite(logits).all()
    assert ranker.trained_until < windows.eval_start


def test_column_base_logits_pass_through_and_are_validated(world):
    log = world[0].head(50).copy()
    log["base_logit"] = np.linspace(-1, 1, 50)
    np.testing.assert_array_equal(column_logits(log), log["base_logit"].to_numpy())
    log.loc[7, "base_logit"] = np.nan
    with pytest.raises(DataError, match=r"log\.parquet: column 'base_logit' must hold finite numbers; row 7 holds nan"):
        column_logits(log, name="log.parquet")
    with pytest.raises(DataError, match="column 'base_logit' is missing"):
        column_logits(log.drop(columns="base_logit"))


# ----------------------------------------------------------------------------- dense inputs (full mode)
def test_dense_inputs_add_a_learned_linear_term(world):
    log, windows, ranker = world
    fit, held_out = windows.slice(log, "fit"), windows.slice(log, "eval")
    rng = np.random.default_rng(5)

    def signal(frame):   # a dense column that knows the label half the time, plus a pure-noise column
        informative = np.where(rng.random(len(frame)) < 0.5, frame["label"].to_numpy() * 3.0, 0.0)
        return np.column_stack([informative + rng.normal(size=len(frame)), rng.normal(size=len(frame))])

    with_dense = IdCtrRanker.fit(fit, dim=8, epochs=10, seed=0, dense=signal(fit))
    assert with_dense.n_dense == 2 and ranker.n_dense == 0
    assert with_dense._dense_weight[0] > 0.5 > abs(with_dense._dense_weight[1])
    gain = roc_auc_score(held_out["label"], with_dense.predict_logits(held_out, dense=signal(held_out)))
    assert gain > roc_auc_score(held_out["label"], ranker.predict_logits(held_out)) + 0.03


def test_dense_inputs_must_match_the_fit(world):
    log, windows, ranker = world
    fit = windows.slice(log, "fit")
    dense = np.ones((len(fit), 2))
    dense[:, 1] = np.arange(len(fit)) % 3
    with_dense = IdCtrRanker.fit(fit, dim=4, epochs=2, seed=0, dense=dense)
    rows = fit.head(5)
    assert np.isfinite(with_dense.predict_logits(rows, dense=dense[:5])).all()
    with pytest.raises(DataError, match="fitted with 2 dense input columns; pass dense="):
        with_dense.predict_logits(rows)
    with pytest.raises(DataError, match="dense inputs have 1 columns; the ranker was fitted on 2"):
        with_dense.predict_logits(rows, dense=np.ones(5))
    with pytest.raises(DataError, match="fitted without them"):
        ranker.predict_logits(rows, dense=dense[:5])
    bad = dense.copy()
    bad[3, 1] = np.inf
    with pytest.raises(DataError, match=r"dense inputs must be finite; row 3, column 1 holds inf"):
        IdCtrRanker.fit(fit, dim=4, epochs=2, dense=bad, name="log.parquet")
    with pytest.raises(DataError, match=r"one row per impression"):
        IdCtrRanker.fit(fit, dim=4, epochs=2, dense=dense[:10])
