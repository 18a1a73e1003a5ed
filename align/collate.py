"""Collation: catalogue rows -> processor batches, and preference pairs -> training batches.

Items: :class:`ItemBatcher` turns item dicts into one processor batch for
:class:`align.embedder.ItemEmbedder` (:class:`align.item_cache.ItemCache` does the same from
preprocessed tensors). Pairs: :class:`PairDataset` holds training pairs as catalogue rows and
:class:`PairCollator` turns B of them into ONE item batch of 2B items (anchors, then positives).

An item is a dict ``{"item_id": str, "text": str, "image": PIL.Image | str | bytes | None}``;
a ``str`` image is a path relative to the batcher's ``base_dir`` (the catalogue's folder),
``bytes`` are an encoded image. :func:`items_from_catalogue` makes such dicts from a
catalogue frame or a ``lis.datadir.DataDir``; images are opened lazily, batch by batch.
"""
from __future__ import annotations

import io
import logging
from pathlib import Path

import torch
from torch.utils.data import Dataset

from align.models.families import DEFAULT_PROMPT, format_prompt, get_family
from lis.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

MISSING_IMAGE_POLICIES = ("blank", "error")
BLANK_GREY = (128, 128, 128)


class ItemBatcher:
    """Collate items into one processor batch (a ``BatchFeature`` of tensors).

    Args:
        processor: the VLM's processor (from :func:`align.models.loading.load_vlm`).
        family: family name or record; sets the image placeholder of the prompt.
        max_text_tokens: item text longer than this many tokens is cut to it before the
            prompt is built. Only the item text is cut, never the prompt around it: cutting
            the whole sequence would drop the "Summarise..." suffix whose last position
            the embedder reads. ``truncated`` counts cut items (the caller logs it).
        image_size: every image is resized to ``image_size`` x ``image_size`` RGB (aspect
            ratio not kept) so every item costs the same number of image tokens; ``None``
            leaves sizing to the processor.
        base_dir: folder that relative image paths are resolved against.
        prompt: template with ``{image}`` and ``{text}`` (see ``families.DEFAULT_PROMPT``).
        missing_image: ``'blank'`` (default) gives an item without an image a grey
            placeholder so every item takes the same path through the model on every rank
            (a text-only item would skip the vision tower: ZeRO-3 would hang on a mixed
            batch); ``'error'`` raises a DataError instead.

    A missing or unreadable image file is always a :class:`lis.errors.DataError` naming the
    file and the item: an image that was meant to be there and is not is bad data, not a
    blank. Qwen2-VL batches carry ``mm_token_type_ids`` (transformers 5.x needs them for
    M-RoPE); the batcher adds them from the image token id if a processor does not.
    """

    def __init__(self, processor, family, max_text_tokens: int = 64, image_size: int | None = 64, base_dir=None,
                 prompt: str = DEFAULT_PROMPT, missing_image: str = "blank"):
        if missing_image not in MISSING_IMAGE_POLICIES:
            raise ConfigError(f"missing_image: expected one of {', '.join(MISSING_IMAGE_POLICIES)}; got {missing_image!r}.")
        if max_text_tokens <= 0:
            raise ConfigError(f"max_text_tokens: must be positive; got {max_text_tokens}.")
        if "{text}" not in prompt or "{image}" not in prompt:
            raise ConfigError(f"prompt: must contain {{image}} and {{text}}; got {prompt!r}.")
        self.processor = processor
        self.tokenizer = getattr(processor, "tokenizer", processor)
        self.family = get_family(family)
        self.max_text_tokens = max_text_tokens
        self.image_size = image_size
        self.base_dir = Path(base_dir) if base_dir is not None else None
        self.prompt = prompt
        self.missing_image = missing_image
        self.truncated = 0  # items whose text was cut to max_text_tokens
        self.seen = 0

    def __call__(self, items: list[dict]):
        if not items:
            raise DataError("batch: no items to collate.")
        images = [self.load_image(item) for item in items]
        texts = [format_prompt(self.family, self.cut_text(item), self.prompt) for item in items]
        batch = self.processor(images=images, text=texts, return_tensors="pt", padding=True)
        if self.family.needs_mm_token_type_ids and "mm_token_type_ids" not in batch:
            add_mm_token_type_ids(batch, self.processor)
        self.seen += len(items)
        return batch

    def cut_text(self, item: dict) -> str:
        text = item.get("text")
        text = "" if text is None or _is_missing(text) else str(text)
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ids) <= self.max_text_tokens:
            return text
        self.truncated += 1
        return self.tokenizer.decode(ids[: self.max_text_tokens])

    def load_image(self, item: dict):
        from PIL import Image

        value, item_id = item.get("image"), item.get("item_id")
        if value is None or _is_missing(value):
            if self.missing_image == "error":
                raise DataError(f"item {item_id!r}: has no image and missing_image='error'.")
            return Image.new("RGB", self._blank_size(), BLANK_GREY)
        if isinstance(value, Image.Image):
            image = value
        else:
            image = _open_image(value, item_id, self.base_dir)
        image = image.convert("RGB")
        if self.image_size is not None and image.size != (self.image_size, self.image_size):
            image = image.resize((self.image_size, self.image_size), Image.BICUBIC)
        return image

    def _blank_size(self) -> tuple[int, int]:
        side = self.image_size or 224
        return side, side


def _open_image(value, item_id, base_dir):
    from PIL import Image, UnidentifiedImageError

    if isinstance(value, (bytes, bytearray)):
        source, name = io.BytesIO(value), f"image bytes of item {item_id!r}"
    else:
        path = Path(value)
        if not path.is_absolute() and base_dir is not None:
            path = base_dir / path
        if not path.is_file():
            raise DataError(f"{path}: image of item {item_id!r} not found.")
        source, name = path, str(path)
    try:
        with Image.open(source) as image:
            image.load()  # decode now, while we can still say which file was bad
            return image.copy()
    except (UnidentifiedImageError, OSError, ValueError) as error:
        raise DataError(f"{name}: cannot decode the image of item {item_id!r} ({error}).") from None


def _is_missing(value) -> bool:
    """pandas hands out NaN, pd.NA or NaT for a null image cell, depending on the dtype."""
    if isinstance(value, float):
        return value != value
    import pandas as pd

    return value is pd.NA or value is pd.NaT


def add_mm_token_type_ids(batch, processor) -> None:
    """Add ``mm_token_type_ids`` (1 at image tokens, else 0) to a Qwen2-VL style batch in place.

    Processors return them; batches rebuilt from a cache must add them or transformers 5.x
    falls back to 1-D positions (M-RoPE needs to know where the image is).
    """
    image_token_id = getattr(processor, "image_token_id", None)
    if image_token_id is None:
        raise ConfigError("processor: has no image_token_id; cannot build mm_token_type_ids.")
    batch["mm_token_type_ids"] = (batch["input_ids"] == image_token_id).long()


def items_from_catalogue(catalogue, ids=None, base_dir=None) -> list[dict]:
    """Item dicts from a catalogue frame (``item_id``, ``text``, optional ``image``) or a DataDir.

    With ``ids`` the items come in that order; an unknown id is a DataError. Relative image
    paths are joined to ``base_dir`` (default: the DataDir's folder, else left relative for the
    batcher's ``base_dir``). Images stay paths or bytes; the batcher opens them.
    """
    frame = getattr(catalogue, "catalogue", catalogue)
    if base_dir is None and hasattr(catalogue, "path"):
        base_dir = catalogue.path
    rows = frame
    if ids is not None:
        rows = frame.set_index("item_id", drop=False)
        missing = [i for i in ids if i not in rows.index]
        if missing:
            raise DataError(f"catalogue: item_id {missing[0]!r} is not in the catalogue ({len(missing)} missing).")
        rows = rows.loc[list(ids)]
    has_image = "image" in rows.columns
    items = []
    for row in rows.itertuples(index=False):
        image = row.image if has_image else None
        if image is not None and _is_missing(image):
            image = None
        if isinstance(image, str) and base_dir is not None:
            # Absolute, so a batcher with its own base_dir does not join a relative dir twice.
            image = str(Path(base_dir).absolute() / image)
        items.append({"item_id": str(row.item_id), "text": row.text, "image": image})
    return items


def batcher_for_datadir(datadir, processor, family, **kwargs) -> ItemBatcher:
    """An :class:`ItemBatcher` whose relative image paths resolve against a DataDir's folder."""
    return ItemBatcher(processor, family, base_dir=Path(datadir.path).absolute(), **kwargs)


# --- training pairs ----------------------------------------------------------------------------
class PairDataset(Dataset):
    """Preference pairs as catalogue row indices: ``__getitem__`` -> ``{"anchor", "positive", "weight"}``
    (+ ``"negatives"``, a list of hard-negative rows, when ``negatives`` is given).

    Rows (not ids) because the loss masks duplicates and known pairs by integer id, and the
    item cache is indexed by row. ``negatives``: (n_pairs, K) int rows, -1 for none.
    """

    def __init__(self, anchors, positives, weights=None, negatives=None):
        self.anchors = torch.as_tensor(anchors, dtype=torch.int64)
        self.positives = torch.as_tensor(positives, dtype=torch.int64)
        self.weights = (torch.ones(len(self.anchors)) if weights is None
                        else torch.as_tensor(weights, dtype=torch.float32))
        self.negatives = None if negatives is None else torch.as_tensor(negatives, dtype=torch.int64)
        if not (len(self.anchors) == len(self.positives) == len(self.weights)) or (
                self.negatives is not None and len(self.negatives) != len(self.anchors)):
            raise ValueError("PairDataset: anchors, positives, weights and negatives must have the same length")

    def __len__(self) -> int:
        return len(self.anchors)

    def __getitem__(self, i) -> dict:
        row = {"anchor": int(self.anchors[i]), "positive": int(self.positives[i]), "weight": float(self.weights[i])}
        if self.negatives is not None:
            row["negatives"] = [int(r) for r in self.negatives[i] if r >= 0]
        return row


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
        hard_negatives: pass the pairs' hard negatives (``loss.hard_negatives``): the batch's
            distinct negatives that are not one of its positives follow the positives, and
            ``negative_ids`` (possibly empty, so every rank gathers) travels with them.
        chunk_size: collate the items in ``chunks`` of this many (``loss.cache_chunk_size``, the
            cached loss of :mod:`align.cached_loss`); 0 = one batch.

    The item batch holds the B anchors first, then the B positives (then the negatives): the
    model splits the embeddings at B; ``anchor_ids``/``positive_ids`` (rows) and ``weights``
    travel with it.
    """

    def __init__(self, source, use_weights: bool = False, hard_negatives: bool = False, chunk_size: int = 0):
        self.source, self.use_weights = source, use_weights
        self.hard_negatives, self.chunk_size = hard_negatives, chunk_size

    def __call__(self, features: list[dict]) -> dict:
        anchors = [f["anchor"] for f in features]
        positives = [f["positive"] for f in features]
        rows = anchors + positives
        negatives = []
        if self.hard_negatives:
            taken = set(positives)
            for f in features:
                for r in f.get("negatives", ()):
                    if r not in taken:
                        taken.add(r)
                        negatives.append(r)
            rows = rows + negatives
        if self.chunk_size:
            size = self.chunk_size
            batch = {"chunks": [self.source.collate(rows[i:i + size]) for i in range(0, len(rows), size)]}
        else:
            batch = self.source.collate(rows)
        batch["anchor_ids"] = torch.tensor(anchors, dtype=torch.int64)
        batch["positive_ids"] = torch.tensor(positives, dtype=torch.int64)
        if self.hard_negatives:
            batch["negative_ids"] = torch.tensor(negatives, dtype=torch.int64)
        if self.use_weights:
            batch["weights"] = torch.tensor([f["weight"] for f in features], dtype=torch.float32)
        return batch
