"""The main job, end to end on the embedded default: ``make demo`` / ``lis-align demo``.

Steps (each prints one line; outputs under ``--out``, default ``runs/demo``):

1. simulate the demo platform (``data/``; reused when it already holds the same preset and seed);
2. compare preference-data builders by LIS in one table (``builders/lis_report.{json,md,png}``);
3. build training pairs from the best builder on the fit window, build the tiny VLM offline,
   train it with LoRA and the LIS validation callback until early stopping (``train/``);
4. keep the best adapter, write ``train/lis_report.*`` and ``train/lis_curve.png``;
5. assemble and verify a ready-to-publish folder (``train/publish/``, a dry-run publish);
6. print a summary: LIS per builder, best step, AIS and eta with intervals, where things are.

Limits: one process (the demo is the CPU path; multi-GPU runs use ``lis-align train`` with an
accelerate config); the builder comparison and the training share one evaluator, so the LIS
ceiling of the chosen builder is computed once.
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from lis.errors import DataError

logger = logging.getLogger(__name__)

BUILDERS = ("co_engagement", "ranker_knn", "category", "random")
# Every builder runs with its default options: the feed-like world's sessions give co-engagement
# pairs headroom without tuning. Training overrides of the recipe, so LIS steers the run:
# asynchronous validation every 50 steps (training never waits for it), early stopping after 3
# scored evaluations without an improvement of at least 0.001 AUC gain, a step budget it should
# not reach.
DEMO_TRAINING = ("lis.mode=async", "training.eval_steps=50", "training.save_steps=50", "training.logging_steps=25",
                 "training.max_steps=1000", "lis.early_stopping_patience=3", "lis.early_stopping_min_delta=0.001")
DEMO_RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "configs" / "tiny_cpu.yaml"


def say(message: str) -> None:
    print(f"[demo] {message}", flush=True)


def prepare_world(out: Path, seed: int, preset: str) -> Path:
    from lis.synth import simulate

    data = out / "data"
    marker = data / "synth.json"
    if marker.is_file():
        meta = json.loads(marker.read_text())
        if meta.get("seed") == seed and meta.get("config", {}).get("name", preset) == preset:
            say(f"reusing the simulated platform in {data}")
            return data
    start = time.perf_counter()
    summary = simulate(preset, seed, data, progress=True)
    say(f"simulated the {preset} platform in {time.perf_counter() - start:.0f} s: {summary['items']} items, "
        f"{summary['users']} users, {summary['impressions']} impressions -> {data}")
    return data


def compare_builders(datadir, out: Path, seed: int, builders=BUILDERS):
    from lis.evaluator import EvaluatorConfig, LISEvaluator
    from lis.report import write_report

    start = time.perf_counter()
    # The evaluator's default oracle steps: 300 left the random-pairs oracle short of noise on the
    # demo world (AUC gain -0.0025 [-0.0042, -0.0010]); 600 gives -0.0006 [-0.0018, +0.0004].
    config = EvaluatorConfig(seed=seed)
    evaluator = LISEvaluator(datadir.log, datadir.catalogue, config, name=f"{datadir.path}/log")
    report = evaluator.report({}, builders=builders, with_segments=False, progress=lambda m: say("  " + m))
    write_report(report, out / "builders" / "lis_report.json")
    say(f"compared {len(builders)} builders by LIS in {time.perf_counter() - start:.0f} s "
        f"-> {out / 'builders' / 'lis_report.md'}")
    for line in lis_table(report["lis"]):
        print(line, flush=True)
    return evaluator, report


def lis_table(lis: dict) -> list[str]:
    lines = [f"  {'builder':<15} {'pairs':>7}  {'LIS (AUC gain)':>15}  95% interval"]
    for name, s in sorted(lis.items(), key=lambda kv: -kv[1]["auc_gain"]):
        lo, hi = s["auc_gain_ci"]
        lines.append(f"  {name:<15} {s['n_pairs']:>7}  {s['auc_gain']:>+15.4f}  [{lo:+.4f}, {hi:+.4f}]")
    return lines


def training_builder(lis: dict) -> str:
    """The builder to train on: the highest LIS whose interval lies above 0 (lis.verdict.best_builder)."""
    from lis.verdict import best_builder

    builder = best_builder(lis)
    if builder is None:
        raise DataError("demo: no builder has an LIS interval above 0; the preference data has no headroom.")
    return builder


def run_demo(out="runs/demo", seed: int = 0, preset: str = "demo", overrides=(), publish: bool = True) -> dict:
    """Run the main job; returns the summary it prints (also written to ``OUT/summary.json``).
    Every builder runs with its default options, on every preset."""
    from align import strict_json
    from align.config import load_recipe
    from align.train import run_training
    from lis.datadir import load_datadir

    start = time.perf_counter()
    out = Path(out)
    data_dir = prepare_world(out, seed, preset)
    datadir = load_datadir(data_dir, check_images=True)
    evaluator, builders_report = compare_builders(datadir, out, seed)
    builder = training_builder(builders_report["lis"])
    say(f"training on the fit-window pairs of the best builder: {builder}")
    recipe = load_recipe(DEMO_RECIPE, [
        f"data.data_dir={data_dir}", f"data.builder={builder}", f"lis.builder={builder}",
        f"training.output_dir={out / 'train'}", f"training.seed={seed}", *DEMO_TRAINING, *overrides,
    ])
    if (out / "train").exists():  # the demo's own output: a rerun starts clean, never resumes
        import shutil

        say(f"removing the previous demo run in {out / 'train'}")
        shutil.rmtree(out / "train")
    train_start = time.perf_counter()
    result = run_training(recipe, evaluator=evaluator)
    train_seconds = time.perf_counter() - train_start
    callback = result["lis_callback"]
    summary = summarize(result, callback, builders_report, builder, train_seconds, out)
    summary["steering"] = steering(result, callback, recipe)
    if publish:
        from align.publish import publish as publish_run

        published = publish_run(out / "train", repo_id=f"lis-align/demo-{builder}", dry_run=True)
        summary["publish_folder"] = str(published["folder"])
        summary["publish_verify_min_cosine"] = published["verify"].get("min_cosine")
    summary["seconds"] = round(time.perf_counter() - start, 1)
    strict_json.write(out / "summary.json", summary)
    print_summary(summary)
    return summary


def summarize(result, callback, builders_report, builder, train_seconds, out: Path) -> dict:
    history = callback.history
    step0 = next(h for h in history if h["step"] == 0)
    best = next((h for h in history if h["step"] == result["best_step"]), callback.best_entry())
    lis = builders_report["lis"]
    return {
        "lis": {name: {"auc_gain": s["auc_gain"], "auc_gain_ci": s["auc_gain_ci"], "n_pairs": s["n_pairs"]}
                for name, s in lis.items()},
        "builder": builder,
        "best_step": result["best_step"],
        "steps": result["global_step"],
        "ais_step0": [step0["eval_ais_auc"], step0["eval_ais_auc_lo"], step0["eval_ais_auc_hi"]],
        "eta_step0": _eta(step0),
        "ais_best": [best["eval_ais_auc"], best["eval_ais_auc_lo"], best["eval_ais_auc_hi"]],
        "eta_best": _eta(best),
        "eta_best_ci": [best.get("eval_lis_efficiency_lo"), best.get("eval_lis_efficiency_hi")],
        "train_seconds": round(train_seconds, 1),
        "callback_seconds": {k: round(v, 1) for k, v in callback.seconds.items()},
        "outputs": {
            "builders_report": str(out / "builders" / "lis_report.md"),
            "training_report": str(out / "train" / "lis_report.md"),
            "curve": str(out / "train" / "lis_curve.png"),
            "best_adapter": str(out / "train" / "best"),
            "embeddings": str(out / "train" / "best" / "embeddings.safetensors"),
        },
    }


def steering(result, callback, recipe) -> dict:
    """How LIS steered the run: scored evaluations, where early stopping fired and why, the best checkpoint."""
    import math

    metric = recipe.lis.metric_for_best_model
    scored = [h for h in callback.history if h["step"] > 0 and math.isfinite(h.get(metric, math.nan))]
    state = result["trainer"].state
    stopped = getattr(callback, "stopped", None)
    if stopped is None and state.global_step < state.max_steps:
        stopped = {"step": int(state.global_step), "reason": "early_stopping",
                   "last_scored_step": max((h["step"] for h in scored), default=None)}
    best = next((h for h in scored if h["step"] == result["best_step"]), None)
    improved_after = [h["step"] for h in scored if best is not None and h["step"] > best["step"]]
    lags = [h["lag_steps"] for h in scored if "lag_steps" in h]
    return {
        "mode": recipe.lis.mode, "metric": metric, "scored_evaluations": len(scored), "max_steps": recipe.training.max_steps,
        "eval_steps": recipe.training.eval_steps, "patience": recipe.lis.early_stopping_patience,
        "min_delta": recipe.lis.early_stopping_min_delta, "stopped": stopped,
        "best_checkpoint": None if best is None else f"checkpoint-{best['step']}",
        "best_value": None if best is None else best[metric],
        "scored_after_best": improved_after, "lag_steps": [min(lags), max(lags)] if lags else None,
        "failure": getattr(callback, "failure", None),
    }


def _eta(entry: dict):
    value = entry.get("eval_lis_efficiency")
    return None if value is None or value != value else value


def steering_lines(s: dict) -> list[str]:
    """The summary's account of how LIS steered training: stop, best checkpoint and why, validation cost."""
    st, cb = s.get("steering") or {}, s["callback_seconds"]
    lines = []
    if st:
        lag = st["lag_steps"]
        lines.append(f"  LIS validation: {st['scored_evaluations']} scored evaluations, every {st['eval_steps']} steps, "
                     f"{st['mode']}" + (f" (results arrived {lag[0]}-{lag[1]} steps after their checkpoint)" if lag else ""))
        stop = st["stopped"]
        if st.get("failure"):
            lines.append(f"  LIS scorer failed: {st['failure']}")
        if stop and stop["reason"] == "early_stopping":
            lines.append(f"  early stopping at step {stop['step']} of {st['max_steps']}: {st['metric']} did not improve by more "
                         f"than {st['min_delta']:g} in {st['patience']} scored evaluation(s) after the best "
                         f"(last scored: step {stop['last_scored_step']})")
        elif stop:
            lines.append(f"  training stopped at step {stop['step']}: {stop['reason']}")
        else:
            lines.append(f"  no early stop: the {st['max_steps']}-step budget ran out while {st['metric']} still improved")
        if st["best_checkpoint"]:
            lines.append(f"  best checkpoint: {st['best_checkpoint']}, the highest {st['metric']} ({st['best_value']:+.4f}) of "
                         f"{st['scored_evaluations']} scored evaluations; {len(st['scored_after_best'])} later one(s) "
                         "scored lower; its adapter is train/best")
    if "wait" in cb:
        lines.append(f"  training waited on LIS validation {cb['wait']:.1f} s + final drain {cb['drain']:.1f} s of "
                     f"{s['train_seconds']:.0f} s training (the scorer process exported and scored beside it)")
    else:
        lines.append(f"  LIS callback: export {cb['export']:.0f} s + scoring {cb['score']:.0f} s of {s['train_seconds']:.0f} s training")
    return lines


def print_summary(s: dict) -> None:
    def fmt(triple):
        return f"{triple[0]:+.4f} [{triple[1]:+.4f}, {triple[2]:+.4f}]"

    def fmt_eta(value):
        return "n/a" if value is None else f"{value:.2f}"

    print("\n== lis-align demo summary ==")
    for line in lis_table(s["lis"]):
        print(line)
    print(f"  trained on: {s['builder']} pairs; {s['steps']} steps in {s['train_seconds']:.0f} s; best step {s['best_step']}")
    print(f"  AIS at step 0:    {fmt(s['ais_step0'])}   eta {fmt_eta(s['eta_step0'])}")
    lo, hi = s["eta_best_ci"]
    eta_ci = "" if lo is None else f" [{lo:.2f}, {hi:.2f}]"
    print(f"  AIS at best step: {fmt(s['ais_best'])}   eta {fmt_eta(s['eta_best'])}{eta_ci}")
    for line in steering_lines(s):
        print(line)
    for name, path in s["outputs"].items():
        print(f"  {name:<17} {path}")
    if "publish_folder" in s:
        print(f"  {'publish (dry run)':<17} {s['publish_folder']}  (lis-align publish {Path(s['outputs']['best_adapter']).parent} --repo-id NAME)")
    print(f"  total {s['seconds']:.0f} s")
