"""Both engines give the same numbers on the tiny simulated world: windows, every builder's
pairs exactly, features to 1e-6, base metrics, LIS and AIS gains and intervals to 1e-6."""
from __future__ import annotations

import numpy as np
import pytest

from lis.datadir import load_datadir
from lis.engine import make_evaluator
from lis.evaluator import EvaluatorConfig, LISEvaluator
from lis.spark import blocks
from lis.spark import evaluator as spark_evaluator
from lis.synth import simulate

pytestmark = pytest.mark.slow

SETTINGS = dict(n_bootstrap=20, oracle_steps=50, lis_mode="pairs")


@pytest.fixture(scope="module")
def engines(spark, tmp_path_factory):
    root = tmp_path_factory.mktemp("spark") / "tiny"
    simulate("tiny", 0, root, progress=False)
    data = load_datadir(root, check_images=False)
    memory = make_evaluator(data.log, data.catalogue, EvaluatorConfig(**SETTINGS))
    with pytest.MonkeyPatch.context() as patch:
        # Small blocks, several to a partition, and shuffle partitions scaled up: the layout a
        # large log gets, on the tiny world.
        patch.setattr(blocks, "ROWS_PER_BLOCK", 2_000)
        patch.setattr(spark_evaluator, "ROWS_PER_SHUFFLE_PARTITION", 5_000)
        distributed = make_evaluator(data.log, data.catalogue, EvaluatorConfig(engine="spark", **SETTINGS))
    assert distributed.blocks.getNumPartitions() < distributed.blocks.count()
    return memory, distributed


def assert_same_scores(a: dict, b: dict, tol: float = 1e-6) -> None:
    for key in ("auc_with", "auc_without", "auc_gain", "auc_gain_ci", "auc_gain_se", "gauc_with", "gauc_without",
                "gauc_gain", "gauc_gain_ci", "gauc_gain_se", "n_fit", "n_test"):
        assert np.allclose(a[key], b[key], rtol=0, atol=tol), (key, a[key], b[key])


def test_the_spark_evaluator_is_chosen_by_the_config(engines):
    from lis.spark.evaluator import SparkLISEvaluator

    memory, distributed = engines
    assert type(memory) is LISEvaluator and isinstance(distributed, SparkLISEvaluator)
    assert distributed.windows == memory.windows and distributed.windows.counts == memory.windows.counts


@pytest.mark.parametrize("builder", ["co_engagement", "category", "random", "ranker_knn"])
def test_pairs_are_identical(engines, builder):
    memory, distributed = engines
    expected = memory.builder_pairs(builder, memory.leaked_slice(1))
    got = distributed.builder_pairs(builder, distributed.leaked_slice(1))
    assert len(expected) > 0
    assert got.equals(expected)


def test_features_and_base_metrics_agree(engines):
    memory, distributed = engines
    table = memory.past_table("co_engagement", steps=50)
    phi, controls = memory.table_features(table)
    columns = distributed.collect_columns(table)
    assert len(columns) == len(phi)
    got = columns[[f"c{j}" for j in range(6)]].to_numpy()
    assert np.abs(got - np.hstack([phi, controls])).max() <= 1e-6
    base_m, base_s = memory.base(), distributed.base()
    assert abs(base_m["auc"] - base_s["auc"]) <= 1e-12 and abs(base_m["gauc"] - base_s["gauc"]) <= 1e-9


def test_lis_and_ais_gains_and_intervals_agree(engines):
    memory, distributed = engines
    assert_same_scores(memory.lis("co_engagement"), distributed.lis("co_engagement"))
    table = memory.past_table("co_engagement", steps=50)
    expected, got = memory.score_table(table, "past"), distributed.score_table(table, "past")
    assert_same_scores(expected, got)
    assert got["coverage"] == pytest.approx(expected["coverage"], abs=1e-12)
