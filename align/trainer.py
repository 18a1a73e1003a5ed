"""``transformers.Trainer`` for contrastive alignment, and a recipe -> a ready trainer.

- :class:`AlignTrainer` — Trainer with our loss, logging, checkpoint format and a
  non-finite-loss guard; :class:`CheckpointInfo` is what it records beside every checkpoint's
  weights (``lis_align.json``, see :mod:`align.checkpoint`).
- :func:`make_training_args` / :func:`build_trainer` — a recipe -> a ready trainer; the hook
  where callers (the LIS callback) plug in their ``TrainerCallback``\\ s.

The model is an :class:`align.alignment_model.AlignmentModel`, the batches come from
:class:`align.collate.PairCollator`; training itself is orchestrated by :mod:`align.train`.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import EarlyStoppingCallback, Trainer, TrainingArguments
from transformers.trainer import SCHEDULER_NAME, TRAINING_ARGS_NAME

from align.cached_loss import cached_forward
from align.checkpoint import (last_complete_checkpoint, last_good_checkpoint, load_align_state, save_align_state,
                              write_embedder_config)
from align.distributed import is_distributed
from lis.errors import DataError

logger = logging.getLogger(__name__)


class TrainingDivergedError(DataError):
    """The loss became NaN or infinite; training stopped before the bad step updated anything."""


@dataclass(frozen=True)
class CheckpointInfo:
    """What every checkpoint records in ``lis_align.json`` beside its weights, so export rebuilds its inputs."""

    batcher: dict  # align.checkpoint.batcher_settings of the training batcher
    trained_until: int | None = None  # last timestamp of the training data (the fit window)
    base_model: str | None = None  # what the adapter was trained on (path or Hub id)


class AlignTrainer(Trainer):
    """``transformers.Trainer`` for :class:`align.alignment_model.AlignmentModel`.

    Adds to Trainer:
        * ``compute_loss``: the model's contrastive loss; the logit scale (and temperature
          = 1 / scale) and in-batch retrieval accuracy are averaged over each logging
          interval and logged next to ``loss`` (TensorBoard via ``report_to``).
        * Evaluation: ``eval_loss`` and ``eval_accuracy`` on held-out pairs, so
          ``metric_for_best_model``, ``load_best_model_at_end`` and
          ``EarlyStoppingCallback`` work; callbacks may add ``eval_*`` metrics in
          ``on_evaluate`` (the LIS callback does).
        * Non-finite loss guard: a NaN/inf loss on any rank (agreed by one all-reduce of
          a flag per step) raises :class:`TrainingDivergedError` *before* backward, so the
          bad step updates nothing and no checkpoint is written after it; the message
          names the last checkpoint whose weights are finite.
        * Checkpoints in the format of :mod:`align.checkpoint`: PEFT adapter + head +
          temperature (+ ``lis_align.json`` from ``checkpoint_info``); resume (``train(resume_from_checkpoint=...)``) and ``load_best_model_at_end``
          read them back. Under DeepSpeed, the engine files (``global_stepN/``) drive both
          instead, and they hold only what trains: the trainable parameters, their optimizer
          state and the run state, never the frozen base weights (Trainer excludes those only
          for a bare ``PeftModel``; ours is wrapped in the embedder). Resume loads them with
          every trainable parameter required and the frozen ones taken from the base model.

    Extra args:
        checkpoint_info: a :class:`CheckpointInfo` written as ``lis_align.json`` into every
            checkpoint (so each one exports alone); None writes none.
        inject_nan_at_step: testing hook; the loss of that (1-based) step becomes NaN.

    Limits:
        * The guard costs one host sync (and, distributed, one scalar all-reduce) per
          micro-step.
        * Under DeepSpeed a resumed run must load the same base model (frozen weights are not
          in the checkpoint to compare against).
        * Under ZeRO-3, saving the adapter still gathers every layer on rank 0, one at a time
          (only the trainable weights are copied out; Trainer would copy all of them).
    """

    def __init__(self, *args, checkpoint_info: CheckpointInfo | None = None, inject_nan_at_step: int | None = None,
                 **kwargs):
        super().__init__(*args, **kwargs)
        self.checkpoint_info = checkpoint_info
        self.inject_nan_at_step = inject_nan_at_step
        self.deferred_best_metric = False  # set by asynchronous LIS validation
        self.model_accepts_loss_kwargs = False  # our loss is a per-batch mean
        self._stats = {"logit_scale": 0.0, "accuracy": 0.0}
        self._stats_n = 0
        self._eval_accuracy = []

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        # Items collated in chunks (loss.cache_chunk_size): the cached loss backpropagates all chunks but the last.
        outputs = cached_forward(model, inputs) if "chunks" in inputs else model(**inputs)
        loss = outputs["loss"]
        if self.inject_nan_at_step is not None and self.state.global_step + 1 == self.inject_nan_at_step:
            loss = loss * float("nan")
        self._check_finite(loss, outputs)
        self._stats["logit_scale"] += outputs["logit_scale"].detach()
        self._stats["accuracy"] += outputs["accuracy"].detach()
        self._stats_n += 1
        return (loss, outputs) if return_outputs else loss

    def _check_finite(self, loss, outputs) -> None:
        bad = (~torch.isfinite(loss.detach())).float().reshape(1)
        if is_distributed():
            import torch.distributed as dist

            dist.all_reduce(bad, op=dist.ReduceOp.MAX)  # every rank must stop together
        if bad.item() == 0:
            return
        step = self.state.global_step + 1
        good = last_good_checkpoint(self.args.output_dir)
        where = (f"the last good checkpoint is {good}; resume from it with a lower training.learning_rate "
                 f"(training.resume_from_checkpoint={good})" if good is not None else
                 "no checkpoint was saved before it; lower training.learning_rate and start again")
        raise TrainingDivergedError(
            f"training stopped at step {step}: the loss is {loss.detach().float().item()} (logit scale "
            f"{float(outputs['logit_scale']):.3g}); nothing was updated by this step and {where}."
        )

    def log(self, logs: dict, start_time=None) -> None:
        if "loss" in logs and self._stats_n:
            scale = float(self._stats["logit_scale"]) / self._stats_n
            logs["logit_scale"] = scale
            logs["temperature"] = 1.0 / scale
            logs["accuracy"] = float(self._stats["accuracy"]) / self._stats_n
            self._stats = {"logit_scale": 0.0, "accuracy": 0.0}
            self._stats_n = 0
        super().log(logs, start_time)

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad():
            outputs = model(**inputs)
        self._eval_accuracy.append(outputs["accuracy"].detach().float())
        return outputs["loss"].detach(), None, None

    def evaluation_loop(self, *args, **kwargs):
        self._eval_accuracy = []
        output = super().evaluation_loop(*args, **kwargs)
        prefix = kwargs.get("metric_key_prefix", args[4] if len(args) > 4 else "eval")
        if self._eval_accuracy:  # the loss gathers the global batch: accuracy is already global
            output.metrics[f"{prefix}_accuracy"] = float(torch.stack(self._eval_accuracy).mean())
        return output

    def _save(self, output_dir=None, state_dict=None) -> None:
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        if not self.args.should_save:
            return
        os.makedirs(output_dir, exist_ok=True)
        save_align_state(self.accelerator.unwrap_model(self.model), output_dir, state_dict)
        info = self.checkpoint_info
        if info is not None:
            write_embedder_config(output_dir, info.batcher, step=self.state.global_step,
                                  trained_until=info.trained_until, base_model=info.base_model)
        if self.processing_class is not None:
            self.processing_class.save_pretrained(output_dir)
        torch.save(self.args, os.path.join(output_dir, TRAINING_ARGS_NAME))

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None) -> None:
        load_align_state(self.accelerator.unwrap_model(model if model is not None else self.model),
                         resume_from_checkpoint)

    # --- DeepSpeed engine checkpoints: trainable state only ----------------------------------
    def save_model(self, output_dir=None, _internal_call=False) -> None:
        engine = self.model_wrapped  # the DeepSpeed engine once training has prepared it
        if not (self.is_deepspeed_enabled and getattr(engine, "zero_optimization_partition_weights", bool)()):
            return super().save_model(output_dir, _internal_call)
        # ZeRO-3: the adapter needs the trainable weights only; Trainer would copy the whole
        # model to rank 0's memory at every save (a collective; rank 0 gets the dict).
        state_dict = engine._zero3_consolidated_16bit_state_dict(exclude_frozen_parameters=True)
        self._save(output_dir, state_dict=state_dict)

    def _save_optimizer_and_scheduler(self, output_dir: str) -> None:
        if not self.is_deepspeed_enabled:
            return super()._save_optimizer_and_scheduler(output_dir)
        # What Trainer does under DeepSpeed, with the frozen weights left out (a collective).
        self.model_wrapped.save_checkpoint(output_dir, exclude_frozen_parameters=True)
        from accelerate.utils import DeepSpeedSchedulerWrapper

        if self.args.should_save and not isinstance(self.lr_scheduler, DeepSpeedSchedulerWrapper):
            torch.save(self.lr_scheduler.state_dict(), os.path.join(output_dir, SCHEDULER_NAME))

    def _prepare_for_training(self, max_steps, train_dataloader, resume_from_checkpoint):
        if not (self.is_deepspeed_enabled and resume_from_checkpoint is not None):
            return super()._prepare_for_training(max_steps, train_dataloader, resume_from_checkpoint)
        # Trainer would load the engine checkpoint strictly (frozen weights required); the rest
        # of its resume (optimizer/scheduler/scaler files, trainer state, data skip) is unchanged.
        model, train_dataloader = super()._prepare_for_training(max_steps, train_dataloader, None)
        load_trainable_engine_state(self.model_wrapped, resume_from_checkpoint)
        self._load_optimizer_and_scheduler(resume_from_checkpoint)
        self._load_scaler(resume_from_checkpoint)
        return model, train_dataloader

    def _determine_best_metric(self, metrics, trial) -> bool:
        # Asynchronous LIS validation (align/async_validation.py) brings the best-model metric
        # later, for an earlier checkpoint, and tracks the best itself; an evaluation that
        # computed only eval_loss cannot decide it (Trainer would raise a KeyError).
        if self.args.metric_for_best_model not in metrics and self.deferred_best_metric:
            return False
        return super()._determine_best_metric(metrics, trial)

    def _load_best_model(self) -> None:
        if self.is_deepspeed_enabled:
            logger.info("loading the best checkpoint %s (%s = %s)", self.state.best_model_checkpoint,
                        self.args.metric_for_best_model, self.state.best_metric)
            return load_trainable_engine_state(self.model_wrapped, self.state.best_model_checkpoint)
        logger.info("loading the best checkpoint %s (%s = %s)", self.state.best_model_checkpoint,
                    self.args.metric_for_best_model, self.state.best_metric)
        load_align_state(self.accelerator.unwrap_model(self.model), self.state.best_model_checkpoint)


def load_trainable_engine_state(engine, checkpoint) -> None:
    """Load a DeepSpeed checkpoint written without frozen weights into ``engine`` (every rank).

    Every trainable parameter must be in the checkpoint's module state and nothing unknown may
    be (a DataError names the checkpoint and a key otherwise); frozen parameters keep the base
    model's values. Optimizer and scheduler states are loaded too: under ZeRO they carry the
    fp32 master weights that the trainable parameters are restored from.
    """
    def load_trainable(src, dst):
        result = dst.load_state_dict(src, strict=False)
        trainable = {name for name, p in dst.named_parameters() if p.requires_grad}
        missing = [k for k in result.missing_keys if k in trainable]
        if missing or result.unexpected_keys:
            what = (f"lacks the trainable parameter {missing[0]!r}" if missing
                    else f"holds {result.unexpected_keys[0]!r}, which this model does not have")
            raise DataError(f"{checkpoint}: the DeepSpeed checkpoint {what}; was it written for this recipe?")

    loaded, _ = engine.load_checkpoint(str(checkpoint), load_module_strict=False, load_optimizer_states=True,
                                       load_lr_scheduler_states=True, custom_load_fn=load_trainable)
    if loaded is None:
        raise DataError(f"{checkpoint}: no DeepSpeed checkpoint (global_stepN/ and 'latest') to resume from.")


# --- recipe -> trainer ---------------------------------------------------------------------
def make_training_args(recipe, metric_for_best_model: str, has_eval: bool = True) -> TrainingArguments:
    """``TrainingArguments`` from a recipe's ``training`` section.

    Chooses what a recipe leaves open: the CPU (gloo) when there is no GPU, bf16 when the GPU
    supports it and ``training.bf16`` is unset, ``greater_is_better`` from the metric's name (``*loss`` -> lower is better).
    """
    t = recipe.training
    cuda = torch.cuda.is_available()
    bf16 = t.bf16 if t.bf16 is not None else bool(cuda and torch.cuda.is_bf16_supported())
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return TrainingArguments(
        output_dir=t.output_dir,
        max_steps=t.max_steps,
        learning_rate=t.learning_rate,
        weight_decay=t.weight_decay,
        warmup_steps=t.warmup_steps,
        lr_scheduler_type=t.lr_scheduler_type,
        per_device_train_batch_size=t.per_device_train_batch_size,
        per_device_eval_batch_size=t.per_device_eval_batch_size or t.per_device_train_batch_size,
        gradient_accumulation_steps=t.gradient_accumulation_steps,
        max_grad_norm=t.max_grad_norm,
        logging_steps=t.logging_steps,
        eval_strategy="steps" if has_eval else "no",
        eval_steps=t.eval_steps,
        save_strategy="steps",
        save_steps=t.save_steps,
        save_total_limit=t.save_total_limit,
        load_best_model_at_end=has_eval,
        metric_for_best_model=metric_for_best_model if has_eval else None,
        greater_is_better=not metric_for_best_model.endswith("loss"),
        seed=t.seed,
        bf16=bf16,
        report_to=list(t.report_to) or "none",
        dataloader_num_workers=t.dataloader_num_workers,
        # No drop_last: Trainer applies it to evaluation too, where it would drop a small
        # held-out set entirely (and eval_loss with it).
        dataloader_drop_last=False,
        remove_unused_columns=False,  # our batches are dicts the model reads whole
        use_cpu=not cuda,
        ddp_backend="gloo" if not cuda and world > 1 else None,  # single process: no group at all
        ddp_find_unused_parameters=False,  # every trainable parameter is used every step
        disable_tqdm=False,
    )


def build_trainer(recipe, model, train_dataset, eval_dataset, collator, processor=None, callbacks=None,
                  metric_for_best_model: str | None = None, checkpoint_info: CheckpointInfo | None = None) -> AlignTrainer:
    """A ready :class:`AlignTrainer`: THE hook for callers that add Trainer callbacks.

    Args:
        recipe: the resolved :class:`align.config.Recipe`.
        model: an :class:`align.alignment_model.AlignmentModel`.
        train_dataset, eval_dataset, collator: :class:`align.collate.PairDataset` and
            :class:`align.collate.PairCollator` (see :func:`align.train.prepare`).
        processor: saved into every checkpoint (so a checkpoint folder is self-contained).
        callbacks: ``TrainerCallback``\\ s, run in the given order *before* the early-stopping
            callback this function appends (so a callback that adds ``eval_*`` metrics in
            ``on_evaluate`` is seen by early stopping and best-checkpoint selection).
        metric_for_best_model: None picks ``recipe.lis.metric_for_best_model`` when
            ``recipe.lis.enabled`` and callbacks were given (they are expected to provide it),
            else ``eval_loss`` (always available).
        checkpoint_info: see :class:`AlignTrainer`.

    Early stopping: ``EarlyStoppingCallback(recipe.lis.early_stopping_patience,
    recipe.lis.early_stopping_min_delta)`` when the patience is set.
    """
    if metric_for_best_model is None:
        metric_for_best_model = (recipe.lis.metric_for_best_model if recipe.lis.enabled and callbacks
                                 else "eval_loss")
    has_eval = eval_dataset is not None and len(eval_dataset) > 0
    args = make_training_args(recipe, metric_for_best_model, has_eval=has_eval)
    callbacks = list(callbacks or [])
    if has_eval and recipe.lis.early_stopping_patience:
        callbacks.append(EarlyStoppingCallback(recipe.lis.early_stopping_patience,
                                               recipe.lis.early_stopping_min_delta))
    return AlignTrainer(
        model=model, args=args, train_dataset=train_dataset, eval_dataset=eval_dataset if has_eval else None,
        data_collator=collator, processing_class=processor, callbacks=callbacks, checkpoint_info=checkpoint_info,
        inject_nan_at_step=recipe.training.inject_nan_at_step,
    )


def resume_argument(value: str | None, output_dir=None):
    """``training.resume_from_checkpoint`` -> Trainer's argument: ``last`` -> the newest *complete*
    checkpoint in ``output_dir`` (a run killed while saving leaves a partial newest one; see
    :func:`align.checkpoint.last_complete_checkpoint`); a DataError when there is none."""
    if value in (None, "", "none"):
        return None
    if value in ("last", "latest", True):
        if output_dir is None:
            return True
        found = last_complete_checkpoint(output_dir)
        if found is None:
            raise DataError(f"training.resume_from_checkpoint: {value!r} but {output_dir} holds no complete "
                            "checkpoint-N folder to resume from; drop the field to start afresh.")
        return str(found)
    if not Path(value).is_dir():
        raise DataError(f"training.resume_from_checkpoint: {value} is not a checkpoint directory.")
    return str(value)

