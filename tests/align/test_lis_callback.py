"""align/lis_callback.py: LIS-scored evaluations as Trainer metrics, best checkpoint, headroom, outputs.

Single-process runs train the tiny Qwen2-VL on the tiny synthetic world with the callback on
(``lis.enabled=true``) and co-engagement pairs with the builder's default options. The
builder 'random' stands in for preference data without headroom: on this world (seed 0) its LIS
interval includes 0. The two-process test (slow) trains on two CPU ranks until early stopping.
"""
from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import pytest

from lis.errors import DataError
from tests.align.train_helpers import factory_evaluator, recipe

LIS = ["lis.enabled=true"]
METRICS = ("eval_ais_auc", "eval_ais_auc_lo", "eval_ais_auc_hi", "eval_ais_gauc", "eval_ais_gauc_lo",
           "eval_ais_gauc_hi", "eval_lis_auc", "eval_lis_auc_lo", "eval_lis_auc_hi", "eval_lis_efficiency")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def metrics_spy():
    """A callback registered after the LIS callback: records the metrics dict each evaluation hands on."""
    from transformers import TrainerCallback

    class Spy(TrainerCallback):
        def __init__(self):
            self.seen = []

        def on_evaluate(self, args, state, control, metrics=None, **kwargs):
            self.seen.append((state.global_step, dict(metrics)))

    return Spy()


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data_dir, base_model):
    """8 steps, an evaluation every 2, no early stopping; the evaluator built by the recipe's factory."""
    from align.train import run_training

    out = tmp_path_factory.mktemp("cb_run") / "run"
    spy = metrics_spy()
    result = run_training(recipe(data_dir, base_model, out, *LIS, "training.max_steps=8", "training.eval_steps=2",
                                 "training.save_steps=2", "training.report_to=[]"), callbacks=[spy])
    return out, result, spy


@pytest.fixture(scope="module")
def no_headroom_evaluator(data_dir, base_model):
    """The evaluator the factory would build, shared by the 'random' runs (its LIS is cached)."""
    return factory_evaluator(data_dir, base_model, *LIS)


def scored_steps(history):
    return [h for h in history if h["step"] > 0]  # step 0 has no checkpoint: the untrained model


# ----------------------------------------------------------------------------- metrics
def test_callback_adds_ais_lis_and_efficiency_to_the_trainer_metrics(trained):
    _, result, spy = trained
    history = {h["step"]: h for h in result["lis_callback"].history}
    assert [step for step, _ in spy.seen] == [2, 4, 6, 8]
    for step, metrics in spy.seen:
        assert "eval_loss" in metrics  # Trainer's own metrics are still there
        for key in METRICS:
            assert key in metrics, (step, key)
            # the very numbers the callback scored (eta is NaN, the same NaN, while the LIS interval includes 0)
            same = metrics[key] == history[step][key] or (math.isnan(metrics[key]) and math.isnan(history[step][key]))
            assert same, (step, key, metrics[key], history[step][key])
        assert metrics["eval_ais_auc_lo"] <= metrics["eval_ais_auc"] <= metrics["eval_ais_auc_hi"]


@pytest.mark.slow
def test_matryoshka_dims_add_per_dimension_ais_with_hard_negatives_and_the_cached_loss(tmp_path, data_dir, base_model):
    """One run with every contrastive option of issue 16: per-dimension AIS reaches the metrics,
    evals.jsonl and run.json; hard negatives reach the batches; the cached loss trains."""
    from align.train import run_training

    spy = metrics_spy()
    result = run_training(recipe(data_dir, base_model, tmp_path / "run", *LIS, "training.max_steps=2",
                                 "training.eval_steps=2", "training.save_steps=2", "training.report_to=[]",
                                 "lis.n_bootstrap=50",
                                 "loss.matryoshka_dims=[128,32]", "loss.hard_negatives=2",
                                 "loss.cache_chunk_size=24"), callbacks=[spy])
    for _, metrics in spy.seen:
        assert metrics["eval_ais_auc_d128"] == metrics["eval_ais_auc"]
        assert metrics["eval_ais_auc_d32_lo"] <= metrics["eval_ais_auc_d32"] <= metrics["eval_ais_auc_d32_hi"]
        assert metrics["eval_ais_auc_d32"] != metrics["eval_ais_auc"]
    line = json.loads((tmp_path / "run" / "evals.jsonl").read_text().splitlines()[-1])
    assert "eval_ais_auc_d32" in line
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert "eval_ais_auc_d32" in run["best_metric"] and run["recipe"]["loss"]["matryoshka_dims"] == [128, 32]
    trainer = result["trainer"]
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(16)])
    assert len(batch["chunks"]) >= 2 and len(batch["negative_ids"]) > 0
    assert result["global_step"] == 2 and math.isfinite(result["train_loss"])


def test_metric_for_best_model_eval_ais_auc_selects_the_best_checkpoint(trained):
    from lis.embeddings import load_embeddings

    out, result, _ = trained
    trainer = result["trainer"]
    assert trainer.args.metric_for_best_model == "eval_ais_auc" and trainer.args.greater_is_better
    best = max(scored_steps(result["lis_callback"].history), key=lambda h: h["eval_ais_auc"])
    assert trainer.state.best_global_step == best["step"] == result["best_step"]
    assert Path(trainer.state.best_model_checkpoint).name == f"checkpoint-{best['step']}"
    assert trainer.state.best_metric == best["eval_ais_auc"]
    run = json.loads((out / "run.json").read_text())
    assert run["best_step"] == best["step"] and run["best_metric"]["eval_ais_auc"] == best["eval_ais_auc"]
    # The exported embeddings of the best checkpoint (loaded back at the end) are what RUN_DIR/best holds.
    assert load_embeddings(out / "best" / "embeddings.safetensors").manifest["step"] == best["step"]
    report = json.loads((out / "lis_report.json").read_text())
    (ais,) = report["ais"].values()
    assert ais["auc_gain"] == pytest.approx(best["eval_ais_auc"], abs=1e-6)


def test_efficiency_is_ais_over_lis_when_the_lis_interval_excludes_zero(trained):
    _, result, _ = trained
    history = result["lis_callback"].history
    assert history[0]["eval_lis_auc_lo"] > 0  # the premise: co-engagement has headroom on this world
    for h in history:
        assert math.isfinite(h["eval_lis_efficiency"])
        assert h["eval_lis_efficiency"] == pytest.approx(h["eval_ais_auc"] / h["eval_lis_auc"])
        assert h["eval_lis_efficiency_lo"] <= h["eval_lis_efficiency"] <= h["eval_lis_efficiency_hi"]


# ----------------------------------------------------------------------------- outputs
def test_run_writes_evals_jsonl_from_step_0_report_curve_and_tensorboard(trained):
    from PIL import Image

    out, result, _ = trained
    lines = [json.loads(line) for line in (out / "evals.jsonl").read_text().splitlines()]
    assert [e["step"] for e in lines] == [0, 2, 4, 6, 8]
    for entry, h in zip(lines, result["lis_callback"].history):
        # evals.jsonl is strict JSON: a NaN metric (eta while the LIS interval includes 0) is null there.
        assert {k: entry[k] for k in METRICS} == {k: (None if isinstance(h[k], float) and math.isnan(h[k]) else h[k])
                                                  for k in METRICS}
    report = json.loads((out / "lis_report.json").read_text())
    assert {"lis", "ais", "efficiency", "verdict"} <= set(report)
    assert report["lis"]["co_engagement"]["auc_gain"] == pytest.approx(lines[0]["eval_lis_auc"])
    assert report["verdict"]["code"] and [c["step"] for c in report["curve"]] == [0, 2, 4, 6, 8]
    md = (out / "lis_report.md").read_text()
    assert "## Curve" in md and all(f"\n| {step} | " in md for step in (0, 2, 4, 6, 8))
    with Image.open(out / "lis_curve.png") as png:
        assert png.format == "PNG" and png.size[0] > 500
    assert list((out / "runs" / "lis").glob("events.out.tfevents.*"))


# ----------------------------------------------------------------------------- headroom
def test_require_headroom_stops_before_training_when_the_lis_interval_includes_zero(
        tmp_path, data_dir, base_model, no_headroom_evaluator):
    from align.train import run_training

    out = tmp_path / "run"
    r = recipe(data_dir, base_model, out, *LIS, "lis.builder=random", "lis.require_headroom=true")
    with pytest.raises(DataError) as caught:
        run_training(r, evaluator=no_headroom_evaluator)
    message = str(caught.value)
    assert message.startswith(f"{data_dir}/log: LIS of builder 'random'")
    assert "includes 0" in message and "lis.require_headroom: true" in message
    # Before the first step: nothing scored, nothing saved.
    assert not (out / "evals.jsonl").exists() and not list(out.glob("checkpoint-*")) and not (out / "run.json").exists()


def test_without_headroom_the_run_warns_and_efficiency_is_nan(tmp_path, data_dir, base_model,
                                                              no_headroom_evaluator, caplog):
    from align.train import run_training

    out = tmp_path / "run"
    r = recipe(data_dir, base_model, out, *LIS, "lis.builder=random", "training.max_steps=2",
               "training.eval_steps=2", "training.save_steps=2", "training.report_to=[]")
    with caplog.at_level(logging.WARNING, logger="align.lis_callback"):
        result = run_training(r, evaluator=no_headroom_evaluator)
    warnings = [rec.getMessage() for rec in caplog.records
                if rec.name == "align.lis_callback" and rec.levelno == logging.WARNING]
    assert len(warnings) == 1 and "LIS of builder 'random'" in warnings[0] and "includes 0" in warnings[0]
    history = result["lis_callback"].history
    assert [h["step"] for h in history] == [0, 2]
    for h in history:
        assert h["eval_lis_auc_lo"] <= 0 and math.isfinite(h["eval_ais_auc"])
        assert math.isnan(h["eval_lis_efficiency"])
        assert "eval_lis_efficiency_lo" not in h and "eval_lis_efficiency_hi" not in h
    lines = [json.loads(line) for line in (out / "evals.jsonl").read_text().splitlines()]
    assert [e["eval_lis_efficiency"] for e in lines] == [None, None]  # JSON null, not NaN
    assert (out / "lis_curve.png").is_file() and (out / "lis_report.json").is_file()


def test_callback_exports_through_the_processor_when_the_item_cache_is_off(tmp_path, data_dir, base_model,
                                                                          no_headroom_evaluator):
    # The GPU recipes set data.item_cache: false; the exporter must then run the processor itself.
    from align.train import run_training

    out = tmp_path / "run"
    r = recipe(data_dir, base_model, out, *LIS, "lis.builder=random", "data.item_cache=false", "data.cache_frozen_inputs=false",
               "training.max_steps=2", "training.eval_steps=2", "training.save_steps=2", "training.report_to=[]")
    result = run_training(r, evaluator=no_headroom_evaluator)
    assert [h["step"] for h in result["lis_callback"].history] == [0, 2]
    assert all(h["eval_ais_coverage"] > 0.9 for h in result["lis_callback"].history)


# ----------------------------------------------------------------------------- two ranks
@pytest.mark.slow  # two processes: ~1-2 min on 2 busy cores
@pytest.mark.timeout(240)
def test_two_ranks_get_identical_metrics_stop_together_and_keep_the_best_checkpoint(data_dir, base_model, tmp_path):
    from tests.helpers_dist import launch_two_procs, parse_results

    out = tmp_path / "run"
    # Raises DistLaunchError on a non-zero exit of any process or after 220 s (process group killed).
    _, stdout, stderr = launch_two_procs("tests/align/dist_scripts/callback_run.py", [data_dir, base_model, out],
                                         config="cpu_2proc", timeout=220)
    rows = parse_results(stdout)
    assert [r["rank"] for r in rows] == [0, 1] and all(r["world_size"] == 2 for r in rows)
    assert "Traceback" not in stderr
    main, other = rows
    # Identical metrics on every rank, bit for bit (rank 0 scored, the others received).
    assert main["history"] == other["history"] and main["lis_scores"] == other["lis_scores"]
    assert main["trainer_evals"] == other["trainer_evals"] and main["n_items"] == other["n_items"] > 0
    history = json.loads(main["history"])
    assert [h["step"] for h in history] == [0, 2, 4]
    # Early stopping (patience 1, unreachable min_delta) ended both ranks at the second evaluation.
    for r in rows:
        assert r["global_step"] == 4 < r["max_steps"] and r["should_training_stop"]
    # The same best checkpoint on both ranks, and it is the best eval_ais_auc that evals.jsonl records.
    assert main["best_global_step"] == other["best_global_step"]
    assert main["result_best_step"] == other["result_best_step"] == main["best_global_step"]
    assert main["best_model_checkpoint"] == other["best_model_checkpoint"]
    lines = [json.loads(line) for line in (out / "evals.jsonl").read_text().splitlines()]
    assert [e["step"] for e in lines] == [0, 2, 4]  # written once, by rank 0
    best = max(scored_steps(lines), key=lambda e: e["eval_ais_auc"])
    assert main["best_global_step"] == best["step"] and main["best_metric"] == best["eval_ais_auc"]
    assert Path(main["best_model_checkpoint"]).name == f"checkpoint-{best['step']}"
    assert json.loads((out / "run.json").read_text())["best_step"] == best["step"]
    for name in ("lis_report.json", "lis_report.md", "lis_curve.png", "best/embeddings.safetensors"):
        assert (out / name).is_file(), name


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_two_ranks_both_stop_before_training_when_headroom_is_required(data_dir, base_model, tmp_path):
    from tests.helpers_dist import DistLaunchError, launch_two_procs

    out = tmp_path / "run"
    with pytest.raises(DistLaunchError) as caught:
        launch_two_procs("tests/align/dist_scripts/callback_run.py",
                         [data_dir, base_model, out, "lis.builder=random", "lis.require_headroom=true"],
                         config="cpu_2proc", timeout=220)
    message = str(caught.value)
    assert message.startswith("exit status")  # every process ended (no time-out) ...
    assert "DataError" in message and "includes 0" in message  # ... on the headroom error
    assert not (out / "evals.jsonl").exists() and not list(out.glob("checkpoint-*"))


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_a_failure_on_rank_0_is_raised_on_every_rank_instead_of_hanging():
    from tests.helpers_dist import launch_two_procs, parse_results

    _, stdout, _ = launch_two_procs("tests/align/dist_scripts/callback_run.py", ["--rank0-failures"],
                                    config="cpu_2proc", timeout=100)
    main, other = parse_results(stdout)
    assert main["value"] == other["value"] == ["ok", {"from": 0}]
    assert main["data_error"] == other["data_error"] == ["DataError", "log.parquet: no headroom"]
    assert main["bug"][0] == "KeyError"  # rank 0 keeps its own exception
    assert other["bug"][0] == "RuntimeError" and "KeyError" in other["bug"][1] and "rank 0 failed" in other["bug"][1]
