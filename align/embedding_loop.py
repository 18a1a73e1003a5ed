"""THE embedding loop: items -> batches -> the embedder's forward pass, in eval mode, without gradients.

Every embedding of items goes through :func:`embed_in_batches`: training-time export and
``lis-align export`` (through :func:`align.export.export_embeddings`, which adds sharding across
ranks and the table), and :meth:`align.embedder.ItemEmbedder.embed_items` (publish verification,
the model card's snippet). So the same items give the same vectors on every path: floating
inputs follow the backbone's dtype, a failed batch raises a named error, modes are restored.
"""
from __future__ import annotations

import queue
import threading

import torch
import torch.distributed as dist

from align.distributed import is_distributed
from lis.errors import DataError


def embed_in_batches(embedder, batcher, items: list[dict], *, batch_size: int = 64, progress: bool = False,
                     prefetch: bool | None = None, synced: bool = False, desc: str = "embedding") -> torch.Tensor:
    """Embed ``items`` in order, ``batch_size`` at a time -> ``(len(items), dim)`` float32 on the model's device.

    Args:
        embedder: an :class:`align.embedder.ItemEmbedder`, bare or wrapped by DDP / a DeepSpeed
            engine (the wrapper is looked through: its ``.module`` is called).
        batcher: an :class:`align.collate.ItemBatcher`, or anything with ``ids`` and
            ``collate(rows)`` (an :class:`align.item_cache.ItemCache`): batches are then
            collated from preprocessed tensors (every item must be in it; a DataError names
            the first that is not).
        prefetch: prepare the next batch (image decoding, processor) in a background thread
            while the model runs the current one. ``None``: on when the model runs on an
            accelerator, off on CPU, where the thread only competes with torch's own threads
            for the same cores (measured no faster on 2 cores, bench/bench_export.py).
        synced: every rank of the process group runs this same call; a batch that fails to
            prepare on one rank then raises on every rank (one tiny all-reduce per batch), so
            no rank is left waiting in a collective. Errors in the forward pass itself (out of
            memory) are not caught that way.

    The embedder runs in eval mode without gradients; the train/eval mode of every submodule
    is restored afterwards (training calls this in the middle of training).
    """
    module = unwrap(embedder)
    device = next(module.head.parameters()).device
    if not items:
        return torch.empty(0, module.dim, device=device)
    modes = {m: m.training for m in module.modules()}
    module.eval()
    try:
        with torch.no_grad():
            return _loop(module, batcher, items, batch_size, progress, prefetch, synced and is_distributed(), desc)
    finally:
        for m, training in modes.items():
            m.training = training


def _loop(module, batcher, items, batch_size, progress, prefetch, synced, desc) -> torch.Tensor:
    from tqdm.auto import tqdm

    device = next(module.head.parameters()).device
    dtype = backbone_dtype(module)
    chunks = [items[start:start + batch_size] for start in range(0, len(items), batch_size)]
    prepare = _preparer(batcher)
    if prefetch is None:
        prefetch = device.type != "cpu"
    batches = _Prefetcher(prepare, chunks) if prefetch else (_try(prepare, chunk) for chunk in chunks)
    out = []
    with tqdm(total=len(chunks), desc=desc, unit="batch", disable=not progress) as bar:
        for batch, error in batches:
            if synced:
                _agree(error, device)
            elif error is not None:
                raise error
            inputs = {k: batch_value_to(v, device, dtype) for k, v in batch.items()}
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
    except Exception as error:  # re-raised by the loop on this rank, reported to the others
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
    flag = torch.tensor([0 if error is None else 1], dtype=torch.int64, device=comm_device(device))
    dist.all_reduce(flag)
    if int(flag.item()) == 0:
        return
    messages = [None] * dist.get_world_size()
    dist.all_gather_object(messages, None if error is None else str(error))
    if error is not None:
        raise error
    rank, message = next((r, m) for r, m in enumerate(messages) if m is not None)
    raise DataError(f"export: rank {rank} could not prepare a batch: {message}")


def comm_device(device: torch.device) -> torch.device:
    """NCCL sends CUDA tensors only; gloo sends CPU tensors (it also takes CUDA ones, slowly)."""
    if is_distributed() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def unwrap(embedder):
    """The module inside a DDP / DeepSpeed wrapper (the embedder itself when bare)."""
    # Calling the module itself skips DDP's buffer broadcast (it would differ per rank only if
    # buffers did) and still runs ZeRO-3's parameter gathering, whose hooks sit on submodules.
    while type(embedder).__name__ in ("DistributedDataParallel", "DeepSpeedEngine") and hasattr(embedder, "module"):
        embedder = embedder.module
    return embedder


def batch_value_to(value, device, dtype):
    """A batch value on ``device``; floating ones (pixels, cached encoder outputs, also inside a
    tuple) in the backbone's dtype: a bf16 vision tower does not cast float32 pixels itself in
    every family."""
    if isinstance(value, (tuple, list)):
        return type(value)(batch_value_to(v, device, dtype) for v in value)
    return value.to(device, dtype) if value.is_floating_point() else value.to(device)


def backbone_dtype(module) -> torch.dtype:
    for param in module.backbone().parameters():
        if param.is_floating_point():
            return param.dtype
    return torch.float32
