"""run_training with the LIS callback and early stopping on every rank of an accelerate launch.

Args: DATA_DIR BASE_MODEL OUT_DIR [key=value ...]. Evaluates every 2 steps with patience 1 and a
min_delta no AUC gain can reach, so early stopping ends the run at the second evaluation (step 4),
long before max_steps (20). Each rank prints (print_result) the callback's metrics history, the
eval metrics Trainer logged, where it stopped and which checkpoint it kept as best; the test
compares the ranks and reads RUN_DIR.

``callback_run.py --rank0-failures``: no training; checks on two ranks that a result, a
DataError and any other exception raised on rank 0 inside the callback's rank-0 sections
(``_on_main_then_broadcast``) reach every rank, so no rank waits forever in a broadcast.
"""
import json
import sys


def rank0_failures():
    from accelerate import Accelerator

    from align.distributed import world_info
    from align.lis_callback import _on_main_then_broadcast
    from lis.errors import DataError
    from tests.helpers_dist import print_result

    Accelerator(cpu=True)  # initialises the gloo process group
    rank = world_info().rank
    outcomes = {}

    def value():
        return {"from": rank}

    def data_error():
        raise DataError("log.parquet: no headroom")

    def bug():
        raise KeyError("eval_ais_auc")

    for name, fn in (("value", value), ("data_error", data_error), ("bug", bug)):
        try:
            outcomes[name] = ["ok", _on_main_then_broadcast(fn)]
        except Exception as exc:  # noqa: BLE001 - reported to the test
            outcomes[name] = [type(exc).__name__, str(exc)]
    print_result({"rank": rank, **outcomes})


def main():
    if sys.argv[1:] == ["--rank0-failures"]:
        return rank0_failures()
    from align.config import load_recipe
    from align.train import run_training
    from tests.helpers_dist import print_result, training_outcome

    data_dir, base_model, out_dir, *extra = sys.argv[1:]
    recipe = load_recipe("recipes/configs/tiny_cpu.yaml", [
        f"data.data_dir={data_dir}", f"model.path={base_model}", f"training.output_dir={out_dir}",
        "training.max_steps=20", "training.eval_steps=2", "training.save_steps=2", "training.logging_steps=1",
        "training.per_device_train_batch_size=8", "training.export_batch_size=32", "training.report_to=[]",
        "lis.enabled=true", "lis.early_stopping_patience=1", "lis.early_stopping_min_delta=1.0", *extra])
    result = run_training(recipe)
    callback, state = result["lis_callback"], result["trainer"].state
    print_result({
        **training_outcome(result, recipe), "best_metric": state.best_metric, "result_best_step": result["best_step"],
        "trainer_evals": json.dumps([{k: v for k, v in e.items() if k in ("step", "eval_loss", "eval_accuracy")}
                                     for e in state.log_history if "eval_loss" in e]),
        # numpy score arrays (the GAUC scores) as lists, so both ranks compare them element by element
        "lis_scores": json.dumps(callback.lis_scores, default=lambda v: v.tolist()),
        "n_items": len(callback.items),
    })

if __name__ == "__main__":
    main()
