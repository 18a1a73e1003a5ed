"""Shared set-up of the training tests: a tiny synthetic data dir, a tiny VLM, small recipes."""
from __future__ import annotations

from pathlib import Path

FAST = [  # a few seconds of training on 2 cores
    "training.max_steps=6", "training.eval_steps=3", "training.save_steps=3", "training.logging_steps=2",
    "training.per_device_train_batch_size=16", "training.export_batch_size=64", "lis.early_stopping_patience=null", "lis.enabled=false",
]


def make_data(root: Path) -> Path:
    from lis.synth import simulate

    simulate("tiny", 0, root, progress=False)
    return root


def make_base_model(root: Path, data_dir: Path, family: str = "qwen2_vl") -> Path:
    from align.models.tiny import build_tiny_vlm

    build_tiny_vlm(family, root, catalogue=data_dir)
    return root


def recipe(data_dir, base_model, out_dir, *extra, path="recipes/configs/tiny_cpu.yaml"):
    from align.config import load_recipe

    return load_recipe(path, [f"data.data_dir={data_dir}", f"model.path={base_model}",
                              f"training.output_dir={out_dir}", *FAST, *extra])


def factory_evaluator(data_dir, base_model, *extra):
    """The evaluator training's factory would build for ``recipe(...)`` with ``extra``, built once
    so that several runs of a module share it (its LIS is cached: the set-up costs ~25 s a run)."""
    from align.train import evaluator_config
    from lis.datadir import load_datadir
    from lis.engine import make_evaluator

    datadir = load_datadir(data_dir, check_images=False)
    config = evaluator_config(recipe(data_dir, base_model, "unused", *extra))
    return make_evaluator(datadir.log, datadir.catalogue, config, name=f"{data_dir}/log")
