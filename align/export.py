"""Embedding export: every catalogue item through the embedder, sharded across ranks, into a table.

Used by ``lis-align export``, by training (the LIS callback at every evaluation, the best
checkpoint at the end) and by publish verification (through :func:`load_export_model`):

* :func:`export_embeddings` embeds a list of items (``align.collate.items_from_catalogue``
  dicts) into an :class:`lis.embeddings.EmbeddingTable`, on one process or on every rank of an
  initialised ``torch.distributed`` group, and returns the whole table on every rank. The loop
  itself is :func:`align.embedding_loop.embed_in_batches`, the one every embedding goes through.
* :func:`write_embeddings` writes a table atomically from the main process only.
* :func:`export_manifest` the manifest of an exported table (the embeddings data contract).
* :func:`load_export_model` rebuilds ``(ItemEmbedder, ItemBatcher)`` from a base model folder
  (or Hub id) and, optionally, a checkpoint folder in the format of :mod:`align.checkpoint`.
  :func:`align.publish.load_published` goes through it too.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import torch

from align.checkpoint import (ADAPTER_CONFIG, HEAD_CONFIG, PROCESSOR_MARKERS, adapter_hash, read_adapter_info,
                              read_json)
from align.collate import ItemBatcher
from align.distributed import all_gather_no_grad, is_distributed, is_main_process, world_info
from align.embedder import ItemEmbedder
from align.embedding_loop import comm_device, embed_in_batches
from lis.embeddings import EmbeddingTable, make_manifest, save_embeddings
from lis.errors import DataError, first_line

logger = logging.getLogger(__name__)


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
        prefetch: prepare the next batch in a background thread (see
            :func:`align.embedding_loop.embed_in_batches`; default: on GPUs, off on CPU).

    Under an initialised process group with more than one rank, rank ``r`` embeds the
    contiguous slice ``r`` of ``items`` padded with repeats of the last item to
    ``ceil(n / world_size)``, so every rank runs the *same number* of forward passes with the
    same batch sizes: DeepSpeed ZeRO-3 gathers parameters inside each forward and would hang if
    one rank ran a pass the others did not. The slices are all-gathered and the padding dropped.
    Every rank must call this function with the same ``items`` and ``batch_size``.

    A batch that fails to prepare (say a corrupt image) raises on every rank, not only on the
    rank that read it, so no rank is left waiting in a collective. The embedder runs in eval
    mode without gradients; every submodule's mode is restored afterwards (training calls this
    in the middle of training). Mid-export resume is not supported: an interrupted export
    starts again.
    """
    if batch_size <= 0:
        raise DataError(f"--batch-size: must be a positive integer; got {batch_size}.")
    if not items:
        raise DataError("export: no items to embed.")
    ids = [str(item["item_id"]) for item in items]
    _check_unique(ids)
    world = world_info() if is_distributed() else None
    rank, size = (world.rank, world.world_size) if world else (0, 1)
    shard, per_rank = _shard(items, rank, size)
    local = embed_in_batches(embedder, batcher, shard, batch_size=batch_size, progress=progress and rank == 0,
                             prefetch=prefetch, synced=True,
                             desc=f"export ({len(items)} items" + (f", {size} ranks)" if size > 1 else ")"))
    if size > 1:
        device = comm_device(local.device)
        gathered = all_gather_no_grad(local.to(device), sizes=[per_rank] * size).cpu()
    else:
        gathered = local.cpu()
    vectors = gathered[: len(items)].float().numpy()
    fields = dict(manifest or {})
    fields.setdefault("source", "export")
    fields["dim"] = int(vectors.shape[1])
    return EmbeddingTable(ids, vectors, make_manifest(**fields))


def truncate_table(table: EmbeddingTable, dim: int, name: str = "--dim") -> EmbeddingTable:
    """The first ``dim`` coordinates of every vector, re-normalised (a Matryoshka prefix), manifest ``dim`` updated.

    ``dim`` equal to the table's returns the table itself; outside ``[1, table.dim]`` is a DataError naming ``name``.
    """
    import numpy as np

    if isinstance(dim, bool) or not isinstance(dim, int) or not 0 < dim <= table.dim:
        raise DataError(f"{name}: must be an integer in [1, {table.dim}] (the embedding dimension); got {dim!r}.")
    if dim == table.dim:
        return table
    vectors = table.vectors[:, :dim].astype(np.float64)
    vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    return EmbeddingTable(list(table.ids), vectors.astype(np.float32), dict(table.manifest, dim=int(dim)))


def _shard(items: list[dict], rank: int, size: int) -> tuple[list[dict], int]:
    """Rank ``rank``'s contiguous slice, padded with the last item to ``ceil(n / size)`` items."""
    per_rank = -(-len(items) // size)
    padded = items + [items[-1]] * (per_rank * size - len(items))
    return padded[rank * per_rank:(rank + 1) * per_rank], per_rank


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


def export_manifest(model: str, *, adapter_dir=None, step: int | None = None, catalogue=None,
                    trained_until: int | None = None, adapter_hash_value: str | None = None,
                    builder: str | None = None, builder_options: dict | None = None) -> dict:
    """The manifest of an exported table; ``dim`` is filled in by the export (docs/design.md, data contracts).

    Args:
        model: the base model (path or Hub id) as the user named it.
        adapter_dir: folder of the adapter; its ``adapter_model.safetensors`` is hashed.
        adapter_hash_value: a hash the caller already has (wins over ``adapter_dir``).
        step: training step of the adapter, None if unknown.
        catalogue: the catalogue frame; its :func:`lis.embeddings.catalogue_hash` is recorded.
        trained_until: latest log timestamp (unix seconds) of any data the adapter was trained
            on; None means "no log data", which is only true for an untrained model.
        builder, builder_options: the builder (and its options) whose pairs trained the adapter;
            the evaluator computes eta against that builder's LIS (docs/science.md). None when
            unknown (a user's pairs file, an untrained model).
    """
    from lis.embeddings import MANIFEST_KEYS, catalogue_hash

    manifest = {key: None for key in MANIFEST_KEYS}
    manifest.update(model=str(model), source="export", step=None if step is None else int(step),
                    adapter_hash=adapter_hash_value or adapter_hash(adapter_dir),
                    catalogue_hash=None if catalogue is None else catalogue_hash(catalogue),
                    trained_until=None if trained_until is None else int(trained_until),
                    builder=builder, builder_options=None if builder is None else builder_options)
    manifest.pop("dim")
    return manifest


# --- the embedder from disk ---------------------------------------------------------------


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
        head.update({k: v for k, v in read_json(head_path).items() if k in head})
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
