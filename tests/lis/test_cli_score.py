"""``lis-align lis score`` end to end on the tiny simulated world; bad input is one line and exit 2."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from align.cli import main
from lis.embeddings import EmbeddingTable, load_embeddings, save_embeddings
from lis.synth import simulate

FAST = ["--lis-mode", "pairs", "--bootstrap", "50"]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli_score") / "tiny"
    simulate("tiny", 0, root, progress=False)
    return root


@pytest.fixture
def copy_world(world, tmp_path):
    """A private copy of the tiny world, for a test to break."""
    def make():
        target = tmp_path / "broken"
        shutil.copytree(world, target)
        return target
    return make


def score(*args) -> int:
    return main(["lis", "score", *args])


def test_score_writes_the_report_and_prints_the_table(world, tmp_path, capsys):
    out = tmp_path / "out" / "report.json"
    rc = score("--data", str(world), "--builder", "co_engagement", "--builder", "random",
               "--embeddings", f"truth={world / 'truth.safetensors'}", "--builder-option", "co_engagement.window=20",
               "--builder-option", "co_engagement.same_session=false", "--out", str(out), *FAST)
    assert rc == 0
    report = json.loads(out.read_text())
    assert {"auc", "gauc"} <= set(report["base"])
    for builder in ("co_engagement", "random"):
        assert {"auc_gain", "auc_gain_ci", "gauc_gain", "gauc_gain_ci", "n_pairs"} <= set(report["lis"][builder])
    truth = report["ais"]["truth"]
    assert {"auc_gain", "auc_gain_ci", "gauc_gain", "gauc_gain_ci", "coverage"} <= set(truth)
    assert truth["auc_gain_ci"][0] > 0 and truth["coverage"] == 1.0
    assert set(report["efficiency"]["truth"]) == {"co_engagement", "random"}
    assert report["verdict"]["code"] in ("no_headroom", "headroom", "model_bound", "data_bound", "near_ceiling",
                                         "exceeds_ceiling")
    assert report["ais"]["truth"]["ceiling"]["source"] in ("best_builder", "none")
    assert "warm_items" in report["segments"]["truth"] and "eval_start" in report["windows"]
    assert report["config"]["builder_options"] == {"co_engagement": {"window": 20, "same_session": False}}
    assert out.with_suffix(".md").exists() and out.with_suffix(".png").exists()
    captured = capsys.readouterr()
    assert captured.out == out.with_suffix(".md").read_text() + "\n"
    assert "| truth | 100.0% |" in captured.out
    assert "lis score: LIS co_engagement: AUC gain" in captured.err and "lis score: wrote" in captured.err


def test_a_one_user_log_exits_2_naming_the_minimum(copy_world, tmp_path, capsys):
    import pandas as pd

    broken = copy_world()
    log = pd.read_parquet(broken / "log.parquet")
    log.assign(user_id="u0").to_parquet(broken / "log.parquet", index=False)
    assert score("--data", str(broken), "--builder", "random", "--out", str(tmp_path / "r.json"), *FAST) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if not line.startswith("lis score: ")]
    assert len(errors) == 1 and "1 user(s)" in errors[0] and "at least 20 users" in errors[0]
    assert not (tmp_path / "r.json").exists()


def test_score_in_full_mode_without_tables(world, tmp_path, capsys):
    out = tmp_path / "report.json"
    assert score("--data", str(world), "--builder", "random", "--mode", "full", "--out", str(out), *FAST) == 0
    report = json.loads(out.read_text())
    assert report["lis"]["random"]["mode"] == "full" and report["ais"] == {} and report["config"]["mode"] == "full"
    assert "full mode" in capsys.readouterr().out


def _error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert err, "no error line"
    return err[-1]


@pytest.mark.parametrize("args, message", [
    (["--builder", "nope"], "lis-align: --builder: unknown builder 'nope'; choose one of"),
    (["--builder", "random", "--builder", "random"], "each builder may be named once"),
    (["--builder-option", "window=3"], "--builder-option must look like NAME.KEY=VALUE; got 'window=3'"),
    (["--builder-option", "co_engagement.colour=3"], "builder 'co_engagement' has no option 'colour'"),
    (["--builder-option", "random.top_k=3"], "builder 'random' is not scored"),
    (["--builder", "user"], "builder 'user' needs a pairs file"),
    (["--mode", "full", "--ranker", "column"], "cannot retrain a 'base_logit' column"),
    (["--ranker", "column"], "log.parquet: column 'base_logit' is missing"),
    (["--eval-fraction", "1.5"], "eval_fraction must lie strictly between 0 and 1"),
    (["--bootstrap", "3"], "'n_bootstrap' must be >= 10"),
    (["--embeddings", "=x.safetensors"], "--embeddings must look like NAME=FILE"),
    (["--embeddings", "a=missing.safetensors"], "missing.safetensors: embeddings file not found."),
])
def test_bad_arguments_are_one_line_and_exit_2(world, tmp_path, capsys, args, message):
    rc = score("--data", str(world), "--out", str(tmp_path / "r.json"), *FAST, *args)
    assert rc == 2
    assert message in _error(capsys)
    assert not (tmp_path / "r.json").exists()


def test_leaked_nan_and_foreign_tables_exit_2(world, tmp_path, capsys):
    truth = load_embeddings(world / "truth.safetensors")
    leaked = tmp_path / "leaked.safetensors"
    save_embeddings(leaked, EmbeddingTable(truth.ids, truth.vectors, {"trained_until": 2_000_000_000}))
    assert score("--data", str(world), "--embeddings", f"step_5={leaked}", "--out", str(tmp_path / "r.json"), *FAST) == 2
    assert _error(capsys).startswith("lis-align: step_5: manifest field 'trained_until' is 2000000000, at or after")

    from safetensors.numpy import save_file

    vectors = truth.vectors.copy()
    vectors[3, 0] = np.nan
    bad = tmp_path / "nan.safetensors"
    save_file({"embeddings": vectors}, str(bad), metadata={"ids": json.dumps(truth.ids)})
    assert score("--data", str(world), "--embeddings", str(bad), "--out", str(tmp_path / "r.json"), *FAST) == 2
    assert "nan.safetensors: tensor 'embeddings' must be finite; row 3" in _error(capsys)

    foreign = tmp_path / "foreign.safetensors"
    save_embeddings(foreign, EmbeddingTable([f"x{k}" for k in range(5)], np.ones((5, 4), np.float32), {}))
    assert score("--data", str(world), "--embeddings", str(foreign), "--out", str(tmp_path / "r.json"), *FAST) == 2
    assert "foreign: none of its 5 item ids occurs in the log" in _error(capsys)
    assert not (tmp_path / "r.json").exists()


def test_a_one_class_evaluation_window_exits_2(copy_world, tmp_path, capsys):
    import pandas as pd

    root = copy_world()
    log = pd.read_parquet(root / "log.parquet")
    log.loc[log["timestamp"] >= log["timestamp"].quantile(0.6), "label"] = 0
    log.to_parquet(root / "log.parquet", index=False)
    assert score("--data", str(root), "--out", str(tmp_path / "r.json"), *FAST) == 2
    assert "log.parquet: window 'eval'" in _error(capsys)


def test_python_m_lis_reports_a_missing_data_dir_in_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "lis", "lis", "score", "--data", str(tmp_path / "nowhere"),
                           "--out", str(tmp_path / "r.json")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert lines[-1].startswith("python -m lis: ") and "Traceback" not in proc.stderr
