"""Frozen inputs computed once per item: the same embeddings, loss and gradients as from pixels."""
from __future__ import annotations

import pytest
import torch

from align.collate import ItemBatcher
from align.embedder import ItemEmbedder
from align.frozen_inputs import FEATURES_KEY, FrozenItemInputs
from align.item_cache import ItemCache
from align.lora import apply_lora
from lis.errors import ConfigError


def _cache_and_embedder(loaded, items, **lora):
    model, processor, family = loaded
    torch.manual_seed(0)
    model = apply_lora(model, family, r=4, alpha=8, **lora)
    embedder = ItemEmbedder(model, family, dim=16, pooling="mean")
    return ItemCache(ItemBatcher(processor, family), items, chunk_size=4, progress=False), embedder


def test_batches_from_frozen_inputs_embed_and_train_exactly_like_batches_from_pixels(loaded, items):
    cache, embedder = _cache_and_embedder(loaded, items)
    frozen = FrozenItemInputs(cache, embedder, batch_size=4, progress=False)
    rows = [4, 0, 5, 2, 1]  # differing lengths: padding on the tokenizer's side; item 5 has no image
    plain, cached = cache.collate(rows), frozen.collate(rows)
    assert "pixel_values" not in cached and len(cached[FEATURES_KEY]) == len(rows)

    embedder.eval()
    with torch.no_grad():
        torch.testing.assert_close(embedder(**cached), embedder(**plain), rtol=0, atol=1e-5)

    embedder.train()  # centring with batch statistics, gradients through LoRA and the head
    grads = []
    for batch in (plain, cached):
        embedder.zero_grad()
        embedder(**dict(batch)).pow(2).sum().backward()
        grads.append({n: p.grad.clone() for n, p in embedder.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and grads[0]
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], rtol=1e-4, atol=1e-6, msg=name)


def test_cached_m_rope_positions_are_the_models_own(tiny_dirs, items):
    from align.models.loading import load_vlm

    cache, embedder = _cache_and_embedder(load_vlm(str(tiny_dirs["qwen2_vl"])), items)
    frozen = FrozenItemInputs(cache, embedder, progress=False)
    rows = [3, 1, 4, 0]
    plain = cache.collate(rows)
    want, _ = embedder.backbone().get_rope_index(plain["input_ids"], image_grid_thw=plain["image_grid_thw"],
                                                 attention_mask=plain["attention_mask"],
                                                 mm_token_type_ids=plain["mm_token_type_ids"])
    assert torch.equal(frozen.collate(rows)["position_ids"], want)


def test_a_trainable_vision_tower_is_refused(tiny_dirs, items):
    from align.models.loading import load_vlm

    cache, embedder = _cache_and_embedder(load_vlm(str(tiny_dirs["qwen2_vl"])), items, vision=True)
    with pytest.raises(ConfigError, match="cache_frozen_inputs: the vision tower has trainable parameters"):
        FrozenItemInputs(cache, embedder, progress=False)


def test_the_recipe_refuses_it_without_the_item_cache_or_with_lora_on_vision(tmp_path):
    from align.config import load_recipe

    path = tmp_path / "r.yaml"
    path.write_text("data:\n  cache_frozen_inputs: true\n")
    with pytest.raises(ConfigError, match="needs data.item_cache: true"):
        load_recipe(path, ["data.item_cache=false"])
    with pytest.raises(ConfigError, match="needs a frozen vision tower"):
        load_recipe(path, ["lora.vision=true"])


def test_a_vision_tower_already_partitioned_by_zero3_is_refused(tiny_dirs, items):
    from align.models.loading import load_vlm

    cache, embedder = _cache_and_embedder(load_vlm(str(tiny_dirs["qwen2_vl"])), items)
    name, parameter = next((n, p) for n, p in embedder.model.named_parameters() if ".visual." in n)
    parameter.ds_id = 0  # how DeepSpeed marks a parameter it partitioned (zero3_init_flag: true)
    with pytest.raises(ConfigError, match="already partitioned by DeepSpeed ZeRO-3"):
        FrozenItemInputs(cache, embedder, progress=False)
