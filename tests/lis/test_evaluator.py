"""The evaluator's contract: refusals, bad inputs as one clear DataError, caching, report shape,
ceilings and degenerate logs. Runs on the tiny simulated world (fast); validity lives in test_validity."""
from __future__ import annotations

import json

import numpy as np
import pytest
from safetensors.numpy import save_file

from lis.embeddings import EmbeddingTable, load_embeddings, save_embeddings
from lis.errors import ConfigError, DataError
from lis.evaluator import EvaluatorConfig, LISEvaluator
from lis.synth import simulate

FAST = dict(lis_mode="pairs", n_bootstrap=50, seed=0)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from lis.datadir import load_datadir

    root = tmp_path_factory.mktemp("evaluator") / "tiny"
    simulate("tiny", 0, root, progress=False)
    return load_datadir(root, check_images=False), load_embeddings(root / "truth.safetensors")


@pytest.fixture(scope="module")
def evaluator(tiny):
    data, _ = tiny
    return LISEvaluator(data.log, data.catalogue, EvaluatorConfig(**FAST), name="log.parquet")


def random_table(ids, dim=8, seed=0, **manifest) -> EmbeddingTable:
    vectors = np.random.default_rng(seed).normal(size=(len(ids), dim)).astype(np.float32)
    return EmbeddingTable(list(ids), vectors, manifest)


# ------------------------------------------------------------------------------ AIS refusal
def test_ais_is_refused_when_the_table_was_trained_into_the_evaluation_window(evaluator, tiny):
    _, truth = tiny
    start = evaluator.windows.eval_start
    leaked = EmbeddingTable(truth.ids, truth.vectors, {"trained_until": start})
    with pytest.raises(DataError, match=r"^step_9: manifest field 'trained_until' is \d+, at or after the "
                                        r"evaluation window's start .*leaked, not learned"):
        evaluator.score_table(leaked, "step_9")
    with pytest.raises(DataError, match="trained_until"):
        evaluator.score_table_full(leaked, "step_9")
    honest = EmbeddingTable(truth.ids, truth.vectors, {"trained_until": start - 1})
    assert evaluator.score_table(honest, "honest")["auc_gain"] > 0


# ------------------------------------------------------------------------------ bad tables
def test_nan_embeddings_are_refused_naming_the_row_and_item(tmp_path):
    path = tmp_path / "nan.safetensors"
    vectors = np.ones((3, 4), dtype=np.float32)
    vectors[1, 2] = np.nan
    save_file({"embeddings": vectors}, str(path), metadata={"ids": json.dumps(["a", "b", "c"]), "manifest": "{}"})
    with pytest.raises(DataError, match=r"^nan\.safetensors: tensor 'embeddings' must be finite; row 1 \(item 'b'\)"):
        load_embeddings(path)


def test_wrong_dimension_embeddings_are_refused(tmp_path):
    table = random_table(["a", "b"], dim=4)
    save_embeddings(tmp_path / "ok.safetensors", table)
    with pytest.raises(DataError, match=r"^ok\.safetensors: tensor 'embeddings' has dimension 4; expected 8\."):
        load_embeddings(tmp_path / "ok.safetensors", expected_dim=8)
    flat = tmp_path / "flat.safetensors"
    save_file({"embeddings": np.ones(4, dtype=np.float32)}, str(flat), metadata={"ids": json.dumps(["a"] * 4)})
    with pytest.raises(DataError, match=r"^flat\.safetensors: tensor 'embeddings' must be a non-empty 2-D"):
        load_embeddings(flat)
    lying = tmp_path / "lying.safetensors"
    save_file({"embeddings": np.ones((2, 4), dtype=np.float32)}, str(lying),
              metadata={"ids": json.dumps(["a", "b"]), "manifest": json.dumps({"dim": 16})})
    with pytest.raises(DataError, match="manifest field 'dim' says 16 but tensor 'embeddings' has 4 columns"):
        load_embeddings(lying)


def test_missing_ids_lower_the_coverage_and_set_the_missing_flag(evaluator, tiny):
    _, truth = tiny
    keep = np.arange(len(truth.ids)) % 2 == 0
    half = EmbeddingTable([i for i, k in zip(truth.ids, keep) if k], truth.vectors[keep], {})
    scores = evaluator.score_table(half, "half")
    candidates = evaluator.eval_log["item_id"].astype(str)
    expected = candidates.isin(set(half.ids)).mean()
    assert 0.3 < scores["coverage"] < 0.7 and scores["coverage"] == pytest.approx(expected)
    _, controls = evaluator.table_features(half)
    np.testing.assert_array_equal(controls[:, 2], ~candidates.isin(set(half.ids)).to_numpy())
    assert np.isfinite(scores["auc_gain"]) and scores["auc_gain_ci"][0] <= scores["auc_gain"]


def test_a_table_sharing_no_item_with_the_log_is_refused(evaluator):
    foreign = random_table([f"item-{k}" for k in range(10)])
    with pytest.raises(DataError, match=r"^foreign: none of its 10 item ids occurs in the log \(table ids look like "
                                        r"'item-0', log item ids like '.+'\)"):
        evaluator.score_table(foreign, "foreign")


# ------------------------------------------------------------------------------ bad windows
def test_an_evaluation_window_with_one_class_only_is_refused(tiny):
    data, _ = tiny
    log = data.log.copy()
    cut = log["timestamp"].quantile(0.7)
    log.loc[log["timestamp"] >= cut, "label"] = 0
    with pytest.raises(DataError, match=r"^log\.parquet: window 'eval' \(.*\) has \d+ impressions and 0 positives; "
                                        r"it needs both labels but holds only non-engaged ones\."):
        LISEvaluator(log, data.catalogue, EvaluatorConfig(**FAST), name="log.parquet")


def test_an_empty_window_is_refused(tiny):
    data, _ = tiny
    log = data.log.copy()
    log["timestamp"] = 1_700_000_000          # one timestamp: no cut can separate the past from the future
    with pytest.raises(DataError, match=r"^log\.parquet: window 'fit' \(.*\) holds no impressions"):
        LISEvaluator(log, data.catalogue, EvaluatorConfig(**FAST), name="log.parquet")
    with pytest.raises(DataError, match=r"^log\.parquet: 0 impressions are too few"):
        LISEvaluator(log.iloc[:0], data.catalogue, EvaluatorConfig(**FAST), name="log.parquet")


def test_bad_configs_are_config_errors():
    with pytest.raises(ConfigError, match="'mode' must be 'probe' or 'full'"):
        EvaluatorConfig(mode="fast").check()
    with pytest.raises(ConfigError, match="cannot retrain a 'base_logit' column"):
        EvaluatorConfig(mode="full", ranker="column").check()
    with pytest.raises(ConfigError, match="'n_bootstrap' must be >= 10"):
        EvaluatorConfig(n_bootstrap=3).check()


# ------------------------------------------------------------------------------ LIS cache
def test_lis_is_computed_once_per_builder_and_options(evaluator, monkeypatch):
    calls = []
    original = evaluator.oracle_tables

    def counting(builder, transform=None, **options):
        calls.append((builder, transform, options))
        return original(builder, transform=transform, **options)

    monkeypatch.setattr(evaluator, "oracle_tables", counting)
    evaluator._lis_cache.clear()
    first = evaluator.lis("random")
    again = evaluator.lis("random")
    assert len(calls) == 1 and again == first and "scores_with" not in again
    assert evaluator.lis("random", return_scores=True)["scores_with"].shape == (int(evaluator.is_test.sum()),)
    assert len(calls) == 1
    evaluator.lis("random", top_k=3)                       # other options: another oracle
    evaluator.lis("random", transform=lambda pairs, fold: pairs)   # a transform is never cached
    evaluator.lis("random", transform=lambda pairs, fold: pairs)
    assert len(calls) == 4
    first["auc_gain"] = 99.0                               # callers get copies, the cache stays intact
    assert evaluator.lis("random")["auc_gain"] != 99.0


# ------------------------------------------------------------------------------ report
def test_report_holds_every_documented_field(evaluator, tiny):
    _, truth = tiny
    report = evaluator.report({"truth": truth}, builders=("co_engagement", "random"))
    assert {"base", "windows", "config", "lis", "ais", "efficiency", "verdict", "segments"} <= set(report)
    assert {"auc", "gauc"} <= set(report["base"])
    for builder in ("co_engagement", "random"):
        scores = report["lis"][builder]
        assert {"auc_gain", "auc_gain_ci", "gauc_gain", "gauc_gain_ci", "n_pairs"} <= set(scores)
        assert len(scores["auc_gain_ci"]) == 2 and scores["n_pairs"] > 0
    ais = report["ais"]["truth"]
    assert {"auc_gain", "auc_gain_ci", "gauc_gain", "gauc_gain_ci", "coverage"} <= set(ais)
    assert ais["auc_gain_ci"][0] > 0 and ais["coverage"] == 1.0
    assert set(report["efficiency"]["truth"]) == {"co_engagement", "random"}
    assert {"code", "advice", "builder"} <= set(report["verdict"])
    assert {"cold_items", "warm_items", "popularity_low"} <= set(report["segments"]["truth"])
    assert report["windows"]["eval_start_unix"] == evaluator.windows.eval_start
    json.dumps(report)                                     # plain JSON: no arrays leak in


def test_full_mode_scores_tables_and_builders(tiny):
    data, truth = tiny
    full = LISEvaluator(data.log, data.catalogue, EvaluatorConfig(mode="full", **FAST), name="log.parquet")
    ais = full.score_table(truth, "truth")
    assert ais["mode"] == "full" and ais["auc_gain_ci"][0] > 0 and ais["coverage"] == 1.0
    random = full.score_table(random_table(truth.ids), "random")
    assert random["auc_gain"] < ais["auc_gain"]
    assert len(full.full_mode()._baselines) == 1                  # equal coverage, equal controls: one baseline ranker
    lis = full.lis("co_engagement")
    assert lis["mode"] == "full" and lis["lis_mode"] == "pairs" and np.isfinite(lis["auc_gain"])


# ------------------------------------------------------------------------------ efficiency, verdict
def _scores(gain, lo, hi):
    return {"auc_gain": gain, "auc_gain_ci": [lo, hi]}


def test_efficiency_is_none_when_the_lis_interval_includes_zero():
    ais = _scores(0.01, 0.0, 0.02)
    assert LISEvaluator.efficiency(ais, _scores(0.02, -0.001, 0.04)) is None
    assert LISEvaluator.efficiency(ais, _scores(-0.01, -0.02, 0.0)) is None
    assert LISEvaluator.efficiency(ais, _scores(0.02, 0.01, 0.03)) == pytest.approx(0.5)


def test_a_table_is_judged_against_the_builder_and_options_of_its_manifest(evaluator, tiny):
    _, truth = tiny
    named = EmbeddingTable(truth.ids, truth.vectors, {"builder": "random", "builder_options": {"top_k": 3}})
    report = evaluator.report({"truth": truth, "named": named}, builders=("co_engagement",), with_segments=False)
    ceiling = report["ais"]["named"]["ceiling"]
    assert ceiling["builder"] == "random" and ceiling["source"] == "manifest" and ceiling["options"] == {"top_k": 3}
    assert ceiling["lis"]["auc_gain"] == evaluator.lis("random", top_k=3)["auc_gain"]   # its own options
    assert ceiling["relation"] == "exceeds" and ceiling["eta"] is None     # truth-like vectors beat random pairs
    fallback = report["ais"]["truth"]["ceiling"]
    assert fallback["source"] in ("best_builder", "none")
    assert report["verdict"]["code"] in ("exceeds_ceiling", "near_ceiling", "data_bound", "model_bound", "no_headroom")
    assert "random" not in report["efficiency"]["named"]              # the matrix covers the scored builders only


def test_a_one_user_log_is_refused_with_the_minimum(tiny):
    data, _ = tiny
    one = data.log.assign(user_id="u0")
    with pytest.raises(DataError, match="at least 20 users"):
        LISEvaluator(one, data.catalogue, EvaluatorConfig(**FAST), name="log.parquet")


def test_small_segments_are_n_a_not_zero_width(evaluator):
    test = evaluator.is_test
    scores = np.random.default_rng(0).normal(size=int(test.sum()))
    out = evaluator.segments_from_scores(scores, scores)
    small = [seg for seg in out.values() if seg["n"] < 100]
    assert all(seg["auc_gain"] is None and seg["note"].startswith("n/a") for seg in small)
    assert any(seg["auc_gain"] is not None for seg in out.values())
