"""End-to-end training of one recipe: data dir -> pairs -> LoRA VLM -> Trainer -> RUN_DIR.

:func:`run_training` is what ``lis-align train``, ``python -m align.train_main`` and
``recipes/train.py`` all call, in one process or on every rank of an ``accelerate launch``.

RUN_DIR (= ``training.output_dir``) afterwards::

    run.json            base_model, base_model_id, family, best_step, best_metric, recipe, data
    best/               PEFT adapter + projection head + temperature + processor + lis_align.json
                        + embeddings.safetensors (every catalogue item, from the best checkpoint)
    checkpoint-N/       Trainer checkpoints (see align.trainer)
    base_model/         only for model.path = tiny:FAMILY: the tiny VLM built for this run
    runs/               TensorBoard event files (report_to: tensorboard)
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from lis.errors import DataError

logger = logging.getLogger(__name__)

TINY_PREFIX = "tiny:"


@dataclass
class TrainingData:
    """Everything :func:`prepare_data` derives from the data dir (no model needed)."""

    datadir: object  # lis.datadir.DataDir
    windows: object  # lis.windows.Windows
    pairs: pd.DataFrame  # anchor_id, positive_id, weight (all fit-window pairs)
    source: str  # builder name or pairs file
    trained_until: int  # last timestamp of the fit window
    train_rows: np.ndarray = field(default=None)  # indices into pairs
    eval_rows: np.ndarray = field(default=None)
    eval_is_holdout: bool = True


def prepare_data(recipe) -> TrainingData:
    """Load and check the data dir, split windows, build (or load) the fit-window pairs, hold some out.

    Raises DataError for a missing/corrupt image (naming the catalogue file, row and item), a
    pair naming an item not in the catalogue (naming the pairs file and the pair), and zero
    pairs (naming the builder or file and the fit window).
    """
    from lis.builders import build_pairs, builder_options
    from lis.datadir import load_datadir
    from lis.schemas import load_pairs, validate_pairs
    from lis.windows import split_windows

    d = recipe.data
    datadir = load_datadir(d.data_dir, check_images=True)
    windows = split_windows(datadir.log, eval_fraction=d.eval_fraction, name=f"{d.data_dir}/log")
    fit = windows.slice(datadir.log, "fit")
    item_ids = datadir.catalogue["item_id"]
    if d.pairs_file:
        # load_pairs names the file, the column and the first pair whose item is unknown.
        pairs = load_pairs(d.pairs_file, item_ids=item_ids)
        source = str(d.pairs_file)
        logger.warning("pairs file %s: trusted to hold only fit-window behaviour (before %s)", source,
                       windows.to_dict()["eval_start"])
    else:
        options = {"top_k": d.top_k} if "top_k" in builder_options(d.builder) else {}
        options.update(d.builder_options)
        pairs = build_pairs(d.builder, fit, datadir.catalogue, seed=recipe.training.seed, **options)
        source = d.builder
        if len(pairs) == 0:
            raise DataError(f"{d.data_dir}: builder '{d.builder}' built no pairs from the fit window "
                            f"({len(fit)} impressions before {windows.to_dict()['eval_start']}); "
                            "try another data.builder or a longer log.")
        pairs = validate_pairs(pairs, name=f"pairs of builder '{d.builder}'", item_ids=item_ids)
    data = TrainingData(datadir, windows, pairs.reset_index(drop=True), source, int(fit["timestamp"].max()))
    _hold_out(data, recipe)
    return data


def _hold_out(data: TrainingData, recipe) -> None:
    """A few % of the pairs for ``eval_loss``; tiny pair sets evaluate on training pairs instead."""
    n = len(data.pairs)
    rng = np.random.default_rng(recipe.training.seed)
    order = rng.permutation(n)
    k = min(recipe.data.max_holdout_pairs, int(n * recipe.data.holdout_fraction))
    if k == 0:  # holdout_fraction < 1 is validated, so k < n always
        data.train_rows, data.eval_rows, data.eval_is_holdout = np.arange(n), order[: min(n, recipe.data.max_holdout_pairs)], False
        logger.warning("%d pairs with data.holdout_fraction=%s hold none out; eval_loss is measured on training pairs",
                       n, recipe.data.holdout_fraction)
        return
    data.train_rows, data.eval_rows = np.sort(order[k:]), np.sort(order[:k])


def resolve_base_model(recipe, out_dir: Path, catalogue_dir) -> tuple[str, str | None]:
    """``(loadable path or Hub id, Hub id or None)``; builds the tiny VLM for ``tiny:FAMILY``.

    Rank 0 builds ``OUTPUT_DIR/base_model`` (atomically); the other ranks wait for it. A
    folder left by an earlier run (resume) is reused as is.
    """
    path = recipe.model.path
    if not path.startswith(TINY_PREFIX):
        local = Path(path).expanduser()
        return (str(local), None) if local.exists() else (path, path)
    family = path[len(TINY_PREFIX):]
    target = out_dir / "base_model"
    if not (target / "config.json").is_file():
        if int(os.environ.get("RANK", "0")) == 0:
            from align.models.tiny import build_tiny_vlm

            logger.info("building a tiny %s VLM in %s (tokenizer trained on the catalogue text)", family, target)
            build_tiny_vlm(family, target, catalogue=catalogue_dir, image_size=recipe.data.image_size,
                           seed=recipe.training.seed)
        else:
            _wait_for(target / "config.json")
    return str(target), None


def _wait_for(path: Path, timeout: float = 600.0) -> None:
    start = time.time()
    while not path.exists():
        if time.time() - start > timeout:
            raise DataError(f"{path}: rank 0 did not build the tiny model within {timeout:.0f} s.")
        time.sleep(0.2)


def build_alignment_model(recipe, base_model: str, pairs_rows=None):
    """Load the VLM, apply LoRA, wrap in embedder + loss -> ``(AlignmentModel, processor, family)``."""
    import torch

    from align.embedder import ItemEmbedder
    from align.lora import apply_lora, trainable_report
    from align.loss import InfoNCELoss, encode_pairs
    from align.models.loading import load_vlm
    from align.trainer import AlignmentModel

    torch.manual_seed(recipe.training.seed)  # LoRA and head initialisation
    vlm, processor, family = load_vlm(base_model, dtype=recipe.model.dtype,
                                      attn_implementation=recipe.model.attn_implementation)
    lo = recipe.lora
    peft_model = apply_lora(vlm, family, r=lo.r, alpha=lo.alpha, dropout=lo.dropout, target_modules=lo.target_modules,
                            vision=lo.vision, train_token_embeddings=lo.train_token_embeddings)
    e = recipe.embedder
    embedder = ItemEmbedder(peft_model, family, dim=e.dim, pooling=e.pooling, center=e.center,
                            gradient_checkpointing=e.gradient_checkpointing)
    ls = recipe.loss
    loss = InfoNCELoss(init_scale=ls.logit_scale_init, learn_scale=ls.learn_temperature,
                       gather_with_grad=ls.gather_with_grad, local_loss=ls.local_loss)
    known = encode_pairs(*pairs_rows) if (ls.mask_known_pairs and pairs_rows is not None) else None
    model = AlignmentModel(embedder, loss, known_pairs=known)
    model.train()
    report = trainable_report(model)
    logger.info("trainable parameters: %d of %d (LoRA %d, token embeddings %d, head/temperature %d)",
                report["trainable"], report["total"], report["lora"], report["embeddings"], report["other"])
    return model, processor, family


def _count_truncated(batcher, items) -> int:
    texts = ["" if it.get("text") is None else str(it["text"]) for it in items]
    ids = batcher.tokenizer(texts, add_special_tokens=False)["input_ids"]
    return sum(len(i) > batcher.max_text_tokens for i in ids)


def make_lis_callback(recipe, data: TrainingData, source, items: list[dict], evaluator=None):
    """The :class:`align.lis_callback.LISValidationCallback` a recipe's ``lis`` section asks for.

    ``evaluator``: a ready ``LISEvaluator`` (the demo reuses the one that compared builders);
    otherwise rank 0 builds one at the start of training with the recipe's windows and options.
    """
    from align.lis_callback import LISValidationCallback

    def factory():
        from lis.evaluator import EvaluatorConfig, LISEvaluator

        options = {recipe.data.builder: dict(recipe.data.builder_options)} if recipe.data.builder_options else {}
        config = EvaluatorConfig(eval_fraction=recipe.data.eval_fraction, n_bootstrap=recipe.lis.n_bootstrap,
                                 seed=recipe.training.seed, top_k=recipe.data.top_k, builder_options=options)
        return LISEvaluator(data.datadir.log, data.datadir.catalogue, config, name=f"{recipe.data.data_dir}/log")

    return LISValidationCallback(source, items, recipe.training.output_dir, builder=recipe.lis.builder or recipe.data.builder,
                                 evaluator=evaluator, evaluator_factory=factory,
                                 require_headroom=recipe.lis.require_headroom, trained_until=data.trained_until,
                                 export_batch_size=recipe.training.export_batch_size,
                                 max_eval_items=recipe.lis.max_eval_items, model_name=recipe.model.path)


def run_training(recipe, callbacks=None, evaluator=None) -> dict:
    """Train ``recipe`` end to end and write RUN_DIR (module docstring). Call it on every rank.

    Args:
        recipe: a :class:`align.config.Recipe` (``load_recipe(path, overrides)``).
        callbacks: extra ``transformers.TrainerCallback``\\ s; see :func:`align.trainer.build_trainer`
            for their order and the best-model metric. With ``recipe.lis.enabled`` the LIS
            validation callback is added first (:func:`make_lis_callback`), and the run also
            writes ``lis_report.json``/``.md``, ``lis_curve.png`` and ``evals.jsonl``.
        evaluator: a ready ``LISEvaluator`` for that callback (rank 0 only; optional).

    Returns (on every rank): ``run_dir``, ``best_dir``, ``best_step``, ``best_metric``,
    ``global_step``, ``train_loss``, ``seconds_per_step``, ``n_pairs``, ``n_items``,
    ``n_truncated_texts``, ``embeddings`` (path).

    Raises DataError for bad input (see :func:`prepare_data`) and
    :class:`align.trainer.TrainingDivergedError` for a NaN/inf loss.
    """
    from align.collate import batcher_for_datadir, items_from_catalogue
    from align.export import adapter_hash, export_embeddings, export_manifest, write_embedder_config
    from align.item_cache import ItemCache
    from align.trainer import BatcherSource, PairCollator, PairDataset, build_trainer, resume_argument
    from lis.atomic import write_json
    from lis.embeddings import save_embeddings

    _set_cpu_threads(recipe.training.cpu_threads)
    out_dir = Path(recipe.training.output_dir)
    data = prepare_data(recipe)
    catalogue = data.datadir.catalogue
    row_of = {item: row for row, item in enumerate(catalogue["item_id"])}
    anchors = data.pairs["anchor_id"].map(row_of).to_numpy()
    positives = data.pairs["positive_id"].map(row_of).to_numpy()
    weights = data.pairs["weight"].to_numpy(dtype=np.float32)
    logger.info("%d pairs from %s on the fit window (%d for training, %d for eval_loss), %d items",
                len(data.pairs), data.source, len(data.train_rows), len(data.eval_rows), len(catalogue))

    base_model, base_model_id = resolve_base_model(recipe, out_dir, data.datadir.path)
    model, processor, family = build_alignment_model(recipe, base_model, pairs_rows=(anchors, positives))

    d = recipe.data
    batcher = batcher_for_datadir(data.datadir, processor, family, max_text_tokens=d.max_text_tokens,
                                  image_size=d.image_size, missing_image=d.missing_image)
    items = items_from_catalogue(data.datadir)
    if d.item_cache:
        source = ItemCache(batcher, items, progress=_is_main())
        truncated = source.truncated
    else:
        source = BatcherSource(batcher, items)
        truncated = _count_truncated(batcher, items)
    if truncated:
        logger.warning("%d of %d item texts are longer than data.max_text_tokens=%d tokens and were truncated",
                       truncated, len(items), d.max_text_tokens)

    def subset(rows):
        return PairDataset(anchors[rows], positives[rows], weights[rows])

    collator = PairCollator(source, use_weights=recipe.loss.use_pair_weights)
    # The exporter collates from the item cache when there is one, else runs the processor itself.
    export_source = source if d.item_cache else batcher
    lis_callback = make_lis_callback(recipe, data, export_source, items, evaluator) if recipe.lis.enabled else None
    callbacks = ([lis_callback] if lis_callback else []) + list(callbacks or [])
    trainer = build_trainer(recipe, model, subset(data.train_rows), subset(data.eval_rows), collator,
                            processor=processor, callbacks=callbacks)
    trainer.checkpoint_config = dict(batcher=batcher, trained_until=data.trained_until, base_model=base_model)
    result = trainer.train(resume_from_checkpoint=resume_argument(recipe.training.resume_from_checkpoint))
    # Wall time per optimiser step of this call, evaluations and checkpoints included.
    steps_per_second = result.metrics.get("train_steps_per_second") or 0.0
    seconds_per_step = 1.0 / steps_per_second if steps_per_second else None

    best_step = trainer.state.best_global_step or trainer.state.global_step
    best_metric = _best_metrics(trainer.state, best_step, trainer.args.metric_for_best_model)
    if lis_callback is not None:  # its metrics join the dict after Trainer logged it
        best_metric.update(next((h for h in lis_callback.history if h["step"] == best_step), {}))
        best_metric.pop("step", None)
    best_dir = out_dir / "best"
    tmp = out_dir / "best.tmp"
    main = trainer.is_world_process_zero()
    if main and tmp.exists():
        import shutil

        shutil.rmtree(tmp)
    trainer.accelerator.wait_for_everyone()
    trainer.save_model(str(tmp))  # a collective under ZeRO-3 (gathers the weights), writes on rank 0
    trainer.accelerator.wait_for_everyone()
    manifest = export_manifest(base_model_id or base_model, step=best_step, catalogue=catalogue,
                               trained_until=data.trained_until, adapter_hash_value=adapter_hash(tmp))
    embedder = trainer.accelerator.unwrap_model(trainer.model).embedder
    table = export_embeddings(embedder, batcher, items, batch_size=recipe.training.export_batch_size,
                              manifest=manifest, progress=main)
    if main:
        write_embedder_config(tmp, batcher, step=best_step, trained_until=data.trained_until,
                              base_model=base_model_id or base_model)
        save_embeddings(tmp / "embeddings.safetensors", table)
        _replace_dir(tmp, best_dir)
        if lis_callback is not None:
            from align.lis_callback import write_lis_report

            write_lis_report(lis_callback.final_report(table), out_dir)
        run = {
            "base_model": base_model, "base_model_id": base_model_id, "family": family.name,
            "best_step": int(best_step), "best_metric": best_metric, "recipe": recipe.to_dict(),
            "data": {"data_dir": str(d.data_dir), "builder": data.source, "n_pairs": int(len(data.pairs)),
                     "n_train_pairs": int(len(data.train_rows)), "n_eval_pairs": int(len(data.eval_rows)),
                     "eval_is_holdout": data.eval_is_holdout, "n_items": int(len(catalogue)),
                     "n_truncated_texts": int(truncated), "trained_until": int(data.trained_until),
                     "windows": data.windows.to_dict()},
            "global_step": int(trainer.state.global_step), "seconds_per_step": seconds_per_step,
            "lis_callback_seconds": dict(lis_callback.seconds) if lis_callback else None,
            "train_seconds": result.metrics.get("train_runtime"),
        }
        write_json(out_dir / "run.json", run)
    trainer.accelerator.wait_for_everyone()
    return {"run_dir": str(out_dir), "best_dir": str(best_dir), "best_step": int(best_step),
            "best_metric": best_metric, "global_step": int(trainer.state.global_step),
            "train_loss": float(result.training_loss), "seconds_per_step": seconds_per_step,
            "n_pairs": int(len(data.pairs)), "n_items": int(len(catalogue)), "n_truncated_texts": int(truncated),
            "embeddings": str(best_dir / "embeddings.safetensors"), "trainer": trainer,
            "lis_callback": lis_callback}


def _best_metrics(state, best_step: int, metric: str | None) -> dict:
    """The eval_* metrics logged at ``best_step`` (empty when no evaluation ran)."""
    for entry in reversed(state.log_history):
        if entry.get("step") == best_step and any(k.startswith("eval_") for k in entry):
            return {k: v for k, v in entry.items() if k.startswith("eval_")}
    return {}


def _replace_dir(tmp: Path, final: Path) -> None:
    import shutil

    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)


def _set_cpu_threads(threads: int | None) -> None:
    import torch

    if threads and not torch.cuda.is_available():
        torch.set_num_threads(int(threads))


def _is_main() -> bool:
    return int(os.environ.get("RANK", "0")) == 0
