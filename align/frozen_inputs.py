"""Inputs that training never changes, computed once per item (``data.cache_frozen_inputs``).

With the vision tower frozen (LoRA on the language model only, the recipes' default), an
item's image always goes through the same function: its vision-encoder output is the same at
every step. Qwen2-VL's 3-D (M-RoPE) position ids depend only on the item's own tokens and
image grid. Both were recomputed for the same items on every step: on the tiny CPU recipe they
took 23% and 15% of a training step (bench/bench_frozen_inputs.py). :class:`FrozenItemInputs`
computes them once per catalogue item and collates batches that carry them instead of the
pixels; the model gets them through transformers' own ``mm_encoder_outputs`` and
``position_ids`` arguments, so the language model sees exactly the tensors it saw before.

Limits:
    * The vision tower must be frozen: a trainable parameter under the family's vision prefixes
      (LoRA with ``lora.vision: true``) is refused with a ConfigError.
    * Memory: one encoder output per item stays in RAM (image tokens x hidden size; 4 KB for the
      tiny model, about 0.8 MB for a 2B model at 448 px), so it suits small models and catalogues:
      the GPU recipes leave it off.
    * The encoder output is computed in eval mode: exact for towers without dropout (the Qwen2-VL,
      LLaVA and Idefics3 towers have none by default).
    * One image per item (the batcher's contract).
    * DeepSpeed ZeRO-3: built before Trainer wraps the model, while every rank still holds the
      whole model (``zero3_init_flag: false``, our configs); every rank builds the same cache and
      then never runs the tower, so no rank waits in a gather another skips. Parameters already
      partitioned at load (``zero3_init_flag: true``) are refused.
"""
from __future__ import annotations

import torch

from align.embedding_loop import backbone_dtype, batch_value_to
from lis.errors import ConfigError

# Keys the cached encoder output replaces (transformers refuses pixels and encoder outputs together).
PIXEL_KEYS = ("pixel_values", "pixel_attention_mask")
FEATURES_KEY = "image_features"


class FrozenItemInputs:
    """An :class:`align.item_cache.ItemCache` whose batches carry each item's frozen inputs.

    Args:
        cache: the ItemCache of the catalogue (row ``r`` of both is the same item).
        embedder: the :class:`align.embedder.ItemEmbedder` being trained (its backbone computes
            the encoder outputs; its family names the vision tower).
        batch_size: items per encoder pass while building.
        progress: a tqdm bar while building.

    ``collate(rows)`` returns the cache's batch without ``pixel_values`` (and
    ``pixel_attention_mask``), with ``image_features`` (a tuple of one encoder output per item,
    which :meth:`align.embedder.ItemEmbedder.pooled` hands to the model as
    ``mm_encoder_outputs``) and, for M-RoPE models, ``position_ids`` (padded with 0 on the
    tokenizer's padding side, as the model pads its own).
    """

    def __init__(self, cache, embedder, batch_size: int = 64, progress: bool = True):
        from tqdm.auto import tqdm

        check_frozen_vision(embedder)
        self.cache = cache
        self.ids, self.batcher, self.truncated = cache.ids, cache.batcher, cache.truncated
        backbone = embedder.backbone()
        device, dtype = next(embedder.head.parameters()).device, backbone_dtype(embedder)
        self.features: list[torch.Tensor] = []
        self.positions: list[torch.Tensor] | None = [] if hasattr(backbone, "get_rope_index") else None
        modes = {m: m.training for m in backbone.modules()}
        backbone.eval()
        bar = tqdm(total=len(cache), desc="frozen item inputs", unit="item", disable=not progress)
        try:
            with torch.no_grad():
                for start in range(0, len(cache), batch_size):
                    rows = range(start, min(start + batch_size, len(cache)))
                    batch = {k: batch_value_to(v, device, dtype) for k, v in cache.collate(rows).items()}
                    self.features.extend(_encoder_outputs(backbone, batch, len(rows)))
                    if self.positions is not None:
                        self.positions.extend(_item_positions(backbone, batch))
                    bar.update(len(rows))
        finally:
            for module, mode in modes.items():
                module.train(mode)
            bar.close()

    def __len__(self) -> int:
        return len(self.cache)

    def collate(self, rows) -> dict:
        rows = [int(r) for r in rows]
        batch = {k: v for k, v in self.cache.collate(rows).items() if k not in PIXEL_KEYS}
        batch[FEATURES_KEY] = tuple(self.features[r] for r in rows)
        if self.positions is not None:
            length = batch["input_ids"].shape[1]
            out = torch.zeros((3, len(rows), length), dtype=torch.int64)
            for i, r in enumerate(rows):
                p = self.positions[r]
                if self.cache.padding_side == "left":
                    out[:, i, length - p.shape[1]:] = p
                else:
                    out[:, i, :p.shape[1]] = p
            batch["position_ids"] = out
        return batch


def check_frozen_vision(embedder) -> None:
    """ConfigError unless every parameter of the vision tower (and projector) is frozen and whole."""
    prefixes = set(embedder.family.vision_prefixes)
    vision = [(name, p) for name, p in embedder.model.named_parameters() if prefixes & set(name.split("."))]
    trainable = [name for name, p in vision if p.requires_grad]
    if trainable:
        raise ConfigError(f"data.cache_frozen_inputs: the vision tower has trainable parameters ({trainable[0]}, "
                          f"{len(trainable)} in all; lora.vision is on?); cached encoder outputs need a frozen tower. "
                          "Turn one of them off.")
    partitioned = [name for name, p in vision if hasattr(p, "ds_id")]
    if partitioned:
        raise ConfigError(f"data.cache_frozen_inputs: the vision tower's parameters are already partitioned by DeepSpeed "
                          f"ZeRO-3 ({partitioned[0]}; zero3_init_flag: true); build the cache with zero3_init_flag: false "
                          "or turn it off.")


def _encoder_outputs(backbone, batch: dict, n: int) -> list[torch.Tensor]:
    """One vision-encoder output per item, from the model's own ``get_image_features``."""
    image_kwargs = {k: v for k, v in batch.items() if k in PIXEL_KEYS or k in ("image_grid_thw", "image_sizes")}
    if "pixel_attention_mask" in image_kwargs:  # Idefics3 takes it positionally, under this name
        out = backbone.get_image_features(image_kwargs["pixel_values"], image_kwargs["pixel_attention_mask"],
                                          return_dict=True)
    else:
        out = backbone.get_image_features(**image_kwargs, return_dict=True)
    pieces = list(out.pooler_output)
    if len(pieces) != n:
        raise ConfigError(f"data.cache_frozen_inputs: the vision encoder returned {len(pieces)} outputs for {n} items; "
                          "it needs one image per item.")
    return [p.detach().to("cpu").clone() for p in pieces]


def _item_positions(backbone, batch: dict) -> list[torch.Tensor]:
    """Each item's M-RoPE position ids ``(3, its length)``, from the model's ``get_rope_index``."""
    mask = batch["attention_mask"]
    positions, _ = backbone.get_rope_index(batch["input_ids"], image_grid_thw=batch.get("image_grid_thw"),
                                           attention_mask=mask, mm_token_type_ids=batch.get("mm_token_type_ids"))
    return [positions[:, i, mask[i].bool()].to("cpu").clone() for i in range(mask.shape[0])]
