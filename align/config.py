"""Training recipes: a YAML file of nested sections, validated, with ``key=value`` overrides.

Every field has a default, so a recipe names only what it changes. Unknown fields, wrong
types and impossible values are :class:`lis.errors.ConfigError` naming the recipe file, the
field and the bad value. Overrides use dotted names: ``lora.r=8 training.max_steps=50``.
"""
from __future__ import annotations

import copy
import dataclasses
import math
import os
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, get_type_hints

import yaml

from align.models.families import DEFAULT_PROMPT
from lis.errors import ConfigError


@dataclass
class ModelConfig:
    path: str = "tiny:qwen2_vl"  # a local dir, a Hub id, or tiny:FAMILY to build a tiny VLM offline
    dtype: str = "auto"  # auto = bf16 on GPUs that support it, float32 on CPU
    attn_implementation: str | None = None


@dataclass
class DataConfig:
    data_dir: str = "runs/demo/data"
    builder: str = "co_engagement"  # builder of the training pairs, on the fit window
    pairs_file: str | None = None  # use a ready pairs file instead of a builder
    eval_fraction: float = 0.3
    top_k: int = 10
    builder_options: dict = field(default_factory=dict)  # extra options of the builder (see lis.builders)
    max_text_tokens: int = 48
    image_size: int = 64
    holdout_fraction: float = 0.05  # fit-window pairs held out for eval_loss (Trainer.evaluate)
    max_holdout_pairs: int = 256
    missing_image: str = "blank"  # blank | error: what an item without an image gets
    # The item's prompt, with {image} (the family's image placeholder) and {text} (the item text);
    # an instruction-tuned checkpoint may want its chat format here. Saved with every checkpoint.
    prompt: str = DEFAULT_PROMPT
    item_cache: bool = True  # preprocess every item once (fast for small images; off for large ones)
    # With the item cache: each item's vision-encoder output (frozen tower) and M-RoPE position ids
    # computed once, not at every step (align/frozen_inputs.py; small models, frozen vision only).
    cache_frozen_inputs: bool = False


@dataclass
class EmbedderConfig:
    dim: int = 128
    pooling: str = "last"  # last | mean
    center: bool = True  # BatchNorm without affine before the head: avoids the early collapse
    gradient_checkpointing: bool = False


@dataclass
class LoraSection:
    r: int = 16
    alpha: int = 32
    dropout: float = 0.0
    target_modules: list | None = None  # None = the family's defaults (language model attention + MLP)
    vision: bool = False
    train_token_embeddings: bool = False


@dataclass
class LossConfig:
    logit_scale_init: float = 20.0
    learn_temperature: bool = True
    gather_with_grad: bool = True
    local_loss: bool = False
    mask_known_pairs: bool = True
    use_pair_weights: bool = False
    # Up to K impression hard negatives per pair: items shown to the same user near the anchor's
    # engagement and not engaged (fit window only; lis.hard_negatives). 0 = off.
    hard_negatives: int = 0
    # GradCache: embed the batch in chunks of this many items (a contrastive batch larger than
    # memory, with the same loss and gradient). 0 = off; needs gradient_accumulation_steps 1.
    cache_chunk_size: int = 0
    # Nested prefixes trained together (e.g. [128, 64, 32, 16]); each prefix re-normalised. None = off.
    matryoshka_dims: list | None = None


@dataclass
class TrainingConfig:
    output_dir: str = "runs/train"
    max_steps: int = 200
    learning_rate: float = 1e-3
    weight_decay: float = 0.0
    warmup_steps: int = 0
    lr_scheduler_type: str = "constant"
    per_device_train_batch_size: int = 32
    gradient_accumulation_steps: int = 1
    logging_steps: int = 10
    save_steps: int = 50
    save_total_limit: int | None = 3
    eval_steps: int = 50
    seed: int = 0
    bf16: bool | None = None  # None = on when the GPU supports it
    report_to: list = field(default_factory=lambda: ["tensorboard"])
    dataloader_num_workers: int = 0
    # torch threads on CPU: 1 by default because OpenMP spin-waiting on a shared 2-core machine
    # made steps 6x slower with 2 (0.3 s vs 1.9 s); raise it on a dedicated many-core CPU. GPUs ignore it.
    cpu_threads: int | None = 1
    resume_from_checkpoint: str | None = None  # a checkpoint dir, or "last" for the newest in output_dir
    max_grad_norm: float = 1.0
    per_device_eval_batch_size: int | None = None  # None = per_device_train_batch_size
    export_batch_size: int = 64
    inject_nan_at_step: int | None = None  # testing hook: the loss of this step becomes NaN


@dataclass
class LisConfig:
    enabled: bool = True
    builder: str | None = None  # the LIS ceiling AIS is compared with; None = data.builder
    metric_for_best_model: str = "eval_ais_auc"
    early_stopping_patience: int | None = 3
    early_stopping_min_delta: float = 0.0
    require_headroom: bool = False
    n_bootstrap: int = 200
    max_eval_items: int | None = None
    # inline: every rank waits while rank 0 scores each evaluation; async: a scorer process beside
    # training scores each saved checkpoint and the results steer the run when they arrive
    # (align/async_validation.py). Patience then counts scored evaluations.
    mode: str = "inline"
    scorer_device: str = "cpu"  # async: where the scorer runs (cpu, cuda:1, ...)
    scorer_timeout: float = 600.0  # async: seconds a checkpoint may wait before the scorer counts as hung
    on_scorer_failure: str = "continue"  # async: continue (without LIS) | stop (training, cleanly)
    # the evaluator's engine: memory (one process) | spark (lis.spark; needs pyspark and Java 17),
    # on spark_master (default local[*]) with spark_conf settings ({"spark.executor.memory": "8g"})
    engine: str = "memory"
    spark_master: str | None = None
    spark_conf: dict = field(default_factory=dict)


@dataclass
class Recipe:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    embedder: EmbedderConfig = field(default_factory=EmbedderConfig)
    lora: LoraSection = field(default_factory=LoraSection)
    loss: LossConfig = field(default_factory=LossConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    lis: LisConfig = field(default_factory=LisConfig)
    source: str = "<defaults>"

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        data.pop("source")
        return data


CHOICES = {
    "embedder.pooling": ("last", "mean"),
    "model.dtype": ("auto", "float32", "bfloat16", "float16"),
    "data.missing_image": ("blank", "error"),
    "lis.mode": ("inline", "async"),
    "lis.on_scorer_failure": ("continue", "stop"),
    "lis.engine": ("memory", "spark"),
}


def load_recipe(path: str | os.PathLike | None = None, overrides: list[str] = ()) -> Recipe:
    """Read a recipe YAML (or the defaults), apply ``key=value`` overrides, validate."""
    raw: dict = {}
    source = "<defaults>"
    if path is not None:
        source = str(path)
        if not Path(path).is_file():
            raise ConfigError(f"{source}: recipe file not found.")
        try:
            raw = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        except UnicodeDecodeError as error:
            raise ConfigError(f"{source}: not UTF-8 text (byte {error.object[error.start]:#04x} at offset "
                              f"{error.start}); a recipe is a UTF-8 YAML file.") from None
        except yaml.YAMLError as error:
            raise ConfigError(f"{source}: not valid YAML ({_yaml_problem(error)}).") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{source}: a recipe is a mapping of sections; got {type(raw).__name__}.")
    raw = copy.deepcopy(raw)
    for override in overrides:
        key, value = _parse_override(source, override)
        _set_dotted(raw, key, value, source)
    recipe = _build(Recipe, raw, source, prefix="")
    recipe.source = source
    _check(recipe)
    return recipe


def _parse_override(source: str, text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise ConfigError(f"{source}: override {text!r} must look like section.field=value (e.g. training.max_steps=50).")
    key, value = text.split("=", 1)
    if not key.strip() or any(not part for part in key.strip().split(".")):
        raise ConfigError(f"{source}: override {text!r} must look like section.field=value (e.g. training.max_steps=50).")
    try:
        return key.strip(), yaml.safe_load(value) if value.strip() else None
    except yaml.YAMLError as error:
        raise ConfigError(f"override {text!r}: the value is not valid YAML ({_yaml_problem(error)}); "
                          "quote it to pass a string.") from None


def _yaml_problem(error) -> str:
    """PyYAML's reason in one line: what went wrong and where (its str() spans several lines)."""
    problem = getattr(error, "problem", None) or getattr(error, "context", None)
    mark = getattr(error, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    return f"{problem or type(error).__name__}{where}"


def _set_dotted(raw: dict, key: str, value, source: str = "<defaults>") -> None:
    parts = key.split(".")
    node = raw
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{source}: override {key!r}: {part!r} is a value, not a section; got {node!r}.")
    node[parts[-1]] = value


def _build(cls, raw, source: str, prefix: str):
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: section '{prefix.rstrip('.') or 'top'}' must be a mapping; got {raw!r}.")
    hints = get_type_hints(cls)
    known = {f.name for f in fields(cls) if f.name != "source"}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigError(
            f"{source}: unknown field '{prefix}{unknown[0]}' (known in this section: {', '.join(sorted(known))})."
        )
    values = {}
    for f in fields(cls):
        if f.name not in raw:
            continue
        hint = hints[f.name]
        if dataclasses.is_dataclass(hint):
            values[f.name] = _build(hint, raw[f.name], source, prefix=f"{prefix}{f.name}.")
        else:
            values[f.name] = _coerce(raw[f.name], hint, source, f"{prefix}{f.name}")
    return cls(**values)


_FLOAT_TEXT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def _coerce(value, hint, source: str, name: str):
    allowed = getattr(hint, "__args__", (hint,))
    if value is None:
        if type(None) in allowed:
            return None
        raise ConfigError(f"{source}: field '{name}' may not be empty.")
    for kind in allowed:
        if kind is type(None):
            continue
        if kind is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if kind is float and isinstance(value, str) and _FLOAT_TEXT.fullmatch(value.strip()):
            return float(value)  # PyYAML (YAML 1.1) reads 2e-3 as text: only 2.0e-3 is a float to it
        if kind is list and isinstance(value, str):
            return [part for part in value.split(",") if part]
        origin = getattr(kind, "__origin__", kind)
        if isinstance(origin, type) and isinstance(value, origin) and not (origin is int and isinstance(value, bool)):
            return value
    expected = " or ".join(getattr(k, "__name__", str(k)) for k in allowed if k is not type(None))
    raise ConfigError(f"{source}: field '{name}' must be {expected}; got {value!r}.")


def _check(recipe: Recipe) -> None:
    src = recipe.source
    for dotted, options in CHOICES.items():
        section, name = dotted.split(".")
        value = getattr(getattr(recipe, section), name)
        if value not in options:
            raise ConfigError(f"{src}: field '{dotted}' must be one of {', '.join(options)}; got {value!r}.")
    _check_ranges(src, recipe)
    positive = {
        "embedder.dim": recipe.embedder.dim, "lora.r": recipe.lora.r, "training.max_steps": recipe.training.max_steps,
        "training.per_device_train_batch_size": recipe.training.per_device_train_batch_size,
        "training.learning_rate": recipe.training.learning_rate, "training.eval_steps": recipe.training.eval_steps,
        "training.save_steps": recipe.training.save_steps, "loss.logit_scale_init": recipe.loss.logit_scale_init,
    }
    for name, value in positive.items():
        if not value > 0:
            raise ConfigError(f"{src}: field '{name}' must be positive; got {value!r}.")
    if not 0.0 <= recipe.data.holdout_fraction < 1.0:
        raise ConfigError(f"{src}: field 'data.holdout_fraction' must be in [0, 1); got {recipe.data.holdout_fraction!r}.")
    if recipe.loss.logit_scale_init > 100:
        raise ConfigError(f"{src}: field 'loss.logit_scale_init' must be at most 100 (the loss clamps the scale "
                          f"there); got {recipe.loss.logit_scale_init!r}.")
    _check_prompt(src, recipe.data.prompt)
    _check_loss(src, recipe)
    if not 0.0 < recipe.data.eval_fraction < 1.0:
        raise ConfigError(f"{src}: field 'data.eval_fraction' must be in (0, 1); got {recipe.data.eval_fraction!r}.")
    if recipe.lis.engine == "spark" and recipe.lis.mode == "async":
        # the async scorer receives the evaluator pickled; a Spark evaluator holds a live session
        raise ConfigError(f"{src}: field 'lis.engine' is 'spark', which needs lis.mode=inline (the asynchronous "
                          "scorer runs an in-memory evaluator); got lis.mode='async'.")
    if recipe.training.save_steps % recipe.training.eval_steps and recipe.lis.enabled:
        raise ConfigError(
            f"{src}: field 'training.save_steps' ({recipe.training.save_steps}) must be a multiple of "
            f"'training.eval_steps' ({recipe.training.eval_steps}) so the best checkpoint can be kept."
        )


def _check_prompt(src: str, prompt: str) -> None:
    """``data.prompt`` must hold ``{image}`` and ``{text}`` and no other ``{field}``."""
    try:
        prompt.format(image="", text="")
    except (KeyError, IndexError, ValueError) as error:
        raise ConfigError(f"{src}: field 'data.prompt' may hold only {{image}} and {{text}} as fields "
                          f"(write {{{{ for a brace); got {prompt!r} ({type(error).__name__}: {error}).") from None
    if "{image}" not in prompt or "{text}" not in prompt:
        raise ConfigError(f"{src}: field 'data.prompt' must contain {{image}} and {{text}}; got {prompt!r}.")


def _check_loss(src: str, recipe: Recipe) -> None:
    """``loss.hard_negatives``, ``loss.cache_chunk_size`` and ``loss.matryoshka_dims``."""
    ls = recipe.loss
    for name in ("hard_negatives", "cache_chunk_size"):
        if getattr(ls, name) < 0:
            raise ConfigError(f"{src}: field 'loss.{name}' must be 0 (off) or positive; got {getattr(ls, name)!r}.")
    if ls.cache_chunk_size and recipe.training.gradient_accumulation_steps != 1:
        raise ConfigError(f"{src}: field 'loss.cache_chunk_size' needs training.gradient_accumulation_steps: 1 (the "
                          f"cached batch replaces accumulation); got {recipe.training.gradient_accumulation_steps!r}.")
    if ls.matryoshka_dims is None:
        return
    # An override `loss.matryoshka_dims=64,32` arrives as strings.
    dims = ls.matryoshka_dims = [int(d) if isinstance(d, str) and d.strip().isdigit() else d
                                 for d in ls.matryoshka_dims]
    bad = [d for d in dims if isinstance(d, bool) or not isinstance(d, int) or not 0 < d <= recipe.embedder.dim]
    if not dims or bad or len(set(dims)) != len(dims):
        raise ConfigError(f"{src}: field 'loss.matryoshka_dims' must be distinct integers in [1, embedder.dim="
                          f"{recipe.embedder.dim}]; got {dims!r}.")


# transformers.SchedulerType's values (5.x), listed so reading a recipe does not import torch;
# tests/align/test_bad_input_training.py checks the list against the installed transformers.
SCHEDULERS = ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup",
              "inverse_sqrt", "reduce_lr_on_plateau", "cosine_with_min_lr", "cosine_warmup_with_min_lr",
              "warmup_stable_decay", "greedy")


def _check_ranges(src: str, recipe: Recipe) -> None:
    """Numbers a run divides by, counts, shares, and names resolved later (builders, schedulers):
    refused here with the field and the value, not as a traceback minutes into training."""
    from lis.builders import BUILDERS

    t, d, lis = recipe.training, recipe.data, recipe.lis
    at_least = {  # field: (value, least allowed); None values mean "default" and are skipped
        "training.gradient_accumulation_steps": (t.gradient_accumulation_steps, 1),
        "training.logging_steps": (t.logging_steps, 1), "training.warmup_steps": (t.warmup_steps, 0),
        "training.save_total_limit": (t.save_total_limit, 1), "training.dataloader_num_workers": (t.dataloader_num_workers, 0),
        "training.cpu_threads": (t.cpu_threads, 1), "training.per_device_eval_batch_size": (t.per_device_eval_batch_size, 1),
        "training.export_batch_size": (t.export_batch_size, 1), "training.seed": (t.seed, 0),
        "training.inject_nan_at_step": (t.inject_nan_at_step, 1),
        "lora.alpha": (recipe.lora.alpha, 1), "data.top_k": (d.top_k, 1), "data.max_text_tokens": (d.max_text_tokens, 1),
        "data.image_size": (d.image_size, 1), "data.max_holdout_pairs": (d.max_holdout_pairs, 0),
        "lis.n_bootstrap": (lis.n_bootstrap, 10), "lis.early_stopping_patience": (lis.early_stopping_patience, 1),
        "lis.max_eval_items": (lis.max_eval_items, 1),
    }
    for name, (value, least) in at_least.items():
        if value is not None and value < least:
            raise ConfigError(f"{src}: field '{name}' must be at least {least}; got {value!r}.")
    for name, value in {"training.learning_rate": t.learning_rate, "training.weight_decay": t.weight_decay,
                        "training.max_grad_norm": t.max_grad_norm, "lis.early_stopping_min_delta": lis.early_stopping_min_delta,
                        "loss.logit_scale_init": recipe.loss.logit_scale_init}.items():
        if not math.isfinite(value) or value < 0:
            raise ConfigError(f"{src}: field '{name}' must be a finite number >= 0; got {value!r}.")
    if d.cache_frozen_inputs and not d.item_cache:
        raise ConfigError(f"{src}: field 'data.cache_frozen_inputs' needs data.item_cache: true (it caches per item "
                          "of the item cache); got item_cache: false.")
    if d.cache_frozen_inputs and recipe.lora.vision:
        raise ConfigError(f"{src}: field 'data.cache_frozen_inputs' needs a frozen vision tower; got lora.vision: true.")
    if not 0.0 <= recipe.lora.dropout < 1.0:
        raise ConfigError(f"{src}: field 'lora.dropout' must be in [0, 1); got {recipe.lora.dropout!r}.")
    if not (math.isfinite(lis.scorer_timeout) and lis.scorer_timeout > 0):
        raise ConfigError(f"{src}: field 'lis.scorer_timeout' must be a positive number of seconds; got {lis.scorer_timeout!r}.")
    for name, value in (("data.builder", d.builder), ("lis.builder", lis.builder)):
        if value is not None and value not in BUILDERS:
            raise ConfigError(f"{src}: field '{name}' must be one of {', '.join(BUILDERS)}; got {value!r}.")
    if t.lr_scheduler_type not in SCHEDULERS:
        raise ConfigError(f"{src}: field 'training.lr_scheduler_type' must be one of {', '.join(SCHEDULERS)}; "
                          f"got {t.lr_scheduler_type!r}.")
    if t.resume_from_checkpoint not in (None, "", "none", "last", "latest") and not Path(t.resume_from_checkpoint).is_dir():
        raise ConfigError(f"{src}: field 'training.resume_from_checkpoint' must be 'last' or a checkpoint folder; "
                          f"got {t.resume_from_checkpoint!r}, which is not a folder.")
