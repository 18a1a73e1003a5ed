"""run_training with asynchronous LIS validation on every rank of an accelerate launch.

Args: DATA_DIR BASE_MODEL OUT_DIR [key=value ...]. Saves every 10 steps with save_total_limit 1,
reads scored results at every step, early stopping with patience 1 and a min_delta no AUC gain
can reach (so it fires when the second scored checkpoint arrives), and a step budget (400) the
run should never reach. The test slows the scorer down and kills it through the scorer's
testing hooks (environment variables, align/async_scorer.py). Each rank prints what it saw.
"""
import sys


def main():
    from align.config import load_recipe
    from align.train import run_training
    from tests.helpers_dist import print_result, training_outcome

    data_dir, base_model, out_dir, *extra = sys.argv[1:]
    recipe = load_recipe("recipes/configs/tiny_cpu.yaml", [
        f"data.data_dir={data_dir}", f"model.path={base_model}", f"training.output_dir={out_dir}",
        "training.max_steps=400", "training.eval_steps=10", "training.save_steps=10", "training.logging_steps=1",
        "training.save_total_limit=1", "training.per_device_train_batch_size=8", "training.export_batch_size=32",
        "training.report_to=[]", "lis.enabled=true", "lis.mode=async", "lis.max_eval_items=100",
        "lis.early_stopping_patience=1", "lis.early_stopping_min_delta=1.0", "lis.scorer_timeout=120", *extra])
    result = run_training(recipe)
    callback = result["lis_callback"]
    print_result({**training_outcome(result, recipe), "stopped": callback.stopped, "failure": callback.failure,
                  "seconds": callback.seconds})

if __name__ == "__main__":
    main()
