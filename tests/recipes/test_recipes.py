"""Every recipe in recipes/configs loads, explains itself and trains one step with a tiny stand-in.

The stand-in is a tiny random VLM of the recipe's own family (Qwen2-VL for the Qwen recipes,
Idefics3 for SmolVLM), so a broken recipe field (a typo, a bad LoRA target, an option the
trainer cannot take) fails CI without downloading a real checkpoint.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.align.train_helpers import make_base_model, make_data

REPO = Path(__file__).resolve().parents[2]
RECIPES = sorted((REPO / "recipes" / "configs").glob("*.yaml"))


def stand_in_family(model_path: str) -> str:
    if model_path.startswith("tiny:"):
        return model_path[len("tiny:"):]
    name = model_path.lower()
    if "qwen2" in name:
        return "qwen2_vl"
    if "smolvlm" in name or "idefics" in name:
        return "idefics3"
    if "llava" in name:
        return "llava"
    raise AssertionError(f"no tiny stand-in family for {model_path}")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return make_data(tmp_path_factory.mktemp("recipe_data") / "data")


@pytest.fixture(scope="module")
def stand_ins(tmp_path_factory, data_dir):
    root = tmp_path_factory.mktemp("recipe_models")
    return {fam: make_base_model(root / fam, data_dir, fam) for fam in ("qwen2_vl", "idefics3", "llava")}


def test_there_are_the_four_recipes():
    names = {p.name for p in RECIPES}
    assert {"tiny_cpu.yaml", "qwen2_vl_2b_lora.yaml", "qwen2_5_vl_3b_lora.yaml", "smolvlm_lora.yaml"} <= names


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_recipe_opens_with_its_launch_command(path):
    head = path.read_text().splitlines()[:12]
    assert head[0].startswith("# Launch:") and any(line.startswith("# Needs:") for line in head)
    launch = " ".join(line for line in head[:3])
    assert f"recipes/configs/{path.name}" in launch and "recipes/train.py" in launch


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_recipe_trains_one_step_with_a_tiny_stand_in(path, data_dir, stand_ins, tmp_path):
    from align.config import load_recipe
    from align.train import run_training

    torch.set_num_threads(1)
    original = load_recipe(path)
    family = stand_in_family(original.model.path)
    recipe = load_recipe(path, [
        f"model.path={stand_ins[family]}", "model.dtype=float32", "model.attn_implementation=null",
        f"data.data_dir={data_dir}", "data.image_size=64", f"training.output_dir={tmp_path / 'run'}",
        "training.max_steps=1", "training.eval_steps=1", "training.save_steps=1", "training.bf16=false",
        "training.per_device_train_batch_size=8", "training.dataloader_num_workers=0", "training.report_to=[]",
        "lis.early_stopping_patience=null", "lis.enabled=false",
    ])
    result = run_training(recipe)
    assert result["global_step"] == 1
    assert (tmp_path / "run" / "best" / "adapter_model.safetensors").is_file()
