"""Contrastive alignment on ``transformers.Trainer`` mechanics.

The pieces, smallest first:

- :class:`PairDataset` — training pairs as catalogue rows (anchor, positive, weight).
- :class:`PairCollator` — a batch of B pairs -> ONE item batch of 2B items (anchors then
  positives) plus ``anchor_ids``/``positive_ids``/``weights``; items come from an
  :class:`align.item_cache.ItemCache` (fast) or straight from an ``ItemBatcher``.
- :class:`AlignmentModel` — the :class:`align.embedder.ItemEmbedder` and the
  :class:`align.loss.InfoNCELoss` in one ``nn.Module`` whose ``forward`` returns the loss.
  One module because DDP/DeepSpeed must wrap the loss's temperature too (otherwise ranks'
  temperatures drift apart), and one forward call for anchors and positives because DDP
  allows one forward per backward.
- :class:`AlignTrainer` — ``transformers.Trainer`` with our loss, logging, checkpoint format
  and a non-finite-loss guard.
- :func:`make_training_args` / :func:`build_trainer` — a recipe -> a ready trainer; the hook
  where callers (the LIS callback) plug in their ``TrainerCallback``\\ s.

Checkpoint format (every ``checkpoint-N/`` and ``best/``)::

    adapter_model.safetensors, adapter_config.json   PEFT adapter (PeftModel.from_pretrained)
    projection_head.safetensors, projection_head.json the embedder's head + centring stats
    contrastive_loss.safetensors                      the loss's learnable log temperature
    (+ Trainer's optimizer.pt, scheduler.pt, rng_state.pth, trainer_state.json, and under
     DeepSpeed its global_stepN/ engine shards)
"""
from __future__ import annotations

import functools
import logging
import os
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import Dataset

from lis.errors import DataError

logger = logging.getLogger(__name__)

LOSS_WEIGHTS = "contrastive_loss.safetensors"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
_PEFT_PREFIX = "embedder.model."


class TrainingDivergedError(DataError):
    """The loss became NaN or infinite; training stopped before the bad step updated anything."""


# ----------------------------------------------------------------------------- data
class PairDataset(Dataset):
    """Preference pairs as catalogue row indices: ``__getitem__`` -> ``{"anchor", "positive", "weight"}``.

    Rows (not ids) because the loss masks duplicates and known pairs by integer id, and the
    item cache is indexed by row.
    """

    def __init__(self, anchors, positives, weights=None):
        self.anchors = torch.as_tensor(anchors, dtype=torch.int64)
        self.positives = torch.as_tensor(positives, dtype=torch.int64)
        self.weights = (torch.ones(len(self.anchors)) if weights is None
                        else torch.as_tensor(weights, dtype=torch.float32))
        if not (len(self.anchors) == len(self.positives) == len(self.weights)):
            raise ValueError("PairDataset: anchors, positives and weights must have the same length")

    def __len__(self) -> int:
        return len(self.anchors)

    def __getitem__(self, i) -> dict:
        return {"anchor": int(self.anchors[i]), "positive": int(self.positives[i]), "weight": float(self.weights[i])}


class BatcherSource:
    """Items processed per batch by an ``ItemBatcher`` (no cache): the path for large images,
    where DataLoader workers (``training.dataloader_num_workers``) run the processor."""

    def __init__(self, batcher, items: list[dict]):
        self.batcher, self.items = batcher, items

    def collate(self, rows) -> dict:
        return dict(self.batcher([self.items[int(r)] for r in rows]))


class PairCollator:
    """Features from :class:`PairDataset` -> one model batch.

    Args:
        source: anything with ``collate(rows) -> dict of tensors`` (:class:`ItemCache`,
            :class:`BatcherSource`).
        use_weights: pass the pair weights to the loss (else every pair weighs 1).

    The item batch holds the B anchors first, then the B positives: the model splits the
    embeddings at B.
    """

    def __init__(self, source, use_weights: bool = False):
        self.source, self.use_weights = source, use_weights

    def __call__(self, features: list[dict]) -> dict:
        anchors = [f["anchor"] for f in features]
        positives = [f["positive"] for f in features]
        batch = self.source.collate(anchors + positives)
        batch["anchor_ids"] = torch.tensor(anchors, dtype=torch.int64)
        batch["positive_ids"] = torch.tensor(positives, dtype=torch.int64)
        if self.use_weights:
            batch["weights"] = torch.tensor([f["weight"] for f in features], dtype=torch.float32)
        return batch


# ----------------------------------------------------------------------------- model
class AlignmentModel(nn.Module):
    """Embedder + contrastive loss as one module: ``forward(anchor_ids, positive_ids, weights, **items)``.

    Args:
        embedder: an :class:`align.embedder.ItemEmbedder` (its VLM usually LoRA-wrapped).
        loss: an :class:`align.loss.InfoNCELoss`.
        known_pairs: ``encode_pairs`` keys of every training pair (masked when two related
            items meet as negatives in a batch), or None. Kept as a plain attribute, not a
            buffer: it is data, not state, and DeepSpeed/DDP should not broadcast it.

    ``items`` is one processor batch of 2B items, anchors first. Returns the loss's dict
    (``loss``, ``logit_scale``, ``accuracy``).
    """

    def __init__(self, embedder: nn.Module, loss: nn.Module, known_pairs: torch.Tensor | None = None):
        super().__init__()
        self.embedder = embedder
        self.loss = loss
        self.known_pairs = known_pairs

    def forward(self, anchor_ids, positive_ids, weights=None, **items):
        n = anchor_ids.shape[0]
        embeddings = self.embedder(**items)
        return self.loss(embeddings[:n], embeddings[n:], anchor_ids, positive_ids, weights,
                         known_pairs=self.known_pairs)


# ----------------------------------------------------------------------------- checkpoints
def save_align_state(model: AlignmentModel, directory, state_dict: dict | None = None) -> None:
    """Write adapter (PEFT format), head and temperature of ``model`` into ``directory``.

    ``state_dict`` (keys of :class:`AlignmentModel`) is what to write; None takes the
    model's own. Under DeepSpeed ZeRO-3 pass the gathered state dict (Trainer does): the
    module's own parameters are then empty shards.
    """
    from safetensors.torch import save_file

    from align.embedder import HEAD_CONFIG, HEAD_WEIGHTS
    from lis.atomic import atomic_path, write_json

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = model.state_dict() if state_dict is None else state_dict
    peft_state = {k[len(_PEFT_PREFIX):]: v for k, v in state.items() if k.startswith(_PEFT_PREFIX)}
    model.embedder.model.save_pretrained(str(directory), state_dict=peft_state, safe_serialization=True)
    head = {k[len("embedder."):]: _plain(v) for k, v in state.items()
            if k.startswith("embedder.head.") or k.startswith("embedder.center.")}
    with atomic_path(directory / HEAD_WEIGHTS) as tmp:
        save_file(head, str(tmp))
    write_json(directory / HEAD_CONFIG, model.embedder.head_config())
    with atomic_path(directory / LOSS_WEIGHTS) as tmp:
        save_file({"log_scale": _plain(state["loss.log_scale"]).reshape(1)}, str(tmp))


def load_align_state(model: AlignmentModel, directory) -> None:
    """Load what :func:`save_align_state` wrote into an (unwrapped, unsharded) model."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    directory = Path(directory)
    for name in (ADAPTER_WEIGHTS, LOSS_WEIGHTS):
        if not (directory / name).is_file():
            raise DataError(f"{directory / name}: checkpoint file not found; is {directory} a lis-align checkpoint?")
    device = next(model.embedder.head.parameters()).device
    adapter = {k: v.to(device) for k, v in load_file(str(directory / ADAPTER_WEIGHTS)).items()}
    result = set_peft_model_state_dict(model.embedder.model, adapter)
    unexpected = getattr(result, "unexpected_keys", [])
    if unexpected:
        raise DataError(f"{directory / ADAPTER_WEIGHTS}: holds weights this model lacks, e.g. {unexpected[0]!r}.")
    model.embedder.load_head(directory)
    with torch.no_grad():
        log_scale = model.loss.log_scale
        log_scale.copy_(load_file(str(directory / LOSS_WEIGHTS))["log_scale"].reshape(log_scale.shape))


def _plain(t: torch.Tensor) -> torch.Tensor:
    return t.detach().cpu().contiguous()


def adapter_is_finite(directory) -> bool:
    """True when the checkpoint's adapter and head hold no NaN/inf (used to find the last good one)."""
    from safetensors.torch import load_file

    from align.embedder import HEAD_WEIGHTS

    try:
        tensors = {**load_file(str(Path(directory) / ADAPTER_WEIGHTS)), **load_file(str(Path(directory) / HEAD_WEIGHTS))}
    except (OSError, RuntimeError, FileNotFoundError):
        return False
    return all(bool(torch.isfinite(t.float()).all()) for t in tensors.values() if t.is_floating_point())


def last_good_checkpoint(output_dir) -> Path | None:
    """The newest ``checkpoint-N`` under ``output_dir`` whose weights are all finite."""
    found = sorted((p for p in Path(output_dir).glob("checkpoint-*") if p.name.split("-")[-1].isdigit()),
                   key=lambda p: int(p.name.split("-")[-1]), reverse=True)
    return next((p for p in found if adapter_is_finite(p)), None)


# ----------------------------------------------------------------------------- trainer
@functools.lru_cache(maxsize=None)  # one class, so isinstance checks hold
def _trainer_class():
    from transformers import Trainer
    from transformers.trainer import TRAINING_ARGS_NAME

    class AlignTrainer(Trainer):
        """``transformers.Trainer`` for :class:`AlignmentModel`.

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
            * Checkpoints in our format (module docstring): PEFT adapter + head + temperature;
              resume (``train(resume_from_checkpoint=...)``) and ``load_best_model_at_end``
              read them back. Under DeepSpeed, Trainer's engine files drive both instead.

        Extra args:
            inject_nan_at_step: testing hook; the loss of that (1-based) step becomes NaN.

        Limits:
            * The guard costs one host sync (and, distributed, one scalar all-reduce) per
              micro-step.
            * Under DeepSpeed the engine checkpoint also holds the frozen base weights (the
              model is not a ``PeftModel`` to Trainer, so it does not exclude them): budget
              disk for ``save_total_limit`` copies of the backbone.
        """

        def __init__(self, *args, inject_nan_at_step: int | None = None, **kwargs):
            super().__init__(*args, **kwargs)
            self.inject_nan_at_step = inject_nan_at_step
            self.model_accepts_loss_kwargs = False  # our loss is a per-batch mean
            self._stats = {"logit_scale": 0.0, "accuracy": 0.0}
            self._stats_n = 0
            self._eval_accuracy = []

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            outputs = model(**inputs)
            loss = outputs["loss"]
            if self.inject_nan_at_step is not None and self.state.global_step + 1 == self.inject_nan_at_step:
                loss = loss * float("nan")
            self._check_finite(loss, outputs)
            self._stats["logit_scale"] += outputs["logit_scale"].detach()
            self._stats["accuracy"] += outputs["accuracy"].detach()
            self._stats_n += 1
            return (loss, outputs) if return_outputs else loss

        def _check_finite(self, loss, outputs) -> None:
            from align.distributed import is_distributed

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
            config = getattr(self, "checkpoint_config", None)  # set by align.train.run_training
            if config:
                from align.export import write_embedder_config

                write_embedder_config(output_dir, config["batcher"], step=self.state.global_step,
                                      trained_until=config["trained_until"], base_model=config["base_model"])
            if self.processing_class is not None:
                self.processing_class.save_pretrained(output_dir)
            torch.save(self.args, os.path.join(output_dir, TRAINING_ARGS_NAME))

        def _load_from_checkpoint(self, resume_from_checkpoint, model=None) -> None:
            load_align_state(self.accelerator.unwrap_model(model if model is not None else self.model),
                             resume_from_checkpoint)

        def _load_best_model(self) -> None:
            if self.is_deepspeed_enabled:
                return super()._load_best_model()
            logger.info("loading the best checkpoint %s (%s = %s)", self.state.best_model_checkpoint,
                        self.args.metric_for_best_model, self.state.best_metric)
            load_align_state(self.accelerator.unwrap_model(self.model), self.state.best_model_checkpoint)

    return AlignTrainer


def __getattr__(name):
    # AlignTrainer subclasses transformers.Trainer: import transformers only when asked.
    if name == "AlignTrainer":
        return _trainer_class()
    raise AttributeError(name)


# ----------------------------------------------------------------------------- recipe -> trainer
def make_training_args(recipe, metric_for_best_model: str, has_eval: bool = True, n_train: int | None = None):
    """``TrainingArguments`` from a recipe's ``training`` section.

    Chooses what a recipe leaves open: the CPU (gloo) when there is no GPU, bf16 when the GPU
    supports it and ``training.bf16`` is unset, ``greater_is_better`` from the metric's name (``*loss`` -> lower is better).
    """
    from transformers import TrainingArguments

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


def build_trainer(recipe, model: AlignmentModel, train_dataset, eval_dataset, collator, processor=None,
                  callbacks=None, metric_for_best_model: str | None = None):
    """A ready :class:`AlignTrainer`: THE hook for callers that add Trainer callbacks.

    Args:
        recipe: the resolved :class:`align.config.Recipe`.
        model, train_dataset, eval_dataset, collator: from :func:`align.train.prepare`.
        processor: saved into every checkpoint (so a checkpoint folder is self-contained).
        callbacks: ``TrainerCallback``\\ s, run in the given order *before* the early-stopping
            callback this function appends (so a callback that adds ``eval_*`` metrics in
            ``on_evaluate`` is seen by early stopping and best-checkpoint selection).
        metric_for_best_model: None picks ``recipe.lis.metric_for_best_model`` when
            ``recipe.lis.enabled`` and callbacks were given (they are expected to provide it),
            else ``eval_loss`` (always available).

    Early stopping: ``EarlyStoppingCallback(recipe.lis.early_stopping_patience,
    recipe.lis.early_stopping_min_delta)`` when the patience is set.
    """
    from transformers import EarlyStoppingCallback

    if metric_for_best_model is None:
        metric_for_best_model = (recipe.lis.metric_for_best_model if recipe.lis.enabled and callbacks
                                 else "eval_loss")
    has_eval = eval_dataset is not None and len(eval_dataset) > 0
    args = make_training_args(recipe, metric_for_best_model, has_eval=has_eval, n_train=len(train_dataset))
    callbacks = list(callbacks or [])
    if has_eval and recipe.lis.early_stopping_patience:
        callbacks.append(EarlyStoppingCallback(recipe.lis.early_stopping_patience,
                                               recipe.lis.early_stopping_min_delta))
    return _trainer_class()(
        model=model, args=args, train_dataset=train_dataset, eval_dataset=eval_dataset if has_eval else None,
        data_collator=collator, processing_class=processor, callbacks=callbacks,
        inject_nan_at_step=recipe.training.inject_nan_at_step,
    )


def resume_argument(value: str | None):
    """``training.resume_from_checkpoint`` -> Trainer's argument: ``last`` -> True (newest in output_dir)."""
    if value in (None, "", "none"):
        return None
    if value in ("last", "latest", True):
        return True
    if not Path(value).is_dir():
        raise DataError(f"training.resume_from_checkpoint: {value} is not a checkpoint directory.")
    return str(value)

