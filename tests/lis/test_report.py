"""``write_report``: report.json, report.md (the tables a person reads) and report.png, each atomic."""
from __future__ import annotations

import hashlib
import json

import pytest
from PIL import Image

from lis.report import render_markdown, report_is_whole, write_report


def sample_report() -> dict:
    """A report shaped like LISEvaluator.report's: two builders (one without headroom), two tables."""
    def gains(gain, lo, hi, **extra):
        return {"auc_gain": gain, "auc_gain_ci": [lo, hi], "gauc_gain": gain * 1.2,
                "gauc_gain_ci": [lo * 1.2, hi * 1.2], **extra}

    return {
        "base": {"source": "builtin", "auc": 0.6321, "gauc": 0.5987},
        "windows": {"eval_start": "2024-02-10T00:00:00Z",
                    "fit": {"from": "2024-01-01T00:00:00Z", "to": "2024-02-09T23:59:59Z", "rows": 700, "positives": 70},
                    "eval": {"from": "2024-02-10T00:00:00Z", "to": "2024-03-01T00:00:00Z", "rows": 300, "positives": 31}},
        "config": {"mode": "probe", "lis_mode": "embedding"},
        "lis": {"co_engagement": gains(0.028, 0.018, 0.038, n_pairs=51234),
                "random": gains(-0.001, -0.002, 0.0002, n_pairs=20000)},
        "ais": {"step_100": gains(0.014, 0.006, 0.022, coverage=0.97, ceiling={
                    "builder": "co_engagement", "source": "manifest", "options": None,
                    "lis": gains(0.028, 0.018, 0.038, n_pairs=51234), "eta": 0.5, "eta_ci": [0.21, 0.79],
                    "relation": "within"}),
                "truth": gains(0.144, 0.129, 0.160, coverage=1.0, ceiling={
                    "builder": "co_engagement", "source": "best_builder", "options": None,
                    "lis": gains(0.028, 0.018, 0.038, n_pairs=51234), "eta": None, "eta_ci": None,
                    "relation": "exceeds"})},
        "efficiency": {"step_100": {"co_engagement": 0.5, "random": None},
                       "truth": {"co_engagement": 5.14, "random": None}},
        "segments": {"step_100": {"cold_items": {"n": 40, "auc_gain": None, "auc_gain_ci": None,
                                                 "note": "n/a: 40 impressions (a segment needs 100)"},
                                  "warm_items": {"n": 260, "auc_gain": 0.015, "auc_gain_ci": [0.004, 0.026]}}},
        "verdict": {"code": "model_bound", "builder": "co_engagement", "table": "step_100", "eta": 0.5,
                    "ceiling_source": "manifest",
                    "advice": "The data is good but the model reaches eta 0.50 of builder 'co_engagement''s ceiling."},
    }


def test_writes_json_markdown_and_png_beside_each_other(tmp_path):
    report = sample_report()
    paths = write_report(report, tmp_path / "out" / "report.json")
    assert paths == {"json": tmp_path / "out" / "report.json", "md": tmp_path / "out" / "report.md",
                     "png": tmp_path / "out" / "report.png"}
    written = json.loads(paths["json"].read_text())
    assert written.pop("files") == {kind: {"name": paths[kind].name,
                                           "sha256": hashlib.sha256(paths[kind].read_bytes()).hexdigest()}
                                    for kind in ("md", "png")}
    assert written == report and report_is_whole(paths["json"])
    with Image.open(paths["png"]) as image:
        assert image.format == "PNG" and image.size[0] > 500
    assert paths["md"].read_text() == render_markdown(report)
    assert not list((tmp_path / "out").glob("*.tmp"))


def test_markdown_holds_the_lis_ais_segment_and_verdict_tables():
    text = render_markdown(sample_report())
    assert "| fit | 2024-01-01T00:00:00Z | 2024-02-09T23:59:59Z | 700 | 70 |" in text
    assert "Base ranker (builtin): AUC 0.6321, GAUC 0.5987" in text
    assert "| co_engagement | 51234 | +0.0280 [+0.0180, +0.0380] | +0.0336 [+0.0216, +0.0456] |" in text
    assert "| table | coverage | AUC gain [95% CI] | GAUC gain [95% CI] | ceiling (LIS of) | eta |" in text
    assert ("| step_100 | 97.0% | +0.0140 [+0.0060, +0.0220] | +0.0168 [+0.0072, +0.0264] | "
            "co_engagement +0.0280 (manifest) | 0.50 [0.21, 0.79] |") in text
    assert "| truth | 100.0% |" in text and "(best builder; the manifest names none) | exceeds the ceiling |" in text
    assert "| cold_items | 40 | n/a: 40 impressions (a segment needs 100) |" in text
    assert "| warm_items | 260 | +0.0150 [+0.0040, +0.0260] |" in text
    assert "**Verdict: `model_bound`.** The data is good" in text


def test_a_report_without_tables_still_renders_and_plots(tmp_path):
    report = sample_report()
    report.update(ais={}, efficiency={}, segments={})
    paths = write_report(report, tmp_path / "report.json")
    text = paths["md"].read_text()
    assert "## LIS" in text and "## AIS" not in text and "segment" not in text
    assert paths["png"].stat().st_size > 0


def test_report_json_is_strict_null_never_nan(tmp_path):
    report = sample_report()
    report["ais"]["step_100"]["gauc_gain_se"] = float("nan")
    report["efficiency"]["truth"]["random"] = float("inf")
    text = write_report(report, tmp_path / "report.json")["json"].read_text()
    assert "NaN" not in text and "Infinity" not in text
    loaded = json.loads(text)
    assert loaded["ais"]["step_100"]["gauc_gain_se"] is None and loaded["efficiency"]["truth"]["random"] is None


def test_a_failed_write_leaves_the_previous_report_and_no_temporary(tmp_path):
    first = write_report(sample_report(), tmp_path / "report.json")
    before = {kind: path.read_bytes() for kind, path in first.items()}
    broken = sample_report()
    broken["base"]["auc"] = object()                       # not JSON: the write must fail before replacing
    with pytest.raises(TypeError):
        write_report(broken, tmp_path / "report.json")
    assert {kind: path.read_bytes() for kind, path in first.items()} == before
    assert not list(tmp_path.glob("*.tmp"))
