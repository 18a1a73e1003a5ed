"""The on-disk format of a training run and of every checkpoint in it: THE one place that knows it.

A checkpoint folder (every ``checkpoint-N/``, ``best/`` and a published folder) holds::

    adapter_model.safetensors, adapter_config.json    PEFT adapter (PeftModel.from_pretrained)
    projection_head.safetensors, projection_head.json  the embedder's head + centring statistics
    contrastive_loss.safetensors                       the loss's learnable log temperature
    lis_align.json                                     how to rebuild the embedder's inputs (below)
    processor files                                    processor.save_pretrained (PROCESSOR_FILES)
    (+ Trainer's optimizer.pt, scheduler.pt, rng_state.pth, trainer_state.json,
     training_args.bin, and under DeepSpeed its global_stepN/ engine shards: trainable state only)

``lis_align.json`` = ``{"batcher": {BATCHER_FIELDS}, "step", "trained_until", "base_model", ...}``;
every field is optional; a published folder adds ``head``, ``family`` and ``best_step``. The
batcher settings are the :class:`align.collate.ItemBatcher` arguments that change what the model
sees (text length, image size, prompt, missing-image policy): :func:`batcher_settings` is their
single source, written by training with every checkpoint and read back by export and publish.

A run folder (``training.output_dir``) holds ``run.json`` (:func:`write_run` / :func:`read_run`),
``best/`` (a checkpoint plus ``embeddings.safetensors``), ``checkpoint-N/``, the LIS callback's
``evals.jsonl``, ``lis_report.{json,md}``, ``lis_curve.png``, ``base_model/`` (a tiny model built
for the run) and TensorBoard's ``runs/``. docs/design.md describes each field.

Nothing here imports another ``align`` module but :mod:`align.strict_json`: models are passed in
(duck-typed), so every other module may depend on this one.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from lis.errors import DataError

# --- file names -----------------------------------------------------------------------------
ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_FILES = (ADAPTER_WEIGHTS, ADAPTER_CONFIG)
HEAD_WEIGHTS = "projection_head.safetensors"
HEAD_CONFIG = "projection_head.json"
HEAD_FILES = (HEAD_WEIGHTS, HEAD_CONFIG)
LOSS_WEIGHTS = "contrastive_loss.safetensors"
EMBEDDER_CONFIG = "lis_align.json"
EMBEDDINGS = "embeddings.safetensors"
# What processor.save_pretrained writes across families; any of PROCESSOR_MARKERS means it was saved.
PROCESSOR_FILES = ("processor_config.json", "preprocessor_config.json", "video_preprocessor_config.json",
                   "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                   "vocab.json", "merges.txt", "tokenizer.model", "chat_template.json", "chat_template.jinja")
PROCESSOR_MARKERS = ("processor_config.json", "preprocessor_config.json", "tokenizer_config.json", "tokenizer.json")

RUN_FILE = "run.json"
BEST_DIR = "best"
BASE_MODEL_DIR = "base_model"
CHECKPOINT_PREFIX = "checkpoint-"
EVALS = "evals.jsonl"
LIS_REPORT = "lis_report.json"
LIS_REPORT_MD = "lis_report.md"
LIS_CURVE = "lis_curve.png"

BATCHER_FIELDS = ("max_text_tokens", "image_size", "prompt", "missing_image")
RUN_REQUIRED = ("base_model", "best_step", "data")
# AlignmentModel's state-dict layout: the PEFT-wrapped VLM under this prefix, head and centring
# under "embedder.head." / "embedder.center.", the temperature at "loss.log_scale".
PEFT_PREFIX = "embedder.model."
HEAD_PREFIXES = ("embedder.head.", "embedder.center.")


# --- weights ---------------------------------------------------------------------------------
def save_align_state(model, directory, state_dict: dict | None = None) -> None:
    """Write adapter (PEFT format), head and temperature of an ``AlignmentModel`` into ``directory``.

    ``state_dict`` (keys of the model) is what to write; None takes the model's own. Under
    DeepSpeed ZeRO-3 pass the gathered state dict (Trainer does): the module's own parameters
    are then empty shards.
    """
    from safetensors.torch import save_file

    from lis.atomic import atomic_path

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = model.state_dict() if state_dict is None else state_dict
    peft_state = {k[len(PEFT_PREFIX):]: v for k, v in state.items() if k.startswith(PEFT_PREFIX)}
    model.embedder.model.save_pretrained(str(directory), state_dict=peft_state, safe_serialization=True)
    head = {k[len("embedder."):]: v for k, v in state.items() if k.startswith(HEAD_PREFIXES)}
    write_head(directory, head, model.embedder.head_config())
    with atomic_path(directory / LOSS_WEIGHTS) as tmp:
        save_file({"log_scale": _plain(state["loss.log_scale"]).reshape(1)}, str(tmp))


def load_align_state(model, directory) -> None:
    """Load what :func:`save_align_state` wrote into an (unwrapped, unsharded) ``AlignmentModel``."""
    import torch
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


def write_head(directory, state: dict, config: dict) -> None:
    """``projection_head.safetensors`` (``head.*``/``center.*`` tensors) and ``projection_head.json``."""
    from safetensors.torch import save_file

    from lis.atomic import atomic_path, write_json

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    with atomic_path(directory / HEAD_WEIGHTS) as tmp:
        save_file({k: _plain(v) for k, v in state.items()}, str(tmp))
    write_json(directory / HEAD_CONFIG, config)


def read_head(directory) -> tuple[dict, dict]:
    """``(projection_head.json, tensors)`` of a folder; a missing file is a DataError naming it."""
    from safetensors.torch import load_file

    directory = Path(directory)
    config_path, weights_path = directory / HEAD_CONFIG, directory / HEAD_WEIGHTS
    for path in (config_path, weights_path):
        if not path.exists():
            raise DataError(f"{path}: projection head file not found.")
    return json.loads(config_path.read_text()), load_file(str(weights_path))


def _plain(t):
    return t.detach().cpu().contiguous()


def adapter_is_finite(directory) -> bool:
    """True when the checkpoint's adapter and head hold no NaN/inf (used to find the last good one)."""
    import torch
    from safetensors.torch import load_file

    try:
        tensors = {**load_file(str(Path(directory) / ADAPTER_WEIGHTS)), **load_file(str(Path(directory) / HEAD_WEIGHTS))}
    except (OSError, RuntimeError, FileNotFoundError):
        return False
    return all(bool(torch.isfinite(t.float()).all()) for t in tensors.values() if t.is_floating_point())


def last_good_checkpoint(output_dir) -> Path | None:
    """The newest ``checkpoint-N`` under ``output_dir`` whose weights are all finite."""
    found = sorted((p for p in Path(output_dir).glob(CHECKPOINT_PREFIX + "*") if p.name.split("-")[-1].isdigit()),
                   key=lambda p: int(p.name.split("-")[-1]), reverse=True)
    return next((p for p in found if adapter_is_finite(p)), None)


TRAINER_STATE = "trainer_state.json"  # Trainer writes it last into a checkpoint: its presence marks a whole one


def last_complete_checkpoint(output_dir) -> Path | None:
    """The newest ``checkpoint-N`` under ``output_dir`` that a killed run finished writing
    (``trainer_state.json`` present, adapter and head readable and finite); None when there is none.

    Trainer writes a checkpoint in place, so a run killed while saving leaves a partial newest
    folder; resuming with ``training.resume_from_checkpoint: last`` starts from this one instead."""
    found = sorted((p for p in Path(output_dir).glob(CHECKPOINT_PREFIX + "*") if p.name.split("-")[-1].isdigit()),
                   key=lambda p: int(p.name.split("-")[-1]), reverse=True)
    return next((p for p in found if (p / TRAINER_STATE).is_file() and adapter_is_finite(p)), None)


def adapter_hash(adapter_dir) -> str | None:
    """First 16 hex digits of the sha256 of ``adapter_model.safetensors``; None without an adapter."""
    if adapter_dir is None:
        return None
    path = Path(adapter_dir) / ADAPTER_WEIGHTS
    if not path.is_file():
        return None
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


# --- lis_align.json: how to rebuild the embedder's inputs ------------------------------------
def batcher_settings(batcher) -> dict:
    """The :class:`align.collate.ItemBatcher` arguments that change what the model sees (every field)."""
    return {name: getattr(batcher, name) for name in BATCHER_FIELDS}


def batcher_settings_of_run(run: dict) -> dict:
    """The batcher settings recorded in ``run.json``'s recipe (``recipe.data``); absent fields stay absent."""
    data = (run.get("recipe") or {}).get("data") or {}
    return {name: data[name] for name in BATCHER_FIELDS if name in data}


def write_embedder_config(directory, settings: dict, **fields) -> None:
    """Write ``lis_align.json`` into ``directory``: ``{"batcher": settings, **fields}`` (strict JSON).

    ``settings`` comes from :func:`batcher_settings`; ``fields`` adds top-level entries (``step``,
    ``trained_until``, ``base_model`` ...). Training writes it with every checkpoint it saves.
    """
    from align import strict_json

    strict_json.write(Path(directory) / EMBEDDER_CONFIG, {"batcher": dict(settings), **fields})


@dataclass
class AdapterInfo:
    """What a checkpoint folder says about itself (every field may be unknown)."""

    config: dict = field(default_factory=dict)  # lis_align.json, {} if absent
    step: int | None = None
    trained_until: int | None = None
    batcher: dict = field(default_factory=dict)  # ItemBatcher keyword arguments (BATCHER_FIELDS)


def read_adapter_info(adapter_dir) -> AdapterInfo:
    """Read ``lis_align.json`` in ``adapter_dir`` and the training run's ``run.json`` around it.

    Looked up in order: ``lis_align.json`` fields ``batcher``, ``step`` (else ``best_step``),
    ``trained_until``; then ``run.json`` in the folder or its parent (``RUN_DIR/best``,
    ``RUN_DIR/checkpoint-N``): ``recipe.data`` for the batcher, ``best_step`` for ``best/``,
    ``data.trained_until`` (else ``data.windows.eval_start_unix - 1``) for ``trained_until``;
    then ``trainer_state.json``'s ``global_step``. Missing files are not errors; unreadable
    JSON is a DataError.
    """
    folder = Path(adapter_dir)
    info = AdapterInfo()
    config = read_json(folder / EMBEDDER_CONFIG) or {}
    info.config = config
    info.batcher = {k: v for k, v in (config.get("batcher") or {}).items() if k in BATCHER_FIELDS}
    info.step = config.get("step", config.get("best_step"))
    if config.get("trained_until") is not None:
        info.trained_until = int(config["trained_until"])
    for run_path in (folder / RUN_FILE, folder.parent / RUN_FILE):
        run = read_json(run_path)
        if run is None:
            continue
        info.batcher = info.batcher or batcher_settings_of_run(run)
        if info.step is None and (folder.name == BEST_DIR or run_path.parent == folder):
            info.step = run.get("best_step")
        if info.trained_until is None:
            info.trained_until = _trained_until_of_run(run)
        break
    if info.step is None:
        state = read_json(folder / "trainer_state.json")
        if state and state.get("global_step") is not None:
            info.step = int(state["global_step"])
    return info


def _trained_until_of_run(run: dict) -> int | None:
    data = run.get("data") or {}
    if data.get("trained_until") is not None:
        return int(data["trained_until"])
    eval_start = (data.get("windows") or {}).get("eval_start_unix")
    # Training data ends strictly before the evaluation window starts.
    return None if eval_start is None else int(eval_start) - 1


# --- run.json ----------------------------------------------------------------------------------
def write_run(run_dir, run: dict) -> None:
    """Write ``RUN_DIR/run.json`` (strict JSON: a metric that could not be computed is null)."""
    from align import strict_json

    strict_json.write(Path(run_dir) / RUN_FILE, run)


def read_run(run_dir) -> dict:
    """``run.json`` of a training run, with its required fields checked."""
    path = Path(run_dir) / RUN_FILE
    if not path.is_file():
        raise DataError(f"{path}: run.json not found; is {run_dir} a lis-align training run folder?")
    run = read_json(path)
    for key in RUN_REQUIRED:
        if key not in run:
            raise DataError(f"run.json: field '{key}' is missing (in {path}).")
    if str(run["base_model"]).startswith("tiny:"):
        raise DataError(f"run.json: field 'base_model' is {run['base_model']!r}; it must name the folder the "
                        "tiny model was built in (or a Hub id) so the adapter can be reloaded.")
    return run


def read_json(path: Path):
    """The JSON in ``path``; None when the file does not exist; a DataError naming it when unreadable."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise DataError(f"{path}: not valid JSON ({error}).") from None


def replace_dir(tmp: Path, final: Path) -> None:
    """Put a finished folder ``tmp`` in place of ``final``: a reader sees the old or the new one whole
    (swapped in one step, the old one deleted last; :func:`lis.atomic.replace_dir`)."""
    from lis.atomic import replace_dir as swap

    swap(tmp, final)
