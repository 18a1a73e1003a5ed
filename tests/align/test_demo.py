"""The main job end to end, on the tiny preset with a short training (the full demo is `make demo`)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from align.cli import main


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_demo_runs_end_to_end_and_leaves_a_verified_publish_folder(tmp_path, capsys):
    out = tmp_path / "demo"
    from align.demo import run_demo

    run_demo(out, preset="tiny",
             overrides=["training.max_steps=20", "training.eval_steps=10", "training.save_steps=10",
                        "training.per_device_train_batch_size=16", "training.report_to=[]"])
    printed = capsys.readouterr().out
    assert "lis-align demo summary" in printed and "AIS at best step" in printed

    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["lis"]) == {"co_engagement", "ranker_knn", "category", "random"}
    assert summary["builder"] != "random"
    assert summary["lis"][summary["builder"]]["auc_gain_ci"][0] > 0  # trained on a builder with headroom
    assert summary["best_step"] in (10, 20)
    for path in summary["outputs"].values():
        assert Path(path).exists(), path
    train = out / "train"
    for name in ("lis_report.json", "lis_report.md", "lis_curve.png", "evals.jsonl", "run.json"):
        assert (train / name).is_file(), name
    steps = [json.loads(line)["step"] for line in (train / "evals.jsonl").read_text().splitlines()]
    assert steps == [0, 10, 20]
    report = json.loads((train / "lis_report.json").read_text())
    assert summary["builder"] in report["lis"] and report["verdict"]["code"]
    publish = train / "publish"
    assert (publish / "README.md").is_file() and (publish / "adapter_model.safetensors").is_file()
    assert summary["publish_verify_min_cosine"] >= 0.999


def test_demo_help_explains_the_main_job(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["demo", "--help"])
    assert exit_info.value.code == 0
    assert "LIS" in capsys.readouterr().out
