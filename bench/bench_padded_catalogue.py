"""Validation cost against catalogue items the log never shows: the original catalogue vs one padded 10x.

Run:  .venv/bin/python bench/bench_padded_catalogue.py [--preset tiny|demo] [--pad 10] [--steps 4]

Simulates a platform (``lis.synth.simulate(preset, 0)``), then writes a second data dir with the
same log and images and a catalogue padded with ``pad`` x as many items that no impression,
history or pair touches (ids ``pad-N``, texts and images borrowed from real items). Trains the
demo recipe for ``--steps`` steps with inline LIS validation every ``steps / 2`` steps on each
(``data.item_cache=false``, so the only per-item work at an evaluation is the export), and
prints per data dir: catalogue items, items exported per evaluation, and the seconds per
evaluation spent exporting and scoring. Flat means the padded row is close to the original;
the ratio is printed. The one-off item preprocessing of training (``data.item_cache: true``)
does grow with the catalogue and is not part of validation.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))


def padded_copy(data_dir: Path, out: Path, factor: int) -> Path:
    import pandas as pd

    from lis.datadir import load_datadir

    out.mkdir(parents=True)
    # Hard links: a data dir's images must lie inside it (symlinks out of it are refused).
    shutil.copytree(data_dir / "images", out / "images", copy_function=os.link)
    os.link(data_dir / "log.parquet", out / "log.parquet")
    catalogue = load_datadir(data_dir, check_images=False).catalogue
    rows = catalogue.sample(n=len(catalogue) * factor, replace=True, random_state=0).reset_index(drop=True)
    rows["item_id"] = [f"pad-{i}" for i in range(len(rows))]
    pd.concat([catalogue, rows], ignore_index=True).to_parquet(out / "catalogue.parquet")
    return out


def validate(data_dir: Path, out: Path, steps: int, base_model: Path) -> dict:
    from align.config import load_recipe
    from align.demo import DEMO_RECIPE
    from align.train import run_training

    every = max(steps // 2, 1)
    recipe = load_recipe(DEMO_RECIPE, [
        f"data.data_dir={data_dir}", f"model.path={base_model}", f"training.output_dir={out}",
        f"training.max_steps={steps}", f"training.eval_steps={every}", f"training.save_steps={every}",
        "training.per_device_train_batch_size=16", "training.report_to=[]", "data.item_cache=false",
        "lis.enabled=true", "lis.mode=inline", "lis.early_stopping_patience=null"])
    result = run_training(recipe)
    callback = result["lis_callback"]
    n = len(callback.history)
    return {"catalogue": result["n_items"], "exported": len(callback.items), "evaluations": n,
            "export": callback.seconds["export"] / n, "score": callback.seconds["score"] / n}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny", choices=("tiny", "demo"))
    parser.add_argument("--pad", type=int, default=10, help="unused items added per real item (default 10)")
    parser.add_argument("--steps", type=int, default=4)
    args = parser.parse_args()

    import torch

    torch.set_num_threads(1)
    from align.models.tiny import build_tiny_vlm
    from lis.synth import simulate

    root = Path(tempfile.mkdtemp(prefix="bench_padded_"))
    original = root / "data"
    simulate(args.preset, 0, original, progress=False)
    padded = padded_copy(original, root / "padded", args.pad)
    base_model = root / "base"
    build_tiny_vlm("qwen2_vl", base_model, catalogue=original)  # one tokenizer for both runs
    rows = {}
    for name, data_dir in (("original", original), (f"padded {args.pad}x", padded)):
        start = time.perf_counter()
        rows[name] = validate(data_dir, root / f"run_{name.split()[0]}", args.steps, base_model)
        print(f"{name}: done in {time.perf_counter() - start:.0f} s", flush=True)
    print(f"\nLIS validation cost per evaluation, {args.preset} preset, catalogue padded with {args.pad}x unused items")
    print(f"{'catalogue':<12}{'items':>8}{'exported':>10}{'evals':>7}{'export s':>10}{'score s':>9}")
    for name, r in rows.items():
        print(f"{name:<12}{r['catalogue']:>8}{r['exported']:>10}{r['evaluations']:>7}{r['export']:>10.2f}{r['score']:>9.2f}")
    a, b = rows["original"], rows[f"padded {args.pad}x"]
    ratio = (b["export"] + b["score"]) / (a["export"] + a["score"])
    print(f"padded / original, export + score per evaluation: {ratio:.2f}x for {b['catalogue'] / a['catalogue']:.0f}x "
          f"the catalogue; items exported: {b['exported']} vs {a['exported']}; load average {os.getloadavg()[0]:.1f}")
    shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
