"""run_training with LIS early stopping on one "machine" of a two-machine launch; prints RESULT.

Args: DATA_DIR BASE_MODEL OUT_DIR [key=value ...]. The recipe is the tiny one with
``multinode_helpers.early_stopping_overrides`` (early stopping on LIS ends the run at step 4 of
20). Each rank reports its machine (GROUP_RANK), its place in the world, where it stopped, a
digest of every trainable parameter after training (gathered under ZeRO-3) and every file it
wrote, renamed or removed under OUT_DIR (write_spy.py, installed before training starts).
"""
import hashlib
import os
import sys
from pathlib import Path


def digest(named) -> str:
    h = hashlib.sha256()
    for name, t in named:
        h.update(name.encode())
        h.update(t.detach().double().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def main():
    from tests.align.dist_scripts.write_spy import install

    data_dir, base_model, out_dir, *extra = sys.argv[1:]
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    writes = install(out_dir)

    from align.config import load_recipe
    from align.train import run_training
    from tests.align.multinode_helpers import early_stopping_overrides
    from tests.helpers_dist import print_result

    recipe = load_recipe("recipes/configs/tiny_cpu.yaml", early_stopping_overrides(data_dir, base_model, out_dir) + extra)
    result = run_training(recipe)
    trainer = result["trainer"]
    model = trainer.accelerator.unwrap_model(trainer.model)
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if trainer.is_deepspeed_enabled:
        import deepspeed

        with deepspeed.zero.GatheredParameters([p for _, p in named], modifier_rank=None):
            params = digest(named)
    else:
        params = digest(named)
    state = trainer.state
    print_result({
        "rank": trainer.args.process_index, "world_size": trainer.args.world_size,
        "machine_rank": int(os.environ["GROUP_RANK"]), "local_rank": int(os.environ["LOCAL_RANK"]),
        "deepspeed": bool(trainer.is_deepspeed_enabled), "max_steps": recipe.training.max_steps,
        "global_step": state.global_step, "should_training_stop": bool(trainer.control.should_training_stop),
        "best_global_step": state.best_global_step, "result_best_step": result["best_step"],
        "history_steps": [h["step"] for h in result["lis_callback"].history],
        "n_trainable": len(named), "params": params, "writes": sorted(set(writes)),
    })


if __name__ == "__main__":
    main()
