"""Preprocess every catalogue item once; collate training batches from memory.

The processor is the slow part of a small-model training step: the Qwen2-VL processor on
PIL images takes about 0.5 s per 64 items on our 2-core machines, longer than the tiny
model's whole forward and backward. A catalogue is embedded over and over during training,
so :class:`ItemCache` runs the processor over it once (in chunks, with a tqdm bar) and keeps
each item's own tensors; :meth:`ItemCache.collate` then builds a batch by padding and
concatenating, which costs microseconds.
"""
from __future__ import annotations

import logging

import torch

logger = logging.getLogger(__name__)

# Per-token keys: one row per item, padded along the sequence dimension when collated.
TEXT_KEYS = ("input_ids", "attention_mask", "mm_token_type_ids", "token_type_ids")


class ItemCache:
    """The processed tensors of every item of a catalogue, collated into batches on demand.

    Args:
        batcher: an :class:`align.collate.ItemBatcher` (prompt, truncation, images, missing-image
            policy all come from it; bad images raise its DataError naming file and item).
        items: item dicts from :func:`align.collate.items_from_catalogue`; row ``r`` of the
            cache is ``items[r]``.
        chunk_size: items per processor call while building (a batched call is far cheaper
            per item than one call per item).
        progress: show a tqdm bar while building.

    ``collate(rows)`` returns a dict of tensors equal to what ``batcher([items[r] for r in
    rows])`` returns (tested): text keys are re-padded on the tokenizer's padding side with
    its pad id (0 for masks), image keys concatenated in row order. ``truncated`` is the
    number of items whose text was cut to ``batcher.max_text_tokens``.

    Limits:
        * Memory: every item's pixel values stay in RAM (float32). About 100 KB per item for a
          64-px Qwen2-VL image, so fine for the tiny recipe and for catalogues up to ~10^5
          small items; at 448 px it is ~5 MB per item: GPU recipes turn the cache off
          (``data.item_cache: false``) and let DataLoader workers run the processor.
        * One image per item. Image tensors whose trailing shapes differ between items (an
          Idefics3 processor with image splitting on) are zero-padded along dim 1, which
          matches the processor's own padding of the image count.
        * Built per process: under DDP each rank builds its own copy (deterministic).
    """

    def __init__(self, batcher, items: list[dict], chunk_size: int = 64, progress: bool = True):
        from tqdm.auto import tqdm

        self.batcher = batcher
        self.ids = [str(item["item_id"]) for item in items]
        tokenizer = batcher.tokenizer
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.padding_side = getattr(tokenizer, "padding_side", "left")
        self.entries: list[dict[str, torch.Tensor]] = []
        start_truncated = batcher.truncated
        bar = tqdm(total=len(items), desc="preprocessing items", unit="item", disable=not progress)
        for start in range(0, len(items), chunk_size):
            chunk = items[start:start + chunk_size]
            self.entries.extend(split_batch(batcher(chunk), len(chunk)))
            bar.update(len(chunk))
        bar.close()
        self.truncated = batcher.truncated - start_truncated

    def __len__(self) -> int:
        return len(self.entries)

    def collate(self, rows) -> dict[str, torch.Tensor]:
        """One batch of the items at ``rows`` (positions in the catalogue order given)."""
        entries = [self.entries[int(r)] for r in rows]
        batch = {}
        length = max(e["input_ids"].shape[0] for e in entries)
        for key in entries[0]:
            values = [e[key] for e in entries]
            if key in TEXT_KEYS:
                fill = self.pad_id if key == "input_ids" else 0
                batch[key] = _pad_rows(values, length, fill, self.padding_side)
            else:
                batch[key] = _concat_images(values)
        return batch


def split_batch(batch, n: int) -> list[dict[str, torch.Tensor]]:
    """Cut a processor batch of ``n`` items into ``n`` per-item dicts (padding removed)."""
    mask = batch["attention_mask"].bool()
    per_item = [dict() for _ in range(n)]
    for key, value in batch.items():
        if not torch.is_tensor(value):
            continue
        if key in TEXT_KEYS:
            for i in range(n):
                per_item[i][key] = value[i][mask[i]].clone()
        elif key == "pixel_values" and "image_grid_thw" in batch:
            # Qwen2-VL style: all images' patches flattened into one (patches, dim) tensor.
            counts = batch["image_grid_thw"].prod(-1).tolist()
            for i, piece in enumerate(torch.split(value, counts)):
                per_item[i][key] = piece.clone()
        elif value.shape[0] == n:
            for i in range(n):
                per_item[i][key] = value[i:i + 1].clone()
        else:
            raise ValueError(f"item cache: cannot split batch key {key!r} of shape {tuple(value.shape)} into {n} items")
    return per_item


def _pad_rows(values, length: int, fill: int, side: str) -> torch.Tensor:
    out = values[0].new_full((len(values), length), fill)
    for i, v in enumerate(values):
        if side == "left":
            out[i, length - v.shape[0]:] = v
        else:
            out[i, : v.shape[0]] = v
    return out


def _concat_images(values) -> torch.Tensor:
    shapes = {tuple(v.shape[1:]) for v in values}
    if len(shapes) == 1 or values[0].dim() < 2:
        return torch.cat(values, dim=0)
    # Differing image counts (dim 1): zero-pad, as the processor pads its own batches.
    widest = max(v.shape[1] for v in values)
    padded = []
    for v in values:
        if v.shape[1] < widest:
            v = torch.cat([v, v.new_zeros((v.shape[0], widest - v.shape[1], *v.shape[2:]))], dim=1)
        padded.append(v)
    return torch.cat(padded, dim=0)
