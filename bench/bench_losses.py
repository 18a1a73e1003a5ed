"""AIS at equal training wall time: today's loss vs hard negatives, a 4x cached batch, Matryoshka dims.

Every run trains the tiny Qwen2-VL recipe model on the tiny simulated world (co-engagement pairs
of the fit window) for the same wall-clock budget (``--seconds`` of training steps, set-up and
export excluded), then embeds the catalogue and scores the table with one ``LISEvaluator``
(AIS = AUC gain over the base ranker, with its paired-bootstrap interval). Configurations:

  baseline   today's loss: symmetric in-batch InfoNCE, B pairs per step
  hardneg    + impression hard negatives (loss.hard_negatives=K)
  cached4x   a 4x larger batch (4B pairs) through the cached loss (loss.cache_chunk_size=2B items)
  matryoshka loss.matryoshka_dims=[128, 64, 32, 16]; AIS at each prefix (re-normalised), and the
             baseline's own prefixes for comparison

Each configuration runs with ``--seeds`` (default 0 1 2); the table shows the mean AIS over the
seeds with a 95% t-interval over seeds, the steps reached and the per-run bootstrap intervals'
mean half-width. The CPU is shared: wall time buys fewer steps when the machine is busy, for
every configuration alike (they run interleaved by seed).

    nice -n 10 python bench/bench_losses.py [--seconds 45] [--seeds 0 1 2] [--batch 32]
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

BUILDER_OPTIONS = {"same_session": False, "max_gap_seconds": 5184000, "window": 50, "top_k": 50}
T95 = {1: 12.71, 2: 4.30, 3: 3.18, 4: 2.78}  # t quantiles by degrees of freedom


def wall_clock_stop(seconds: float):
    from transformers import TrainerCallback

    class Stop(TrainerCallback):
        def on_train_begin(self, args, state, control, **kw):
            self.start = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            if time.perf_counter() - self.start >= seconds:
                control.should_training_stop = True

    return Stop()


def configs(batch: int, k: int) -> dict:
    return {
        "baseline": [],
        "hardneg": [f"loss.hard_negatives={k}"],
        "cached4x": [f"training.per_device_train_batch_size={4 * batch}", f"loss.cache_chunk_size={2 * batch}"],
        "matryoshka": ["loss.matryoshka_dims=[128,64,32,16]"],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=45.0, help="training wall time per run (README: 90)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--batch", type=int, default=32, help="pairs per step of the baseline")
    parser.add_argument("--hard-negatives", type=int, default=2)
    parser.add_argument("--json", default=None, help="also write every run's numbers here")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    from align.config import load_recipe
    from align.export import truncate_table
    from align.models.tiny import build_tiny_vlm
    from align.train import run_training
    from lis.datadir import load_datadir
    from lis.embeddings import load_embeddings
    from lis.evaluator import EvaluatorConfig, LISEvaluator
    from lis.synth import simulate

    root = Path(tempfile.mkdtemp(prefix="bench_losses_"))
    simulate("tiny", 0, root / "data", progress=False)
    build_tiny_vlm("qwen2_vl", root / "base", catalogue=root / "data")
    datadir = load_datadir(root / "data", check_images=False)
    evaluator = LISEvaluator(datadir.log, datadir.catalogue,
                             EvaluatorConfig(n_bootstrap=200, seed=0, top_k=BUILDER_OPTIONS["top_k"],
                                             builder_options={"co_engagement": BUILDER_OPTIONS}), name="tiny")

    runs = []
    for seed in args.seeds:
        for name, extra in configs(args.batch, args.hard_negatives).items():
            out = root / f"{name}_s{seed}"
            recipe = load_recipe("recipes/configs/tiny_cpu.yaml", [
                f"data.data_dir={root / 'data'}", f"model.path={root / 'base'}", f"training.output_dir={out}",
                f"data.builder_options={json.dumps(BUILDER_OPTIONS)}", f"training.seed={seed}",
                f"training.per_device_train_batch_size={args.batch}", "training.max_steps=100000",
                "training.save_steps=1000000", "training.eval_steps=1000000", "training.logging_steps=50",
                "training.report_to=[]", "lis.enabled=false", "lis.early_stopping_patience=null",
                "data.holdout_fraction=0.0", *extra])
            result = run_training(recipe, callbacks=[wall_clock_stop(args.seconds)])
            table = load_embeddings(result["embeddings"])
            dims = [128, 64, 32, 16] if name in ("baseline", "matryoshka") else [128]
            scores = {}
            for dim in dims:
                ais = evaluator.score_table(truncate_table(table, dim), name=f"{name}_s{seed}_d{dim}")
                scores[dim] = (ais["auc_gain"], *ais["auc_gain_ci"])
            runs.append({"config": name, "seed": seed, "steps": result["global_step"],
                         "train_seconds": result["trainer"].state.log_history[-1].get("train_runtime"),
                         "ais": {str(d): s for d, s in scores.items()}})
            print(f"{name} seed {seed}: {result['global_step']} steps, AIS " +
                  ", ".join(f"d{d} {s[0]:+.4f} [{s[1]:+.4f}, {s[2]:+.4f}]" for d, s in scores.items()), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(runs, indent=1))
    print_table(runs, args)
    return 0


def _summary(values: list[float]) -> str:
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return f"{mean:+.4f}"
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = T95.get(n - 1, 2.0) * sd / math.sqrt(n)
    return f"{mean:+.4f} [{mean - half:+.4f}, {mean + half:+.4f}]"


def print_table(runs: list[dict], args) -> None:
    print(f"\nAIS (AUC gain) at {args.seconds:.0f} s of training, tiny world, {len(args.seeds)} seeds "
          f"(mean [95% t-interval over seeds]); steps = mean optimiser steps reached; "
          f"+-boot = mean half-width of the per-run bootstrap interval")
    print("| configuration | dim | AIS | steps | +-boot |\n|---|---|---|---|---|")
    labels = {"baseline": f"(a) today's loss, B={args.batch}",
              "hardneg": f"(b) + impression hard negatives, K={args.hard_negatives}",
              "cached4x": f"(c) cached batch 4B={4 * args.batch} (chunks of {2 * args.batch} items)",
              "matryoshka": "(d) Matryoshka [128, 64, 32, 16]"}
    for name, label in labels.items():
        rows = [r for r in runs if r["config"] == name]
        if not rows:
            continue
        steps = sum(r["steps"] for r in rows) / len(rows)
        for dim in rows[0]["ais"]:
            values = [r["ais"][dim][0] for r in rows]
            boot = sum((r["ais"][dim][2] - r["ais"][dim][1]) / 2 for r in rows) / len(rows)
            shown = label if dim == "128" else ("  (a) baseline, prefix" if name == "baseline" else "  (d) prefix")
            print(f"| {shown} | {dim} | {_summary(values)} | {steps:.0f} | {boot:.4f} |")


if __name__ == "__main__":
    sys.exit(main())
