"""Does LIS pick better checkpoints than the loss? Selection rules against the simulated world's truth.

Run:  nice .venv/bin/python bench/bench_selection.py [--seeds 0 1 2] [--steps 600] [--every 50]
                                                    [--builder co_engagement] [--later 0.2] [--out DIR]

For each seed: simulate the demo platform; hide its last ``--later`` share of impressions (by
time) from training and from selection; train the demo recipe past its plateau on the rest
(early stopping off, every checkpoint kept, inline LIS validation every ``--every`` steps on the
visible log), then judge every checkpoint with what selection never saw:

* **true AIS**: the checkpoint's AIS on the hidden later window (an evaluator on the whole log
  whose evaluation window is exactly the hidden share; its ranker is fitted on the visible part);
* **latent R^2**: how much of the true item latents (``truth.safetensors``) a ridge regression
  recovers from the checkpoint's embeddings (5-fold cross-validated over catalogue items).

Rules: ``eval_ais_auc`` (max), ``eval_lis_efficiency`` (max), ``eval_loss`` (min, Trainer's
default) and ``last`` (the final checkpoint). Regret = best true AIS in hindsight minus the
chosen checkpoint's true AIS (and the same for R^2). Prints a table per seed and the mean over
seeds; ``--out`` keeps a JSON of every checkpoint's numbers.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

RULES = ("eval_ais_auc", "eval_lis_efficiency", "eval_loss", "last")


def visible_copy(full: Path, out: Path, later: float) -> int:
    """A data dir holding the impressions before the last ``later`` share; returns the cut time."""
    import pandas as pd

    out.mkdir(parents=True)
    # Hard links: a data dir's images must lie inside it (symlinks out of it are refused).
    shutil.copytree(full / "images", out / "images", copy_function=os.link)
    for name in ("catalogue.parquet", "truth.safetensors"):
        os.link(full / name, out / name)
    log = pd.read_parquet(full / "log.parquet")
    cut = int(np.sort(log["timestamp"].to_numpy())[int(len(log) * (1.0 - later))])
    log[log["timestamp"] < cut].to_parquet(out / "log.parquet")
    return cut


def train(data_dir: Path, out: Path, seed: int, steps: int, every: int, builder: str):
    from align.config import load_recipe
    from align.demo import DEMO_RECIPE
    from align.train import run_training

    recipe = load_recipe(DEMO_RECIPE, [
        f"data.data_dir={data_dir}", f"data.builder={builder}", f"lis.builder={builder}",
        f"training.output_dir={out}", f"training.seed={seed}", f"training.max_steps={steps}",
        f"training.eval_steps={every}", f"training.save_steps={every}", "training.save_total_limit=null",
        "training.report_to=[]", "lis.mode=inline", "lis.early_stopping_patience=null", "lis.n_bootstrap=100"])
    return run_training(recipe), recipe


def latent_r2(vectors: np.ndarray, latents: np.ndarray, folds: int = 5, ridge: float = 1.0) -> float:
    """Cross-validated R^2 of a ridge regression of the true latents on the embeddings."""
    rng = np.random.default_rng(0)
    order = rng.permutation(len(vectors))
    residual, total = 0.0, 0.0
    for fold in range(folds):
        test = order[fold::folds]
        train = np.setdiff1d(order, test)
        x, y = vectors[train], latents[train]
        mx, my = x.mean(0), y.mean(0)
        w = np.linalg.solve((x - mx).T @ (x - mx) + ridge * np.eye(x.shape[1]), (x - mx).T @ (y - my))
        pred = (vectors[test] - mx) @ w + my
        residual += float(((latents[test] - pred) ** 2).sum())
        total += float(((latents[test] - my) ** 2).sum())
    return 1.0 - residual / total


def judge(run_dir: Path, steps: list[int], base_model: str, truth_evaluator, truth) -> dict:
    """True AIS (hidden window) and latent R^2 of every checkpoint."""
    from align.collate import items_from_catalogue
    from align.export import export_embeddings, load_export_model

    items = items_from_catalogue(truth_evaluator.catalogue, base_dir=Path(truth_evaluator.name))
    latents = dict(zip(truth.ids, truth.vectors))
    out = {}
    for step in steps:
        embedder, batcher = load_export_model(base_model, run_dir / f"checkpoint-{step}")
        table = export_embeddings(embedder, batcher, items, manifest={"model": "bench", "step": step}, progress=False)
        ais = truth_evaluator.score_table(table, name=f"step_{step}")
        keep = [i for i, item in enumerate(table.ids) if item in latents]
        r2 = latent_r2(table.vectors[keep], np.stack([latents[table.ids[i]] for i in keep]))
        out[step] = {"true_ais": ais["auc_gain"], "true_ais_ci": ais["auc_gain_ci"], "latent_r2": r2}
    return out


def one_seed(seed: int, args, root: Path) -> dict:
    from lis.datadir import load_datadir
    from lis.embeddings import load_embeddings
    from lis.evaluator import EvaluatorConfig, LISEvaluator
    from lis.synth import simulate

    start = time.perf_counter()
    full = root / f"seed{seed}" / "full"
    simulate("demo", seed, full, progress=False)
    visible = root / f"seed{seed}" / "visible"
    visible_copy(full, visible, args.later)
    result, recipe = train(visible, root / f"seed{seed}" / "run", seed, args.steps, args.every, args.builder)
    history = {h["step"]: h for h in result["lis_callback"].history if h["step"] > 0}
    losses = {e["step"]: e["eval_loss"] for e in result["trainer"].state.log_history if "eval_loss" in e}
    steps = sorted(set(history) & set(losses))
    datadir = load_datadir(full, check_images=False)
    truth_evaluator = LISEvaluator(datadir.log, datadir.catalogue,
                                   EvaluatorConfig(eval_fraction=args.later, seed=seed, n_bootstrap=100),
                                   name=str(full))
    run_dir = root / f"seed{seed}" / "run"
    truth = judge(run_dir, steps, str(run_dir / "base_model"), truth_evaluator, load_embeddings(full / "truth.safetensors"))
    rows = {s: {"eval_ais_auc": history[s]["eval_ais_auc"], "eval_lis_efficiency": history[s]["eval_lis_efficiency"],
                "eval_loss": losses[s], **truth[s]} for s in steps}
    chosen = {
        "eval_ais_auc": max(steps, key=lambda s: rows[s]["eval_ais_auc"]),
        "eval_lis_efficiency": max((s for s in steps if math.isfinite(rows[s]["eval_lis_efficiency"])),
                                   key=lambda s: rows[s]["eval_lis_efficiency"], default=None),
        "eval_loss": min(steps, key=lambda s: rows[s]["eval_loss"]),
        "last": steps[-1],
    }
    best_ais = max(rows[s]["true_ais"] for s in steps)
    best_r2 = max(rows[s]["latent_r2"] for s in steps)
    regret = {rule: None if s is None else {"step": s, "ais_regret": best_ais - rows[s]["true_ais"],
                                            "r2_regret": best_r2 - rows[s]["latent_r2"]} for rule, s in chosen.items()}
    return {"seed": seed, "rows": rows, "chosen": regret, "hindsight_step": max(steps, key=lambda s: rows[s]["true_ais"]),
            "best_true_ais": best_ais, "best_r2": best_r2, "seconds": time.perf_counter() - start,
            "train_steps": result["global_step"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--every", type=int, default=50)
    parser.add_argument("--builder", default="co_engagement")
    parser.add_argument("--later", type=float, default=0.2, help="share of impressions hidden from selection")
    parser.add_argument("--out", type=Path, default=None, help="write every checkpoint's numbers here (JSON)")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(1)
    root = Path(tempfile.mkdtemp(prefix="bench_selection_"))
    results = []
    for seed in args.seeds:
        results.append(one_seed(seed, args, root))
        r = results[-1]
        print(f"\nseed {seed} ({r['seconds']:.0f} s, {r['train_steps']} steps)", flush=True)
        print(f"{'step':>6}{'eval_ais_auc':>14}{'eval_loss':>11}{'true AIS':>10}{'latent R2':>11}")
        for step, row in r["rows"].items():
            print(f"{step:>6}{row['eval_ais_auc']:>+14.4f}{row['eval_loss']:>11.4f}{row['true_ais']:>+10.4f}"
                  f"{row['latent_r2']:>11.3f}", flush=True)
        if args.out:
            args.out.write_text(json.dumps(results, indent=1, default=float))
    print(f"\nSelection regret against the best checkpoint in hindsight (true AIS on a hidden later window of "
          f"{100 * args.later:.0f}% of impressions; latent R^2), demo preset, builder {args.builder}, "
          f"{args.steps} steps, a checkpoint every {args.every}")
    print(f"{'rule':<22}" + "".join(f"{'seed ' + str(r['seed']) + ' step':>13}{'AIS regret':>12}" for r in results)
          + f"{'mean AIS regret':>17}{'mean R2 regret':>16}")
    for rule in RULES:
        cells, ais, r2 = "", [], []
        for r in results:
            c = r["chosen"][rule]
            if c is None:
                cells += f"{'n/a':>13}{'n/a':>12}"
                continue
            cells += f"{c['step']:>13}{c['ais_regret']:>12.4f}"
            ais.append(c["ais_regret"])
            r2.append(c["r2_regret"])
        mean = f"{np.mean(ais):>17.4f}{np.mean(r2):>16.3f}" if ais else f"{'n/a':>17}{'n/a':>16}"
        print(f"{rule:<22}{cells}{mean}")
    print("hindsight best steps: " + ", ".join(f"seed {r['seed']}: {r['hindsight_step']} (true AIS {r['best_true_ais']:+.4f})"
                                               for r in results) + f"; load average {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
