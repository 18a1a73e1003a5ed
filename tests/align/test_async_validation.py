"""align/async_validation.py + align/async_scorer.py: LIS validation by a scorer process beside training.

Single-process runs on the tiny simulated world, sharing one evaluator as the demo does:
the same checkpoints get the same metrics inline and asynchronously; a hung scorer is killed
after ``lis.scorer_timeout`` and reported in one line, the run still finishes; resuming that
run scores only the checkpoints without a line. The two-process run (slow scorer, early
stopping on both ranks, save_total_limit 1, a scorer killed mid-run) is at the end.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest

from tests.align.test_lis_callback import LIS, METRICS
from tests.align.train_helpers import factory_evaluator, recipe

pytestmark = pytest.mark.usefixtures("one_torch_thread")
SHORT = ["training.max_steps=4", "training.eval_steps=2", "training.save_steps=2", "training.report_to=[]",
         "lis.max_eval_items=120"]


def evals(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "evals.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def evaluator(data_dir, base_model):
    """One evaluator for the module's three runs, as the recipe's factory builds it."""
    return factory_evaluator(data_dir, base_model, *LIS, *SHORT)


@pytest.fixture(scope="module")
def inline_run(tmp_path_factory, data_dir, base_model, evaluator):
    from align.train import run_training

    out = tmp_path_factory.mktemp("inline_run") / "run"
    return out, run_training(recipe(data_dir, base_model, out, *LIS, *SHORT), evaluator=evaluator)


@pytest.fixture(scope="module")
def hung_then_resumed(tmp_path_factory, data_dir, base_model, evaluator):
    """An async run (6 steps) whose scorer hangs at step 4 and is killed, then resumed to step 8."""
    from align.train import run_training

    out = tmp_path_factory.mktemp("async_run") / "run"
    base = [*LIS, *SHORT, "lis.mode=async", "lis.scorer_timeout=30"]
    handler = _Records()
    logging.getLogger("align.async_validation").addHandler(handler)
    os.environ["LIS_ALIGN_SCORER_HANG_AT"] = "4"
    try:
        first = run_training(recipe(data_dir, base_model, out, *base, "training.max_steps=6"), evaluator=evaluator)
    finally:
        del os.environ["LIS_ALIGN_SCORER_HANG_AT"]
        logging.getLogger("align.async_validation").removeHandler(handler)
    after_first = evals(out)
    second = run_training(recipe(data_dir, base_model, out, *base, "training.max_steps=8",
                                 "training.resume_from_checkpoint=last"), evaluator=evaluator)
    return out, first, after_first, handler.errors, second


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(level=logging.ERROR)
        self.errors = []

    def emit(self, record):
        self.errors.append(record.getMessage())


@pytest.mark.slow  # a 4-step inline run and the async runs below: ~1 min on 2 cores
@pytest.mark.timeout(900)  # guards a hang; the time is mostly a loaded machine's
def test_the_same_checkpoint_gets_the_same_metrics_in_both_modes(inline_run, hung_then_resumed):
    _, inline = inline_run
    out, first, _, _, second = hung_then_resumed
    # Steps 0 and 2 were scored in the first async run, 4 after the resume (same seed: same weights).
    by_step = {h["step"]: h for h in second["lis_callback"].history}
    assert [h["step"] for h in inline["lis_callback"].history] == [0, 2, 4]
    for h in inline["lis_callback"].history:
        for key in METRICS:  # exported from disk by the scorer vs from memory by the trainer
            assert by_step[h["step"]][key] == pytest.approx(h[key], abs=1e-9, nan_ok=True), (h["step"], key)
    assert all(h["lag_steps"] >= 0 for h in first["lis_callback"].history)  # the lag is recorded
    seconds = first["lis_callback"].seconds
    assert seconds["export"] == seconds["score"] == 0.0  # the training process neither exported nor scored
    assert json.loads((out / "run.json").read_text())["recipe"]["lis"]["mode"] == "async"
    assert (out / "lis_scorer" / "step-0" / "adapter_model.safetensors").is_file()


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_hung_scorer_is_killed_reported_once_and_a_resumed_run_rescores_only_what_is_missing(hung_then_resumed):
    out, first, after_first, errors, second = hung_then_resumed
    assert len(errors) == 1 and "\n" not in errors[0]
    assert "did not score checkpoint-4 within lis.scorer_timeout=30 s and was killed" in errors[0]
    assert "training continues without LIS validation (lis.on_scorer_failure: continue)" in errors[0]
    assert first["global_step"] == 6 and [e["step"] for e in after_first] == [0, 2]
    assert first["best_step"] == 2  # the best scored checkpoint, kept and loaded
    before = {e["step"]: e["time"] for e in after_first}
    lines = evals(out)
    assert sorted(e["step"] for e in lines) == [0, 2, 4, 6, 8]  # each step once
    assert {e["step"]: e["time"] for e in lines if e["step"] in before} == before  # 0 and 2 were not rescored
    assert second["global_step"] == 8 and second["lis_callback"].failure is None
    assert [h["step"] for h in second["lis_callback"].history] == [0, 2, 4, 6, 8]
    assert json.loads((out / "run.json").read_text())["best_step"] == second["best_step"]


# ----------------------------------------------------------------------------- two ranks
@pytest.mark.slow  # two processes and a scorer: ~1-2 min on 2 busy cores
@pytest.mark.timeout(900)
def test_two_ranks_never_wait_for_a_slow_scorer_stop_together_keep_the_best_and_survive_its_death(
        data_dir, base_model, tmp_path):
    from tests.helpers_dist import launch_two_procs, parse_results

    out = tmp_path / "run"
    # The scorer sleeps 1 s before each checkpoint and SIGKILLs itself when it takes step 30.
    _, stdout, stderr = launch_two_procs("tests/align/dist_scripts/async_run.py", [data_dir, base_model, out],
                                         config="cpu_2proc", timeout=850,
                                         env={"LIS_ALIGN_SCORER_DELAY": "1", "LIS_ALIGN_SCORER_DIE_AT": "30"})
    main, other = parse_results(stdout)
    assert main["world_size"] == other["world_size"] == 2
    # Every rank fed the same scored results to its handlers, at the same steps.
    assert main["history"] == other["history"]
    history = json.loads(main["history"])
    assert [h["step"] for h in history][:3] == [0, 10, 20]
    # Training went on while the scorer worked: results arrived steps after their checkpoint.
    assert any(h["lag_steps"] > 0 for h in history)
    # Early stopping (patience 1, unreachable min_delta) fired at the same step on both ranks,
    # when the second scored checkpoint arrived, long before max_steps.
    for r in (main, other):
        assert r["should_training_stop"] and r["global_step"] < r["max_steps"]
        assert r["stopped"]["reason"] == "early_stopping" and r["stopped"]["last_scored_step"] == 20
    assert main["global_step"] == other["global_step"] == main["stopped"]["step"] == other["stopped"]["step"]
    # The best scored checkpoint survived save_total_limit=1 and is what best/ holds.
    best = max((h for h in history if h["step"] > 0), key=lambda h: h["eval_ais_auc"])
    assert main["best_global_step"] == other["best_global_step"] == best["step"]
    assert Path(main["best_model_checkpoint"]).is_dir()
    assert json.loads((out / "run.json").read_text())["best_step"] == best["step"]
    # The scorer's death (step 30) was reported in one line and corrupted nothing.
    failures = [line for line in stderr.splitlines() if "LIS scorer (pid" in line]
    assert len(failures) == 1 and "exited with status -9" in failures[0]
    assert main["failure"] == other["failure"] and "exited with status -9" in main["failure"]
    lines = [json.loads(line) for line in (out / "evals.jsonl").read_text().splitlines()]
    assert [e["step"] for e in lines] == [h["step"] for h in history] and 30 not in {e["step"] for e in lines}
    for name in ("lis_report.json", "lis_curve.png", "best/embeddings.safetensors"):
        assert (out / name).is_file(), name
