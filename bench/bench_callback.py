"""Time the training processes wait on LIS validation: inline vs async, at the demo cadence, in one run.

Run:  .venv/bin/python bench/bench_callback.py [--steps 600] [--threads 1] [--data DIR] [--builder NAME]
                                              [--no-baseline] [--override KEY=VALUE ...]

Trains the demo recipe (recipes/configs/tiny_cpu.yaml with the demo's training overrides,
``align.demo.DEMO_TRAINING``: tiny Qwen2-VL, LoRA, 64 pairs per step, an evaluation and a
checkpoint every 50 steps) on the demo preset (``lis.synth.simulate('demo', 0, DIR)``, reused
with ``--data``) for a fixed number of steps (early stopping off, so all runs have the same
length), in this process, three times:

* baseline: ``lis.enabled=false`` (Trainer's own ``eval_loss`` evaluations and checkpoints only);
* inline: ``lis.mode=inline``: every evaluation exports the items the evaluator needs and scores
  them while training waits (``seconds['export'] + seconds['score']``);
* async: ``lis.mode=async``: a scorer process exports and scores each checkpoint beside training;
  training waits only to read and broadcast finished results, queue checkpoints and save the
  untrained model once (``seconds['wait']``) and, at the end, for the last results (``seconds['drain']``).

The evaluator is built as ``lis-align demo`` builds it (seed 0, default builder options, 300
oracle steps) and handed to both LIS runs, so the one-off LIS ceiling ("set-up") is the same in
both and is reported apart. The table gives each run's training wall time (Trainer's
``train_runtime``) and the share of it the training processes spent waiting on validation:

* ``during %`` = waiting during training / (wall - set-up) — the figure held to the target
  (<= 1% for async);
* ``with drain %`` = the same plus the final drain.

The three runs' training losses must agree (validation must not perturb training).
Wall-clock on a possibly shared machine: the load average is printed with the machine line.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

REPO = Path(__file__).resolve().parents[1]


def train(data_dir: Path, out: Path, steps: int, mode: str | None, builder: str, evaluator=None,
          overrides=()) -> dict:
    from align.config import load_recipe
    from align.demo import DEMO_RECIPE, DEMO_TRAINING
    from align.train import run_training

    lis = ["lis.enabled=false"] if mode is None else ["lis.enabled=true", f"lis.mode={mode}"]
    recipe = load_recipe(DEMO_RECIPE, [
        f"data.data_dir={data_dir}", f"data.builder={builder}", f"lis.builder={builder}",
        f"training.output_dir={out}", "training.seed=0", *DEMO_TRAINING, f"training.max_steps={steps}",
        "lis.early_stopping_patience=null", *lis, *overrides,
    ])
    start = time.perf_counter()
    result = run_training(recipe, evaluator=evaluator)
    run = json.loads((out / "run.json").read_text())
    losses = [e["loss"] for e in result["trainer"].state.log_history if "loss" in e]
    callback = result["lis_callback"]
    return {"wall": float(run["train_seconds"]), "total": time.perf_counter() - start, "losses": losses,
            "eval_steps": recipe.training.eval_steps, "global_step": result["global_step"],
            "seconds": dict(callback.seconds) if callback else None,
            "evaluations": len(callback.history) if callback else 0,
            "items": len(callback.items) if callback else 0,
            "lags": [h["lag_steps"] for h in callback.history if "lag_steps" in h] if callback else []}


def waiting(run: dict) -> tuple[float, float]:
    """(seconds waited during training, seconds waited in the final drain)."""
    s = run["seconds"]
    if "wait" in s:
        return s["wait"], s["drain"]
    return s["export"] + s["score"], 0.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads (default 1: on a shared 2-core machine more is slower)")
    parser.add_argument("--data", type=Path, default=None, help="a demo data dir to reuse (default: simulate one)")
    parser.add_argument("--builder", default="co_engagement", help="training pairs and LIS ceiling (default: %(default)s)")
    parser.add_argument("--no-baseline", action="store_true", help="skip the lis.enabled=false run")
    parser.add_argument("--override", nargs="*", default=[], metavar="KEY=VALUE",
                        help="recipe overrides for every run (e.g. training.eval_steps=100)")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from lis.datadir import load_datadir
    from lis.evaluator import EvaluatorConfig, LISEvaluator
    from lis.synth import simulate

    load_start = os.getloadavg()[0]
    root = Path(tempfile.mkdtemp(prefix="bench_callback_"))
    data_dir = args.data
    if data_dir is None:
        data_dir = root / "data"
        start = time.perf_counter()
        simulate("demo", 0, data_dir, progress=False)
        print(f"simulated the demo platform in {time.perf_counter() - start:.0f} s -> {data_dir}", flush=True)
    datadir = load_datadir(data_dir, check_images=False)

    def evaluator():  # a fresh one per run, as the demo hands in (its LIS cache would favour the second run)
        return LISEvaluator(datadir.log, datadir.catalogue, EvaluatorConfig(seed=0, oracle_steps=300),
                            name=f"{data_dir}/log")

    args.override = [f"training.cpu_threads={args.threads}", *args.override]  # run_training sets the threads
    runs = {}
    for mode in ("inline", "async"):
        runs[mode] = train(data_dir, root / mode, args.steps, mode, args.builder, evaluator=evaluator(),
                           overrides=args.override)
        print(f"{mode} done: {runs[mode]['wall']:.0f} s", flush=True)
    if not args.no_baseline:
        runs["baseline"] = train(data_dir, root / "baseline", args.steps, None, args.builder, overrides=args.override)

    inline = runs["inline"]
    print(f"\nTraining time spent waiting on LIS validation, demo preset ({len(datadir.catalogue)} items, "
          f"{inline['items']} exported per evaluation), builder {args.builder}, demo cadence: an evaluation every "
          f"{inline['eval_steps']} steps ({inline['evaluations']} scored incl. step 0)"
          + (f"; overrides: {' '.join(args.override)}" if args.override else ""))
    print(f"{'run':<9}{'steps':>6}{'wall s':>9}{'set-up s':>10}{'waited s':>10}{'drain s':>9}{'during %':>10}"
          f"{'with drain %':>14}{'lag steps':>11}")
    for name, run in runs.items():
        if run["seconds"] is None:
            print(f"{name:<9}{run['global_step']:>6}{run['wall']:>9.1f}{'-':>10}{'-':>10}{'-':>9}{'-':>10}{'-':>14}{'-':>11}")
            continue
        during, drain = waiting(run)
        setup = run["seconds"]["setup"]
        lag = f"{min(run['lags'])}-{max(run['lags'])}" if run["lags"] else "0"
        print(f"{name:<9}{run['global_step']:>6}{run['wall']:>9.1f}{setup:>10.1f}{during:>10.1f}{drain:>9.1f}"
              f"{100 * during / (run['wall'] - setup):>10.2f}{100 * (during + drain) / (run['wall'] - setup):>14.2f}{lag:>11}")
    reference = runs["inline"]["losses"]
    agree = all(len(r["losses"]) == len(reference) and all(abs(a - b) <= 1e-5 * max(1.0, abs(a))
                for a, b in zip(reference, r["losses"])) for r in runs.values())
    print(f"training losses of all runs agree: {agree} ({len(reference)} logged)")
    print(f"machine: {len(os.sched_getaffinity(0))} cores usable ({os.cpu_count()} online), torch {torch.__version__} "
          f"({torch.get_num_threads()} threads), python {platform.python_version()}, "
          f"{platform.processor() or platform.machine()}, load average {load_start:.1f} at start, "
          f"{os.getloadavg()[0]:.1f} at end")
    during, drain = waiting(runs["async"])
    share = during / (runs["async"]["wall"] - runs["async"]["seconds"]["setup"])
    print(f"verdict: async {'meets' if share <= 0.01 else 'misses'} the <= 1% target during training "
          f"({100 * share:.2f}%; inline {100 * waiting(inline)[0] / (inline['wall'] - inline['seconds']['setup']):.2f}%)")
    return 0 if agree else 1


if __name__ == "__main__":
    sys.exit(main())
