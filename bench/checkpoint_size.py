"""Size of one DeepSpeed checkpoint, before and after leaving the frozen weights out.

    python bench/checkpoint_size.py [--measure CHECKPOINT_DIR ...]

Counts the parameters of two models with their recipe's LoRA and embedder, built on the meta
device (nothing allocated, nothing downloaded): the tiny recipe (recipes/configs/tiny_cpu.yaml,
a tiny Qwen2-VL built offline, fp32) and the 2B-class Qwen2-VL shape of
recipes/configs/qwen2_vl_2b_lora.yaml (Qwen2-VL-2B-Instruct's dimensions, bf16). From the counts
it computes the bytes of the engine files (``global_stepN/``) of one checkpoint under ZeRO-2 and
ZeRO-3, summed over ranks:

- after (trainable state only): the module state holds the trainable parameters and buffers
  (ZeRO-2; ZeRO-3 stores empty placeholders), the optimizer shards an fp32 master copy and two
  Adam moments of each trainable parameter (12 bytes each);
- before: the same plus the frozen weights, once in the module state (ZeRO-2) or as ZeRO
  "frozen fragments" (ZeRO-3). ZeRO-2 also writes the fragments: a second copy on a GPU (a CPU
  copy of each weight), deduplicated by torch.save when the weights already live on the CPU.

The adapter files beside them (adapter, head, temperature, processor) are the same before and
after and not counted. ``--measure DIR`` prints the real sizes of checkpoint folders next to
the computed ones (the formula was checked against the tiny recipe's, see README).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

ADAM_FP32 = 12  # fp32 master weight + exp_avg + exp_avg_sq per trainable parameter


def qwen2_vl_2b_config():
    """Qwen/Qwen2-VL-2B-Instruct's architecture (its config.json), as bench/bench_gpu_train.py builds it."""
    from transformers import Qwen2VLConfig

    return Qwen2VLConfig(
        text_config=dict(vocab_size=151936, hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                         num_attention_heads=12, num_key_value_heads=2, max_position_embeddings=32768,
                         tie_word_embeddings=True,
                         rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [16, 24, 24]}),
        vision_config=dict(depth=32, embed_dim=1280, hidden_size=1536, num_heads=16, mlp_ratio=4, patch_size=14,
                           spatial_merge_size=2, temporal_patch_size=2),
        image_token_id=151655, video_token_id=151656, vision_start_token_id=151652, vision_end_token_id=151653,
        tie_word_embeddings=True,
    )


def tiny_config():
    """The tiny recipe's Qwen2-VL as training builds it (``tiny:qwen2_vl``: tokenizer trained on a catalogue)."""
    import tempfile

    from transformers import AutoConfig

    from align.models.tiny import build_tiny_vlm
    from lis.synth import simulate

    with tempfile.TemporaryDirectory() as tmp:
        simulate("tiny", 0, Path(tmp) / "data", progress=False)
        build_tiny_vlm("qwen2_vl", Path(tmp) / "m", catalogue=Path(tmp) / "data", image_size=64)
        return AutoConfig.from_pretrained(Path(tmp) / "m")


def count(config, recipe_path: str) -> dict:
    """Trainable, frozen and buffer element counts of the recipe's AlignmentModel (meta device)."""
    import torch
    from transformers import AutoModelForImageTextToText

    from align.alignment_model import AlignmentModel
    from align.config import load_recipe
    from align.embedder import ItemEmbedder
    from align.lora import apply_lora
    from align.loss import InfoNCELoss

    recipe = load_recipe(recipe_path, [])
    with torch.device("meta"):
        vlm = AutoModelForImageTextToText.from_config(config)
        lo, e = recipe.lora, recipe.embedder
        peft = apply_lora(vlm, "qwen2_vl", r=lo.r, alpha=lo.alpha, dropout=lo.dropout, target_modules=lo.target_modules,
                          vision=lo.vision, train_token_embeddings=lo.train_token_embeddings)
        model = AlignmentModel(ItemEmbedder(peft, "qwen2_vl", dim=e.dim, pooling=e.pooling, center=e.center), InfoNCELoss())
    seen, out = set(), {"trainable": 0, "frozen": 0, "buffers": 0}
    for _, p in model.named_parameters():
        if id(p) not in seen:  # tied weights count once, as torch.save stores them once
            seen.add(id(p))
            out["trainable" if p.requires_grad else "frozen"] += p.numel()
    out["buffers"] = sum(b.numel() for _, b in model.named_buffers(remove_duplicate=True))
    return out


def engine_bytes(n: dict, weight_bytes: int, stage: int, frozen: bool, gpu: bool) -> int:
    module = (n["trainable"] + n["buffers"]) * weight_bytes if stage == 2 else 0
    optimizer = n["trainable"] * ADAM_FP32
    extra = 0
    if frozen:
        extra = n["frozen"] * weight_bytes  # module state (ZeRO-2) or frozen fragments (ZeRO-3)
        if stage == 2 and gpu:
            extra += n["frozen"] * weight_bytes  # ZeRO-2's fragments: a separate CPU copy
    return module + optimizer + extra


def human(b: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if b < 1000 or unit == "GB":
            return f"{b:.3g} {unit}" if unit != "B" else f"{int(b)} B"
        b /= 1000
    return ""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--measure", nargs="*", default=[], help="checkpoint folders whose global_stepN/ to size")
    args = parser.parse_args()
    models = [("tiny recipe (fp32, CPU)", tiny_config(), "recipes/configs/tiny_cpu.yaml", 4, False),
              ("Qwen2-VL-2B shape (bf16, GPU)", qwen2_vl_2b_config(), "recipes/configs/qwen2_vl_2b_lora.yaml", 2, True)]
    print("| model | trainable | frozen | ZeRO stage | before | after | after / before |")
    print("|---|---|---|---|---|---|---|")
    for name, config, recipe, width, gpu in models:
        n = count(config, recipe)
        for stage in (2, 3):
            before = engine_bytes(n, width, stage, frozen=True, gpu=gpu)
            after = engine_bytes(n, width, stage, frozen=False, gpu=gpu)
            print(f"| {name} | {n['trainable']:,} | {n['frozen']:,} | {stage} | {human(before)} | {human(after)} "
                  f"| {after / before:.3f} |")
    for directory in args.measure:
        for step in sorted(Path(directory).glob("global_step*")):
            total = sum(f.stat().st_size for f in step.rglob("*") if f.is_file())
            print(f"measured {step}: {human(total)} ({total:,} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
