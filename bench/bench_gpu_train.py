"""GPU training throughput and MFU of a 2B-class Qwen2-VL shape (random weights, bf16, ZeRO-2).

    accelerate launch --config_file accelerate_configs/deepspeed_zero2.yaml bench/bench_gpu_train.py \
        [--steps 30] [--batch 16] [--image-size 448] [--text-tokens 48] [--peak-tflops 989]

Builds Qwen2-VL-2B's architecture from its config (hidden 1536, 28 layers, 12 heads, 2 KV
heads; the 675M-parameter vision tower) with random weights (no download), applies the same
LoRA + embedder + InfoNCE as training and times AlignTrainer steps on random pixels/text.
MFU = model FLOPs per second / (GPUs x peak bf16 TFLOPs, default H100 SXM dense 989), with
model FLOPs = 6 x trainable-path parameters x tokens for the language model + vision tower
(forward 2, backward 4; the frozen weights still cost the activation-gradient 2 of the 4, so
this is the usual 6N convention, an upper bound for LoRA). Exits with a message without a GPU.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> int:
    import torch

    if not torch.cuda.is_available():
        print("bench_gpu_train: no CUDA GPU here; this benchmark needs one (see the docstring). Nothing measured.")
        return 0
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--batch", type=int, default=16, help="pairs per GPU (2x items)")
    parser.add_argument("--image-size", type=int, default=448)
    parser.add_argument("--text-tokens", type=int, default=48)
    parser.add_argument("--peak-tflops", type=float, default=989.0)
    args = parser.parse_args()

    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration, TrainingArguments

    from align.embedder import ItemEmbedder
    from align.lora import apply_lora
    from align.loss import InfoNCELoss
    from align.alignment_model import AlignmentModel
    from align.collate import PairDataset
    from align.trainer import AlignTrainer

    config = Qwen2VLConfig(
        text_config=dict(vocab_size=151936, hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                         num_attention_heads=12, num_key_value_heads=2, max_position_embeddings=32768,
                         rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [16, 24, 24]}),
        vision_config=dict(depth=32, embed_dim=1280, hidden_size=1536, num_heads=16, mlp_ratio=4, patch_size=14,
                           spatial_merge_size=2, temporal_patch_size=2),
        image_token_id=151655, video_token_id=151656, vision_start_token_id=151652, vision_end_token_id=151653,
    )
    torch.manual_seed(0)
    vlm = Qwen2VLForConditionalGeneration(config).to(torch.bfloat16)
    vlm.config.use_cache = False
    n_lm = sum(p.numel() for n, p in vlm.named_parameters() if "visual" not in n and "lm_head" not in n)
    n_vis = sum(p.numel() for n, p in vlm.named_parameters() if "visual" in n)
    embedder = ItemEmbedder(apply_lora(vlm, "qwen2_vl"), "qwen2_vl", dim=128, gradient_checkpointing=True)
    model = AlignmentModel(embedder, InfoNCELoss())

    grid = args.image_size // 14
    patches, image_tokens = grid * grid, grid * grid // 4
    seq = image_tokens + args.text_tokens + 2

    class RandomItems:
        def collate(self, rows):
            n = len(rows)
            ids = torch.randint(0, 150000, (n, seq))
            ids[:, 0], ids[:, image_tokens + 1] = 151652, 151653
            ids[:, 1:image_tokens + 1] = 151655
            return {"input_ids": ids, "attention_mask": torch.ones(n, seq, dtype=torch.long),
                    "mm_token_type_ids": (ids == 151655).long(),
                    "pixel_values": torch.randn(n * patches, 3 * 2 * 14 * 14),
                    "image_grid_thw": torch.tensor([[1, grid, grid]] * n)}

    from align.collate import PairCollator

    n_pairs = args.batch * 64 * (args.steps + args.warmup)
    dataset = PairDataset(torch.arange(n_pairs) % 100000, (torch.arange(n_pairs) + 1) % 100000)
    training_args = TrainingArguments(output_dir="/tmp/bench_gpu_train", max_steps=args.steps + args.warmup,
                                      per_device_train_batch_size=args.batch, bf16=True, learning_rate=1e-4,
                                      logging_steps=10, save_strategy="no", report_to="none",
                                      remove_unused_columns=False, ddp_find_unused_parameters=False)
    times = []
    from transformers import TrainerCallback

    class Timer(TrainerCallback):
        def on_step_begin(self, *a, **k):
            torch.cuda.synchronize()
            self.t = time.perf_counter()

        def on_step_end(self, *a, **k):
            torch.cuda.synchronize()
            times.append(time.perf_counter() - self.t)

    trainer = AlignTrainer(model=model, args=training_args, train_dataset=dataset,
                               data_collator=PairCollator(RandomItems()), callbacks=[Timer()])
    trainer.train()
    world = trainer.args.world_size
    step = sorted(times[args.warmup:])[len(times[args.warmup:]) // 2]
    items = 2 * args.batch
    flops = 6 * (n_lm * seq * items + n_vis * patches * items) * world
    mfu = flops / step / (world * args.peak_tflops * 1e12)
    if trainer.is_world_process_zero():
        print(f"GPUs {world} x {torch.cuda.get_device_name()}, torch {torch.__version__}")
        print(f"{'shape':<44}{'s/step':>9}{'items/s':>10}{'MFU':>8}")
        print(f"{f'Qwen2-VL-2B, {items} items/GPU, {seq} tok, {patches} patches':<44}{step:>9.3f}"
              f"{items * world / step:>10.1f}{mfu:>8.1%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
