"""run_training on every rank of an accelerate launch; prints RESULT per rank.

Args: DATA_DIR BASE_MODEL OUT_DIR [key=value ...]. Each rank reports its trainable parameters
(gathered under ZeRO-3) after training, and rank 0 compares them with the adapter and head it
saved in OUT_DIR/best (the ZeRO-3 "real weights" check).
"""
import sys

import torch


def main():
    from align.config import load_recipe
    from align.train import run_training
    from tests.helpers_dist import print_result

    data_dir, base_model, out_dir, *extra = sys.argv[1:]
    recipe = load_recipe("recipes/configs/tiny_cpu.yaml", [
        f"data.data_dir={data_dir}", f"model.path={base_model}", f"training.output_dir={out_dir}",
        "training.max_steps=3", "training.eval_steps=3", "training.save_steps=3", "training.logging_steps=1",
        "training.per_device_train_batch_size=8", "training.report_to=[]", "lis.early_stopping_patience=null", "lis.enabled=false",
        "training.export_batch_size=32", *extra])
    result = run_training(recipe)
    trainer = result["trainer"]
    model = trainer.accelerator.unwrap_model(trainer.model)
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    params = [p for _, p in named]
    ctx = None
    if trainer.is_deepspeed_enabled:
        import deepspeed

        ctx = deepspeed.zero.GatheredParameters(params, modifier_rank=None)
        ctx.__enter__()
    try:
        full = {n: p.detach().double().clone() for n, p in named}
    finally:
        if ctx is not None:
            ctx.__exit__(None, None, None)
    checks = {}
    if trainer.is_world_process_zero():
        from peft import get_peft_model_state_dict
        from safetensors.torch import load_file

        saved = load_file(f"{out_dir}/best/adapter_model.safetensors")
        # The in-memory adapter, named as PEFT names it on disk, from the gathered parameters.
        live = {n[len("embedder.model."):]: t for n, t in full.items() if n.startswith("embedder.model.")}
        expected = get_peft_model_state_dict(model.embedder.model, state_dict=live)
        checks["adapter_keys"] = len(saved)
        checks["adapter_numel"] = int(sum(t.numel() for t in saved.values()))
        checks["adapter_max_diff"] = max(float((saved[k].double() - expected[k]).abs().max()) for k in expected)
        checks["adapter_same_keys"] = sorted(saved) == sorted(expected)
        head = load_file(f"{out_dir}/best/projection_head.safetensors")
        checks["head_max_diff"] = float((head["head.weight"].double() - full["embedder.head.weight"]).abs().max())
    print_result({
        "rank": trainer.args.process_index, "world_size": trainer.args.world_size,
        "deepspeed": bool(trainer.is_deepspeed_enabled), "global_step": result["global_step"],
        "params": {n: t.flatten()[:64].tolist() for n, t in full.items() if "lora_A" in n or "head" in n or "log_scale" in n},
        "param_sums": {n: float(t.sum()) for n, t in full.items()}, **checks,
    })


if __name__ == "__main__":
    main()
