"""Training step with frozen inputs cached per item (data.cache_frozen_inputs) vs from pixels.

The tiny Qwen2-VL recipe model (LoRA via PEFT, embedder + InfoNCE) trains on the same batches
from two sources of the same item cache: the plain one (the vision tower and the M-RoPE
position ids run at every step) and :class:`align.frozen_inputs.FrozenItemInputs` (both
computed once per item). Two copies of the model start from the same weights; rounds alternate
between them so machine drift does not favour one. Prints the median CPU seconds per step of
each, their ratio, and whether the two loss curves agree.

    python bench/bench_frozen_inputs.py [--steps 20] [--rounds 3] [--batch 64]
"""
from __future__ import annotations

import argparse
import copy
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch", type=int, default=64, help="pairs per step (the demo's 64)")
    args = parser.parse_args()
    import numpy as np
    import torch

    torch.set_num_threads(1)  # the training default on CPU (training.cpu_threads)
    from align.alignment_model import build_alignment_model
    from align.collate import PairCollator, batcher_for_datadir, items_from_catalogue
    from align.config import load_recipe
    from align.frozen_inputs import FrozenItemInputs
    from align.item_cache import ItemCache
    from align.models.tiny import build_tiny_vlm
    from align.training_data import pair_rows, prepare_data
    from lis.synth import simulate

    root = Path(tempfile.mkdtemp(prefix="bench_frozen_"))
    simulate("demo", 0, root / "data", progress=False)
    build_tiny_vlm("qwen2_vl", root / "base", catalogue=root / "data")
    recipe = load_recipe("recipes/configs/tiny_cpu.yaml", [f"data.data_dir={root / 'data'}", f"model.path={root / 'base'}",
                                                          f"training.output_dir={root / 'run'}"])
    data = prepare_data(recipe)
    anchors, positives, _ = pair_rows(data)
    model, processor, family = build_alignment_model(recipe, str(root / "base"), (anchors, positives))
    batcher = batcher_for_datadir(data.datadir, processor, family, max_text_tokens=recipe.data.max_text_tokens,
                                  image_size=recipe.data.image_size)
    cache = ItemCache(batcher, items_from_catalogue(data.datadir), progress=False)
    start = time.perf_counter()
    frozen = FrozenItemInputs(cache, model.embedder, progress=False)
    build_seconds = time.perf_counter() - start
    order = np.random.default_rng(0).permutation(len(anchors))
    features = [{"anchor": int(anchors[i]), "positive": int(positives[i])} for i in order]
    batches = [features[s:s + args.batch] for s in range(0, args.rounds * args.steps * args.batch, args.batch)]

    runs = {}
    for name, source in (("from pixels", cache), ("frozen inputs", frozen)):
        copy_ = copy.deepcopy(model).train()
        optimizer = torch.optim.AdamW([p for p in copy_.parameters() if p.requires_grad], lr=recipe.training.learning_rate)
        runs[name] = {"model": copy_, "optimizer": optimizer, "collate": PairCollator(source), "cpu": [], "loss": []}
    for round_ in range(args.rounds):
        for name, run in runs.items():
            for features_ in batches[round_ * args.steps:(round_ + 1) * args.steps]:
                batch = run["collate"](features_)
                started = time.process_time()
                loss = run["model"](**batch)["loss"]
                loss.backward()
                run["optimizer"].step()
                run["optimizer"].zero_grad()
                run["cpu"].append(time.process_time() - started)
                run["loss"].append(float(loss.detach()))
    median = {name: float(np.median(run["cpu"])) for name, run in runs.items()}
    plain, cached = median["from pixels"], median["frozen inputs"]
    gap = max(abs(a - b) for a, b in zip(runs["from pixels"]["loss"], runs["frozen inputs"]["loss"]))
    print(f"machine: {os.cpu_count()} cores, torch {torch.__version__} (1 thread); {len(cache)} items, "
          f"{args.batch} pairs per step, {args.rounds}x{args.steps} steps each")
    print(f"frozen inputs built once in {build_seconds:.1f} s")
    print("| source | CPU s/step (median) |\n|---|---:|")
    print(f"| from pixels (vision tower + position ids every step) | {plain:.4f} |")
    print(f"| frozen inputs cached per item | {cached:.4f} |")
    print(f"ratio frozen / pixels: {cached / plain:.3f}")
    print(f"largest loss difference over {len(runs['from pixels']['loss'])} steps: {gap:.2e}")
    return 0 if gap < 1e-3 else 1


if __name__ == "__main__":
    sys.exit(main())
