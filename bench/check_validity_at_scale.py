"""Validity at scale: on the bench preset (>= 1M impressions) the null controls stay at 0 on AUC
*and* GAUC, the true latents are clearly positive, and they exceed the co_engagement ceiling.

Run:  .venv/bin/python bench/check_validity_at_scale.py [--world DIR] [--seed 1]

Simulates the ``bench`` preset into ``--world`` (reused when it already holds that preset and
seed), then scores with the evaluator's defaults (as ``lis-align lis score`` would): LIS of
``co_engagement`` and ``random`` (pairs), AIS of the true latents and of two random-vector
tables. Checks (exit status 1 and a line per failure otherwise):

* random pairs and random vectors: AUC and GAUC gain intervals include 0;
* the true latents: AUC and GAUC gain intervals lie clearly above 0 (lower bound > 0.05);
* the verdict is ``exceeds_ceiling`` against ``co_engagement`` (the latents carry information
  that co-engagement pairs lack: they were not trained on them).

Takes about 2 minutes on 2 idle cores, simulation included (most of it the two leaked oracles per builder). Prints the
report's markdown so the figures can be quoted.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from lis.datadir import load_datadir  # noqa: E402
from lis.embeddings import EmbeddingTable, load_embeddings  # noqa: E402
from lis.evaluator import EvaluatorConfig, LISEvaluator  # noqa: E402
from lis.report import render_markdown  # noqa: E402
from lis.synth import simulate  # noqa: E402


def world(path: Path, seed: int) -> Path:
    from dataclasses import asdict

    from lis.synth import PRESETS

    marker = path / "synth.json"
    if marker.is_file():   # reuse only the very same world (preset, seed and every knob)
        meta = json.loads(marker.read_text())
        if meta.get("seed") == seed and meta.get("config") == json.loads(json.dumps(asdict(PRESETS["bench"]))):
            return path
    simulate("bench", seed, path, progress=False)
    return path


def includes_zero(scores: dict, metric: str) -> bool:
    lo, hi = scores[f"{metric}_gain_ci"]
    return lo <= 0.0 <= hi


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--world", default="runs/bench_world", help="where the bench preset is simulated")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    start = time.perf_counter()
    root = world(Path(args.world), args.seed)
    data = load_datadir(root, check_images=False)
    truth = load_embeddings(root / "truth.safetensors")
    rng = np.random.default_rng(7)
    tables = {"truth": truth}
    for k in range(2):
        tables[f"random_vectors_{k}"] = EmbeddingTable(truth.ids, rng.normal(size=(len(truth.ids), 64)).astype(np.float32))
    evaluator = LISEvaluator(data.log, data.catalogue, EvaluatorConfig(seed=0), name=str(root / "log.parquet"))
    report = evaluator.report(tables, builders=("co_engagement", "random"), with_segments=False,
                              progress=lambda message: print(f"  {message}", file=sys.stderr, flush=True))
    print(f"bench preset, seed {args.seed}: {len(data.log):,} impressions; {time.perf_counter() - start:.0f} s\n")
    print(render_markdown(report))
    failures = []
    nulls = {"LIS random": report["lis"]["random"]} | {f"AIS {n}": report["ais"][n] for n in tables if n != "truth"}
    for name, scores in nulls.items():
        for metric in ("auc", "gauc"):
            if not includes_zero(scores, metric):
                failures.append(f"{name}: {metric.upper()} gain interval {scores[f'{metric}_gain_ci']} excludes 0")
    for metric in ("auc", "gauc"):
        if report["ais"]["truth"][f"{metric}_gain_ci"][0] <= 0.05:
            failures.append(f"AIS truth: {metric.upper()} gain interval {report['ais']['truth'][f'{metric}_gain_ci']} "
                            "is not clearly above 0")
    verdict = report["verdict"]
    if (verdict["code"], verdict["builder"], verdict["table"]) != ("exceeds_ceiling", "co_engagement", "truth"):
        failures.append(f"verdict {verdict['code']} against {verdict['builder']} for {verdict['table']}; expected "
                        "exceeds_ceiling against co_engagement for truth")
    for line in failures:
        print(f"FAIL {line}")
    print("validity at scale: " + ("FAILED" if failures else "all checks passed"))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
