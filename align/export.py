"""Embedding export: every catalogue item through the embedder, batched, sharded across ranks.

Three entry points, used by ``lis-align export`` and by the trainer in the middle of training:

* :func:`export_embeddings` embeds a list of items (``align.collate.items_from_catalogue``
  dicts) into an :class:`lis.embeddings.EmbeddingTable`, on one process or on every rank of an
  initialised ``torch.distributed`` group, and returns the whole table on every rank.
* :func:`write_embeddings` writes a table atomically from the main process only.
* :func:`load_export_model` rebuilds ``(ItemEmbedder, ItemBatcher)`` from a base model folder
  (or Hub id) and, optionally, an adapter folder (PEFT adapter + projection head + processor
  files + ``lis_align.json``). :func:`align.publish.load_published` goes through it too.

``lis_align.json`` (beside the adapter and the head) says how to rebuild the embedder's inputs:
``{"batcher": {"max_text_tokens", "image_size", "prompt", "missing_image"}, "step",
"trained_until", "base_model", ...}``; every field is optional. The trainer writes it with
:func:`write_embedder_config`; publishing adds ``head``, ``family`` and ``best_step``.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import queue
import threading
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist

from align.distributed import all_gather_no_grad, is_distributed, is_main_process, world_info
from lis.embeddings import EmbeddingTable, make_manifest, save_embeddings
from lis.errors import DataError, first_line

logger = logging.getLogger(__name__)

CONFIG_NAME = "lis_align.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
# Any one of these in the adapter folder means the processor was saved with the adapter.
PROCESSOR_MARKERS = ("processor_config.json", "preprocessor_config.json", "tokenizer_config.json", "tokenizer.json")
BATCHER_FIELDS = ("max_text_tokens", "image_size", "prompt", "missing_image")


# --- export -------------------------------------------------------------------------------


def export_embeddings(embedder, batcher, items: list[dict], *, batch_size: int = 64, manifest: dict | None = None,
                      progress: bool = True, prefetch: bool | None = None) -> EmbeddingTable:
    """Embed ``items`` and return the table in the order of ``items``, float32, on every rank.

    Args:
        embedder: an :class:`align.embedder.ItemEmbedder`, bare or wrapped by DDP / a DeepSpeed
            engine (the wrapper is looked through: its ``.module`` is called).
        batcher: the :class:`align.collate.ItemBatcher` matching the embedder, or an
            :class:`align.item_cache.ItemCache` built from it (anything with ``ids`` and
            ``collate(rows)``): batches are then collated from the preprocessed tensors and
            the processor does not run (the trainer's repeated exports; every item must be
            in the cache, a DataError names the first that is not).
        items: dicts with ``item_id``, ``text``, ``image`` (see ``items_from_catalogue``);
            ids must be unique (a DataError names the first repeat).
        batch_size: items per forward pass on each rank (default 64).
        manifest: manifest of the table (see :func:`export_manifest`); ``dim`` is filled in and
            ``source`` defaults to ``'export'``. ``None`` gives a manifest with only those two.
        progress: a tqdm bar (on the main process only).
        prefetch: prepare the next batch (image decoding, processor) in a background thread
            while the model runs the current one. ``None`` (default): on when the model runs on
            an accelerator, off on CPU, where the thread only competes with torch's own
            threads for the same cores (measured no faster on 2 cores, bench/bench_export.py).

    Under an initialised process group with more than one rank, rank ``r`` embeds the
    contiguous slice ``r`` of ``items`` padded with repeats of the last item to
    ``ceil(n / world_size)``, so every rank runs the *same number* of forward passes with the
    same batch sizes: DeepSpeed ZeRO-3 gathers parameters inside each forward and would hang if
    one rank ran a pass the others did not. The slices are all-gathered and the padding dropped.
    Every rank must call this function with the same ``items`` and ``batch_size``.

    A batch that fails to prepare (say a corrupt image) raises on every rank, not only on the
    rank that read it (the ranks agree on success after each batch is prepared, one tiny
    all-reduce per batch), so no rank is left waiting in a collective. Errors in the forward
    pass itself (out of memory) are not caught that way.

    The embedder runs in eval mode without gradients; the train/eval mode of every submodule
    is restored afterwards (the trainer calls this in the middle of training). Mid-export
    resume is not supported: an interrupted export starts again.
    """
    if batch_size <= 0:
        raise DataError(f"--batch-size: must be a positive integer; got {batch_size}.")
    if not items:
        raise DataError("export: no items to embed.")
    ids = [str(item["item_id"]) for item in items]
    _check_unique(ids)
    module = _unwrap(embedder)
    world = world_info() if is_distributed() else None
    rank, size = (world.rank, world.world_size) if world else (0, 1)
    shard, per_rank = _shard(items, rank, size)
    modes = {m: m.training for m in module.modules()}
    module.eval()
    try:
        with torch.no_grad():
            local = _embed_shard(module, batcher, shard, batch_size, progress and rank == 0, prefetch,
                                 desc=f"export ({len(items)} items" + (f", {size} ranks)" if size > 1 else ")"))
    finally:
        for m, training in modes.items():
            m.training = training
    if size > 1:
        device = _comm_device(local.device)
        gathered = all_gather_no_grad(local.to(device), sizes=[per_rank] * size).cpu()
    else:
        gathered = local.cpu()
    vectors = gathered[: len(items)].float().numpy()
    fields = dict(manifest or {})
    fields.setdefault("source", "export")
    fields["dim"] = int(vectors.shape[1])
    return EmbeddingTable(ids, vectors, make_manifest(**fields))


def _embed_shard(module, batcher, shard: list[dict], batch_size: int, progress: bool, prefetch: bool,
                 desc: str) -> torch.Tensor:
    from tqdm.auto import tqdm

    device = next(module.head.parameters()).device
    dtype = _backbone_dtype(module)
    chunks = [shard[start:start + batch_size] for start in range(0, len(shard), batch_size)]
    prepare = _preparer(batcher)
    if prefetch is None:
        prefetch = device.type != "cpu"
    batches = _Prefetcher(prepare, chunks) if prefetch else (_try(prepare, chunk) for chunk in chunks)
    out = []
    with tqdm(total=len(chunks), desc=desc, unit="batch", disable=not progress) as bar:
        for batch, error in batches:
            _agree(error, device)
            # Floating inputs (pixel values) follow the backbone's dtype: a bf16 vision tower
            # does not cast float32 pixels itself in every family.
            inputs = {k: (v.to(device, dtype) if v.is_floating_point() else v.to(device)) for k, v in batch.items()}
            out.append(module(**inputs).float())
            bar.update(1)
    return torch.cat(out)


def _preparer(batcher):
    """``chunk of items -> batch``: the batcher itself, or row lookups in an item cache."""
    if not (hasattr(batcher, "collate") and hasattr(batcher, "ids")):
        return batcher
    rows = {item: row for row, item in enumerate(batcher.ids)}

    def collate(chunk):
        missing = next((item["item_id"] for item in chunk if str(item["item_id"]) not in rows), None)
        if missing is not None:
            raise DataError(f"export: item {missing!r} is not in the item cache ({len(rows)} items).")
        return batcher.collate([rows[str(item["item_id"])] for item in chunk])

    return collate


def _try(batcher, chunk):
    try:
        return batcher(chunk), None
    except Exception as error:  # re-raised by _agree on this rank, reported to the others
        return None, error


class _Prefetcher:
    """Iterate ``(batch, error)`` over ``chunks``, preparing one batch ahead in a daemon thread.

    Image decoding and the processor are mostly Python and numpy, the forward pass mostly
    torch kernels that release the GIL: the two overlap. Only one thread calls the batcher at
    a time, so its counters (``truncated``, ``seen``) stay exact.
    """

    def __init__(self, batcher, chunks):
        self.batcher, self.chunks = batcher, chunks
        self.ready: queue.Queue = queue.Queue(maxsize=1)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._work, daemon=True, name="export-prefetch")

    def _work(self):
        for chunk in self.chunks:
            if self.stop.is_set():
                return
            self.ready.put(_try(self.batcher, chunk))

    def __iter__(self):
        self.thread.start()
        try:
            for _ in self.chunks:
                yield self.ready.get()
        finally:
            self.stop.set()
            while self.thread.is_alive():  # unblock a put() so the thread can see `stop`
                try:
                    self.ready.get(timeout=0.05)
                except queue.Empty:
                    pass


def _agree(error: Exception | None, device: torch.device) -> None:
    """Raise on every rank if the batch failed to prepare on any rank; no-op when all succeeded."""
    if not is_distributed():
        if error is not None:
            raise error
        return
    flag = torch.tensor([0 if error is None else 1], dtype=torch.int64, device=_comm_device(device))
    dist.all_reduce(flag)
    if int(flag.item()) == 0:
        return
    messages = [None] * dist.get_world_size()
    dist.all_gather_object(messages, None if error is None else str(error))
    if error is not None:
        raise error
    rank, message = next((r, m) for r, m in enumerate(messages) if m is not None)
    raise DataError(f"export: rank {rank} could not prepare a batch: {message}")


def _shard(items: list[dict], rank: int, size: int) -> tuple[list[dict], int]:
    """Rank ``rank``'s contiguous slice, padded with the last item to ``ceil(n / size)`` items."""
    per_rank = -(-len(items) // size)
    padded = items + [items[-1]] * (per_rank * size - len(items))
    return padded[rank * per_rank:(rank + 1) * per_rank], per_rank


def _comm_device(device: torch.device) -> torch.device:
    """NCCL sends CUDA tensors only; gloo sends CPU tensors (it also takes CUDA ones, slowly)."""
    if is_distributed() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _unwrap(embedder):
    # DDP and DeepSpeed engines keep the real module in `.module`; calling the module itself
    # skips DDP's buffer broadcast (it would differ per rank only if buffers did) and still
    # runs ZeRO-3's parameter gathering, whose hooks sit on the module's submodules.
    while type(embedder).__name__ in ("DistributedDataParallel", "DeepSpeedEngine") and hasattr(embedder, "module"):
        embedder = embedder.module
    return embedder


def _backbone_dtype(module) -> torch.dtype:
    for param in module.backbone().parameters():
        if param.is_floating_point():
            return param.dtype
    return torch.float32


def _check_unique(ids: list[str]) -> None:
    seen: dict[str, int] = {}
    for position, item in enumerate(ids):
        if item in seen:
            raise DataError(f"export: item_id {item!r} appears twice (positions {seen[item]} and {position}).")
        seen[item] = position


def write_embeddings(path, table: EmbeddingTable) -> bool:
    """Write ``table`` to ``path`` atomically on the main process; other ranks do nothing.

    Returns True where this process wrote. No collective is involved, so it is safe to call
    from the main process alone; a caller that needs the file on every rank afterwards
    (``lis-align export``) adds its own barrier.
    """
    if not is_main_process():
        return False
    save_embeddings(path, table)
    return True


# --- manifest -----------------------------------------------------------------------------


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


def export_manifest(model: str, *, adapter_dir=None, step: int | None = None, catalogue=None,
                    trained_until: int | None = None, adapter_hash_value: str | None = None) -> dict:
    """The manifest of DESIGN section 3 for an exported table (``dim`` is filled in by the export).

    Args:
        model: the base model (path or Hub id) as the user named it.
        adapter_dir: folder of the adapter; its ``adapter_model.safetensors`` is hashed.
        adapter_hash_value: a hash the caller already has (wins over ``adapter_dir``).
        step: training step of the adapter, None if unknown.
        catalogue: the catalogue frame; its :func:`lis.embeddings.catalogue_hash` is recorded.
        trained_until: latest log timestamp (unix seconds) of any data the adapter was trained
            on; None means "no log data", which is only true for an untrained model.
    """
    from lis.embeddings import MANIFEST_KEYS, catalogue_hash

    manifest = {key: None for key in MANIFEST_KEYS}
    manifest.update(model=str(model), source="export", step=None if step is None else int(step),
                    adapter_hash=adapter_hash_value or adapter_hash(adapter_dir),
                    catalogue_hash=None if catalogue is None else catalogue_hash(catalogue),
                    trained_until=None if trained_until is None else int(trained_until))
    manifest.pop("dim")
    return manifest


# --- the embedder from disk ---------------------------------------------------------------


@dataclass
class AdapterInfo:
    """What an adapter folder says about itself (every field may be unknown)."""

    config: dict = field(default_factory=dict)  # lis_align.json, {} if absent
    step: int | None = None
    trained_until: int | None = None
    trained_until_from: str | None = None  # the file it was read from, None when unknown
    batcher: dict = field(default_factory=dict)  # ItemBatcher keyword arguments


def read_adapter_info(adapter_dir) -> AdapterInfo:
    """Read ``lis_align.json`` in ``adapter_dir`` and the training run's ``run.json`` around it.

    Looked up in order: ``lis_align.json`` fields ``batcher``, ``step`` (else ``best_step``),
    ``trained_until``; then ``run.json`` in the folder or its parent (``RUN_DIR/best``,
    ``RUN_DIR/checkpoint-N``): ``recipe.data`` for the batcher, ``best_step`` for ``best/``,
    ``data.trained_until`` (else ``data.windows.eval_start_unix - 1``) for ``trained_until``;
    then ``trainer_state.json``'s ``global_step``. Missing files are not errors; unreadable JSON is a DataError.
    """
    folder = Path(adapter_dir)
    info = AdapterInfo()
    config = _read_json(folder / CONFIG_NAME) or {}
    info.config = config
    info.batcher = {k: v for k, v in (config.get("batcher") or {}).items() if k in BATCHER_FIELDS}
    info.step = config.get("step", config.get("best_step"))
    if config.get("trained_until") is not None:
        info.trained_until, info.trained_until_from = int(config["trained_until"]), str(folder / CONFIG_NAME)
    for run_path in (folder / "run.json", folder.parent / "run.json"):
        run = _read_json(run_path)
        if run is None:
            continue
        if not info.batcher:
            from align.publish import batcher_options

            info.batcher = batcher_options(run)
        if info.step is None and (folder.name == "best" or run_path.parent == folder):
            info.step = run.get("best_step")
        data = run.get("data") or {}
        windows = data.get("windows") or {}
        if info.trained_until is None and data.get("trained_until") is not None:
            info.trained_until, info.trained_until_from = int(data["trained_until"]), str(run_path)
        elif info.trained_until is None and windows.get("eval_start_unix") is not None:
            # Training data ends strictly before the evaluation window starts.
            info.trained_until, info.trained_until_from = int(windows["eval_start_unix"]) - 1, str(run_path)
        break
    if info.step is None:
        state = _read_json(folder / "trainer_state.json")
        if state and state.get("global_step") is not None:
            info.step = int(state["global_step"])
    return info


def write_embedder_config(directory, batcher, **fields) -> None:
    """Write ``lis_align.json`` beside a saved adapter/head so export rebuilds the same batcher.

    ``fields`` adds top-level entries (``step``, ``trained_until``, ``base_model`` ...). The
    trainer calls this with every checkpoint it saves.
    """
    from lis.atomic import write_json

    config = {"batcher": batcher_settings(batcher)}
    config.update(fields)
    write_json(Path(directory) / CONFIG_NAME, config)


def batcher_settings(batcher) -> dict:
    """The :class:`align.collate.ItemBatcher` keyword arguments that change what the model sees."""
    return {name: getattr(batcher, name) for name in BATCHER_FIELDS}


def load_export_model(model_dir, adapter_dir=None, dtype=None, *, dim: int = 128, pooling: str = "last",
                      center: bool = True, batcher_options: dict | None = None, device=None, seed: int = 0):
    """Rebuild ``(ItemEmbedder, ItemBatcher)`` for export, in eval mode.

    Args:
        model_dir: base model folder or Hub id (loaded with :func:`align.models.loading.load_vlm`).
        adapter_dir: folder holding a PEFT adapter (``adapter_config.json``, loaded with
            ``PeftModel.from_pretrained``), the projection head (``projection_head.*``, required
            when the folder is given), optionally the processor files (else the processor comes
            from ``model_dir``) and ``lis_align.json`` (batcher settings; see :func:`read_adapter_info`).
            A folder with a head but no ``adapter_config.json`` exports the base model with that head.
        dtype: as :func:`load_vlm` (None = the checkpoint's, ``'auto'`` = bf16 on a capable GPU).
        dim, pooling, center: the head of an embedder *without* ``adapter_dir`` (the untrained
            baseline: a random head seeded by ``seed``). With an adapter they come from
            ``projection_head.json``.
        batcher_options: ItemBatcher keyword arguments overriding the saved ones.
        device: where the model runs; None = this process's CUDA device if any, else CPU.

    Raises DataError for a folder that does not exist, lacks its head, or a model that cannot
    be loaded (the message names it). Remote code is never trusted (see ``load_vlm``).
    """
    from align.collate import ItemBatcher
    from align.embedder import HEAD_CONFIG, ItemEmbedder
    from align.models.loading import load_processor, load_vlm

    model_name = str(model_dir)
    if _looks_local(model_name) and not Path(model_name).is_dir():
        raise DataError(f"{model_name}: model folder not found.")
    try:
        model, processor, family = load_vlm(model_name, dtype=dtype)
    except (OSError, ValueError) as error:  # transformers' "not a folder nor a Hub id", bad config
        raise DataError(f"{model_name}: cannot load the model ({first_line(error)}).") from None
    options: dict = {}
    head = {"dim": dim, "pooling": pooling, "center": center, "normalize": True}
    if adapter_dir is not None:
        adapter = Path(adapter_dir)
        if not adapter.is_dir():
            raise DataError(f"{adapter}: adapter folder not found.")
        if (adapter / ADAPTER_CONFIG).is_file():
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, str(adapter))
        head_path = adapter / HEAD_CONFIG
        if not head_path.is_file():
            raise DataError(f"{HEAD_CONFIG}: not found in {adapter}; save the head with ItemEmbedder.save_head.")
        head.update({k: v for k, v in _read_json(head_path).items() if k in head})
        if any((adapter / name).is_file() for name in PROCESSOR_MARKERS):
            processor = load_processor(str(adapter), family)
        options.update(read_adapter_info(adapter).batcher)
    options.update(batcher_options or {})
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # the baseline head is the same on every rank and every run
        embedder = ItemEmbedder(model, family, **head)
    if adapter_dir is not None:
        embedder.load_head(adapter_dir)
    embedder.to(_default_device() if device is None else device).eval()
    return embedder, ItemBatcher(processor, family, **options)


def _default_device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


def _looks_local(name: str) -> bool:
    # A Hub id is "name" or "org/name"; anything else (./x, /abs, a/b/c, ~) is a path.
    return (name.startswith((".", "/", "~")) or name.count("/") > 1 or os.sep != "/" and os.sep in name
            or Path(name).exists())


def _read_json(path: Path):
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise DataError(f"{path}: not valid JSON ({error}).") from None


__all__ = ["export_embeddings", "write_embeddings", "load_export_model", "export_manifest", "adapter_hash",
           "read_adapter_info", "write_embedder_config", "batcher_settings", "AdapterInfo", "CONFIG_NAME"]
