"""Training-step overhead: our AlignTrainer vs a plain transformers.Trainer on the same model and batches.

Both train the tiny Qwen2-VL recipe model (LoRA via PEFT, embedder + InfoNCE in one module)
on the same pairs, seed and item cache for the same number of steps, in this process. The
plain Trainer gets the identical model (its forward returns the loss), so the ratio measures
what AlignTrainer adds per step: the non-finite-loss guard (one host sync per step), the
temperature/accuracy statistics, our compute_loss. Checks that both loss curves agree, then
prints one table. Target: ratio <= 1.05.

    python bench/bench_train.py [--steps 40] [--batch 32]
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def step_timer():
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.times, self._t = [], None

        def on_step_begin(self, args, state, control, **kw):
            self._t = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            self.times.append(time.perf_counter() - self._t)

    return StepTimer()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3,
                        help="alternate plain/ours this many times and pool the step times (machine drift "
                             "otherwise favours whichever runs second)")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)  # the training default on CPU (training.cpu_threads); steadier timings
    from transformers import Trainer

    from align.alignment_model import build_alignment_model
    from align.collate import PairCollator, PairDataset, batcher_for_datadir, items_from_catalogue
    from align.config import load_recipe
    from align.item_cache import ItemCache
    from align.models.tiny import build_tiny_vlm
    from align.trainer import build_trainer, make_training_args
    from align.training_data import pair_rows, prepare_data
    from lis.synth import simulate

    root = Path(tempfile.mkdtemp(prefix="bench_train_"))
    simulate("tiny", 0, root / "data", progress=False)
    build_tiny_vlm("qwen2_vl", root / "base", catalogue=root / "data")
    recipe = load_recipe("recipes/configs/tiny_cpu.yaml", [
        f"data.data_dir={root / 'data'}", f"model.path={root / 'base'}", f"training.output_dir={root / 'run'}",
        f"training.max_steps={args.steps}", f"training.per_device_train_batch_size={args.batch}",
        f"training.save_steps={10 * args.steps}", f"training.eval_steps={10 * args.steps}",
        "training.logging_steps=10", "training.report_to=[]", "lis.early_stopping_patience=null"])
    data = prepare_data(recipe)
    anchors, positives, _ = pair_rows(data)
    dataset = PairDataset(anchors, positives)

    results = {"plain Trainer": ([], []), "AlignTrainer": ([], [])}
    for name in ("plain Trainer", "AlignTrainer") * args.rounds:
        model, processor, family = build_alignment_model(recipe, str(root / "base"), (anchors, positives))
        batcher = batcher_for_datadir(data.datadir, processor, family, max_text_tokens=48, image_size=64)
        collator = PairCollator(ItemCache(batcher, items_from_catalogue(data.datadir), progress=False))
        timer = step_timer()
        if name == "plain Trainer":
            training_args = make_training_args(recipe, "eval_loss", has_eval=False)
            trainer = Trainer(model=model, args=training_args, train_dataset=dataset, data_collator=collator,
                              callbacks=[timer])
        else:
            trainer = build_trainer(recipe, model, dataset, None, collator, callbacks=[timer])
        trainer.train()
        losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
        results[name][0].extend(timer.times[args.warmup:])
        results[name][1][:] = losses

    base, ours = results["plain Trainer"], results["AlignTrainer"]
    agree = len(base[1]) == len(ours[1]) and all(abs(a - b) <= 1e-4 * max(1.0, abs(a)) for a, b in zip(base[1], ours[1]))
    median = lambda xs: sorted(xs)[len(xs) // 2]  # noqa: E731
    b, o = median(base[0]), median(ours[0])
    print(f"machine: {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads), "
          f"{platform.processor() or platform.machine()}")
    print(f"{'size':<34}{'plain Trainer s/step':>22}{'AlignTrainer s/step':>22}{'ratio':>8}")
    print(f"{f'{args.rounds}x{args.steps} steps x {args.batch} pairs (median)':<34}{b:>22.4f}{o:>22.4f}{o / b:>8.3f}")
    print(f"loss curves agree: {agree} (logged losses {['%.4f' % x for x in ours[1]]})")
    return 0 if agree else 1


if __name__ == "__main__":
    sys.exit(main())
