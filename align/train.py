"""Training one recipe, end to end: THE entry point of training.

    python -m align.train RECIPE.yaml [section.field=value ...]

is what ``accelerate launch`` runs on every rank (``lis-align train --accelerate-config NAME``
builds that command); ``lis-align train`` without a config and ``recipes/train.py`` call
:func:`main` in this process; library code (the demo, tests, benchmarks) calls
:func:`run_training`. Bad input prints one line naming the file and field and exits with
status 2; a diverged run (NaN loss) too.

The flow, one function per step, on every rank:

1. :func:`prepare` — the data (:mod:`align.training_data`), the base VLM with LoRA, embedder and
   loss (:mod:`align.alignment_model`), the item batcher and cache, the pair collator
   (:mod:`align.collate`), the LIS validation callback and the trainer (:mod:`align.trainer`).
2. :func:`fit` — ``Trainer.train`` (resuming when the recipe says so) with evaluation,
   checkpoints, early stopping and the best checkpoint reloaded at the end.
3. :func:`finalise_best` — the best weights into ``best/`` with ``lis_align.json`` and the
   embeddings of every catalogue item, the LIS report, and ``run.json``.

The run folder's layout is :mod:`align.checkpoint`'s (docs/design.md, "Checkpoint and run format").
"""
from __future__ import annotations

import argparse
import logging
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from align import strict_json
from align.alignment_model import build_alignment_model, resolve_base_model
from align.async_validation import make_async_callback
from align.checkpoint import (BEST_DIR, EMBEDDINGS, adapter_hash, batcher_settings, replace_dir,
                              write_embedder_config, write_run)
from align.collate import BatcherSource, PairCollator, PairDataset, batcher_for_datadir, items_from_catalogue
from align.config import load_recipe
from align.distributed import launch_rank
from align.export import export_embeddings, export_manifest
from align.frozen_inputs import FrozenItemInputs
from align.item_cache import ItemCache
from align.launcher import die_with_parent
from align.lis_callback import LISValidationCallback, write_lis_report
from align.trainer import CheckpointInfo, build_trainer, resume_argument
from align.training_data import TrainingData, negative_rows, pair_rows, prepare_data
from lis.embeddings import save_embeddings
from lis.engine import make_evaluator
from lis.evaluator import EvaluatorConfig
from lis.errors import DataError, one_line

# Named, not __name__: `python -m align.train` runs this module as __main__.
logger = logging.getLogger("align.train")

# Entries of run_training's result that are live objects, not data: never printed or written.
LIVE_OBJECTS = ("trainer", "lis_callback")


@dataclass
class PreparedRun:
    """Everything :func:`prepare` builds, handed to :func:`fit` and :func:`finalise_best`."""

    recipe: object  # align.config.Recipe
    data: TrainingData
    trainer: object  # align.trainer.AlignTrainer
    batcher: object  # align.collate.ItemBatcher
    items: list
    lis_callback: object  # align.lis_callback.LISValidationCallback or None
    base_model: str  # loadable path or Hub id
    base_model_id: str | None  # Hub id of the base, None for a local folder only
    family: object  # align.models.families.Family
    n_truncated: int
    source: object  # what exports collate from: the item cache (or frozen inputs over it), else the batcher

    @property
    def out_dir(self) -> Path:
        return Path(self.recipe.training.output_dir)


def main(argv=None) -> int:
    """Command-line entry point (see the module docstring); returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m align.train", description=__doc__.splitlines()[0])
    parser.add_argument("recipe", help="recipe YAML (see recipes/configs/)")
    parser.add_argument("overrides", nargs="*", help="section.field=value overrides, e.g. training.max_steps=50")
    args = parser.parse_args(argv)
    die_with_parent()  # under a launcher: never outlive it (align/launcher.py)
    rank = launch_rank()
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING,
                        format=f"[rank {rank}] %(levelname)s %(name)s: %(message)s")
    try:
        result = run_training(load_recipe(args.recipe, args.overrides))
    except DataError as error:
        print(f"lis-align train: {one_line(str(error))}", file=sys.stderr, flush=True)
        return 2
    if rank == 0:
        shown = {k: v for k, v in result.items() if k not in LIVE_OBJECTS}
        print("TRAINING DONE " + strict_json.dumps(shown), flush=True)
    return 0


def run_training(recipe, callbacks=None, evaluator=None) -> dict:
    """Train ``recipe`` end to end and write its run folder. Call it on every rank.

    Args:
        recipe: a :class:`align.config.Recipe` (``load_recipe(path, overrides)``).
        callbacks: extra ``transformers.TrainerCallback``\\ s; see :func:`align.trainer.build_trainer`
            for their order and the best-model metric. With ``recipe.lis.enabled`` the LIS
            validation callback is added first (:func:`make_lis_callback`), and the run also
            writes ``lis_report.json``/``.md``, ``lis_curve.png`` and ``evals.jsonl``.
        evaluator: a ready ``LISEvaluator`` for that callback (rank 0 only; optional).

    Returns (on every rank): ``run_dir``, ``best_dir``, ``best_step``, ``best_metric``,
    ``global_step``, ``train_loss``, ``seconds_per_step``, ``n_pairs``, ``n_items``,
    ``n_truncated_texts``, ``embeddings`` (path), and the live ``trainer`` and ``lis_callback``.

    Raises DataError for bad input (see :func:`align.training_data.prepare_data`) and
    :class:`align.trainer.TrainingDivergedError` for a NaN/inf loss.
    """
    _set_cpu_threads(recipe.training.cpu_threads)
    resume_argument(recipe.training.resume_from_checkpoint, recipe.training.output_dir)  # fail before the slow part
    run = prepare(recipe, callbacks, evaluator)
    output = fit(run)
    best = finalise_best(run, output)
    state = run.trainer.state
    return {"run_dir": str(run.out_dir), "best_dir": best["best_dir"], "best_step": best["best_step"],
            "best_metric": best["best_metric"], "global_step": int(state.global_step),
            "train_loss": float(output.training_loss), "seconds_per_step": seconds_per_step(output),
            "n_pairs": int(len(run.data.pairs)), "n_items": int(len(run.data.datadir.catalogue)),
            "n_truncated_texts": int(run.n_truncated), "embeddings": str(Path(best["best_dir"]) / EMBEDDINGS),
            "trainer": run.trainer, "lis_callback": run.lis_callback}


# --- 1. prepare -----------------------------------------------------------------------------
def prepare(recipe, callbacks=None, evaluator=None) -> PreparedRun:
    """Data, model, batches, callbacks and the trainer of ``recipe`` (nothing trained yet)."""
    data = prepare_data(recipe)
    anchors, positives, weights = pair_rows(data)
    logger.info("%d pairs from %s on the fit window (%d for training, %d for eval_loss), %d items",
                len(data.pairs), data.source, len(data.train_rows), len(data.eval_rows), len(data.datadir.catalogue))
    base_model, base_model_id = resolve_base_model(recipe, Path(recipe.training.output_dir), data.datadir.path)
    model, processor, family = build_alignment_model(recipe, base_model, pairs_rows=(anchors, positives))

    d = recipe.data
    batcher = batcher_for_datadir(data.datadir, processor, family, max_text_tokens=d.max_text_tokens,
                                  image_size=d.image_size, prompt=d.prompt, missing_image=d.missing_image)
    items = items_from_catalogue(data.datadir)
    if d.item_cache:
        source = ItemCache(batcher, items, progress=launch_rank() == 0)
        truncated = source.truncated
        if d.cache_frozen_inputs:  # before Trainer wraps the model: under ZeRO-3 it is still whole here
            source = FrozenItemInputs(source, model.embedder, progress=launch_rank() == 0)
    else:
        source = BatcherSource(batcher, items)
        truncated = _count_truncated(batcher, items)
    if truncated:
        logger.warning("%d of %d item texts are longer than data.max_text_tokens=%d tokens and were truncated",
                       truncated, len(items), d.max_text_tokens)

    negatives = negative_rows(data, recipe.loss.hard_negatives, seed=recipe.training.seed)

    def subset(rows):
        return PairDataset(anchors[rows], positives[rows], weights[rows],
                           None if negatives is None else negatives[rows])

    # The exporter collates from the item cache when there is one, else runs the processor itself.
    export_source = source if d.item_cache else batcher
    lis_callback = (make_lis_callback(recipe, data, export_source, items, evaluator, base_model)
                    if recipe.lis.enabled else None)
    info = CheckpointInfo(batcher=batcher_settings(batcher), trained_until=data.trained_until, base_model=base_model)
    trainer = build_trainer(recipe, model, subset(data.train_rows), subset(data.eval_rows),
                            PairCollator(source, use_weights=recipe.loss.use_pair_weights,
                                         hard_negatives=negatives is not None,
                                         chunk_size=recipe.loss.cache_chunk_size), processor=processor,
                            callbacks=([lis_callback] if lis_callback else []) + list(callbacks or []),
                            checkpoint_info=info)
    if hasattr(lis_callback, "attach"):  # asynchronous validation reaches the other handlers through the trainer
        lis_callback.attach(trainer)
    return PreparedRun(recipe, data, trainer, batcher, items, lis_callback, base_model, base_model_id, family,
                       int(truncated), export_source)


def evaluator_config(recipe) -> EvaluatorConfig:
    """The evaluator a recipe asks for: its windows, bootstrap, seed, builder options and engine."""
    options = {recipe.data.builder: dict(recipe.data.builder_options)} if recipe.data.builder_options else {}
    return EvaluatorConfig(eval_fraction=recipe.data.eval_fraction, n_bootstrap=recipe.lis.n_bootstrap,
                           seed=recipe.training.seed, top_k=recipe.data.top_k, builder_options=options,
                           engine=recipe.lis.engine, spark_master=recipe.lis.spark_master,
                           spark_conf={str(k): str(v) for k, v in recipe.lis.spark_conf.items()})


def make_lis_callback(recipe, data: TrainingData, source, items: list[dict], evaluator=None, base_model=None):
    """The :class:`align.lis_callback.LISValidationCallback` a recipe's ``lis`` section asks for.

    ``evaluator``: a ready ``LISEvaluator`` (the demo reuses the one that compared builders);
    otherwise rank 0 builds one at the start of training with the recipe's windows and options.
    """
    def factory():
        return make_evaluator(data.datadir.log, data.datadir.catalogue, evaluator_config(recipe),
                              name=f"{recipe.data.data_dir}/log")

    common = dict(builder=recipe.lis.builder or recipe.data.builder, evaluator=evaluator, evaluator_factory=factory,
                  require_headroom=recipe.lis.require_headroom, trained_until=data.trained_until,
                  export_batch_size=recipe.training.export_batch_size, max_eval_items=recipe.lis.max_eval_items,
                  model_name=recipe.model.path)
    if recipe.lis.mode == "async":
        return make_async_callback(recipe, source, items, base_model, **common)
    return LISValidationCallback(source, items, recipe.training.output_dir,
                                 matryoshka_dims=recipe.loss.matryoshka_dims, **common)


# --- 2. fit ---------------------------------------------------------------------------------
def fit(run: PreparedRun):
    """``Trainer.train`` (resumed as ``training.resume_from_checkpoint`` says); returns its ``TrainOutput``."""
    training = run.recipe.training
    return run.trainer.train(resume_from_checkpoint=resume_argument(training.resume_from_checkpoint, training.output_dir))


def seconds_per_step(output) -> float | None:
    """Wall time per optimiser step of this call, evaluations and checkpoints included."""
    steps_per_second = output.metrics.get("train_steps_per_second") or 0.0
    return 1.0 / steps_per_second if steps_per_second else None


# --- 3. finalise the best checkpoint ----------------------------------------------------------
def finalise_best(run: PreparedRun, output) -> dict:
    """Write ``best/`` (weights, ``lis_align.json``, embeddings), the LIS report and ``run.json``.

    The trainer holds the best weights (``load_best_model_at_end``). Saving is a collective
    under ZeRO-3 and the export runs on every rank; files are written by rank 0 only, into
    ``best.tmp`` first and renamed, so ``best/`` is never half-written.
    Returns ``{"best_dir", "best_step", "best_metric"}``.
    """
    trainer, data = run.trainer, run.data
    best_step = int(trainer.state.best_global_step or trainer.state.global_step)
    best_metric = _best_metrics(trainer.state, best_step)
    if run.lis_callback is not None:  # its metrics join the dict after Trainer logged it
        best_metric.update(next((h for h in run.lis_callback.history if h["step"] == best_step), {}))
        best_metric.pop("step", None)
    best_dir, tmp = run.out_dir / BEST_DIR, run.out_dir / (BEST_DIR + ".tmp")
    main = trainer.is_world_process_zero()
    if main and tmp.exists():
        shutil.rmtree(tmp)
    trainer.accelerator.wait_for_everyone()
    trainer.save_model(str(tmp))  # a collective under ZeRO-3 (gathers the weights), writes on rank 0
    trainer.accelerator.wait_for_everyone()
    base = run.base_model_id or run.base_model
    manifest = export_manifest(base, step=best_step, catalogue=data.datadir.catalogue,
                               trained_until=data.trained_until, adapter_hash_value=adapter_hash(tmp),
                               builder=data.builder, builder_options=data.builder_options)
    embedder = trainer.accelerator.unwrap_model(trainer.model).embedder
    table = export_embeddings(embedder, run.source, run.items, batch_size=run.recipe.training.export_batch_size,
                              manifest=manifest, progress=main)
    if main:
        write_embedder_config(tmp, batcher_settings(run.batcher), step=best_step, trained_until=data.trained_until,
                              base_model=base)
        save_embeddings(tmp / EMBEDDINGS, table)
        replace_dir(tmp, best_dir)
        if run.lis_callback is not None:
            write_lis_report(run.lis_callback.final_report(table), run.out_dir)
        write_run(run.out_dir, run_record(run, output, best_step, best_metric))
    trainer.accelerator.wait_for_everyone()
    return {"best_dir": str(best_dir), "best_step": best_step, "best_metric": best_metric}


def run_record(run: PreparedRun, output, best_step: int, best_metric: dict) -> dict:
    """The content of ``run.json`` (fields: docs/design.md, "Checkpoint and run format")."""
    data, recipe = run.data, run.recipe
    return {
        "base_model": run.base_model, "base_model_id": run.base_model_id, "family": run.family.name,
        "best_step": int(best_step), "best_metric": best_metric, "recipe": recipe.to_dict(),
        "data": {"data_dir": str(recipe.data.data_dir), "builder": data.source, "n_pairs": int(len(data.pairs)),
                 "n_train_pairs": int(len(data.train_rows)), "n_eval_pairs": int(len(data.eval_rows)),
                 "eval_is_holdout": data.eval_is_holdout, "n_items": int(len(data.datadir.catalogue)),
                 "n_truncated_texts": int(run.n_truncated), "trained_until": int(data.trained_until),
                 "windows": data.windows.to_dict()},
        "global_step": int(run.trainer.state.global_step), "seconds_per_step": seconds_per_step(output),
        "lis_callback_seconds": dict(run.lis_callback.seconds) if run.lis_callback else None,
        "train_seconds": output.metrics.get("train_runtime"),
    }


def _best_metrics(state, best_step: int) -> dict:
    """The eval_* metrics logged at ``best_step`` (empty when no evaluation ran)."""
    for entry in reversed(state.log_history):
        if entry.get("step") == best_step and any(k.startswith("eval_") for k in entry):
            return {k: v for k, v in entry.items() if k.startswith("eval_")}
    return {}


def _count_truncated(batcher, items) -> int:
    texts = ["" if it.get("text") is None else str(it["text"]) for it in items]
    ids = batcher.tokenizer(texts, add_special_tokens=False)["input_ids"]
    return sum(len(i) > batcher.max_text_tokens for i in ids)


def _set_cpu_threads(threads: int | None) -> None:
    if threads and not torch.cuda.is_available():
        torch.set_num_threads(int(threads))


if __name__ == "__main__":
    sys.exit(main())
