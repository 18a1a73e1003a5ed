"""ItemEmbedder: unit vectors, determinism, pooling, the blank-image path, the head on disk."""
from __future__ import annotations

import pytest
import torch

from align.collate import ItemBatcher
from align.embedder import ItemEmbedder, pool
from lis.errors import ConfigError


@pytest.fixture
def embedder_and_batcher(loaded):
    model, processor, family = loaded
    torch.manual_seed(0)
    return ItemEmbedder(model, family, dim=128).eval(), ItemBatcher(processor, family)


def test_forward_gives_finite_unit_vectors_deterministically_in_eval(embedder_and_batcher, items):
    embedder, batcher = embedder_and_batcher
    batch = batcher(items)
    with torch.no_grad():
        first, second = embedder(**batch), embedder(**batch)
    assert first.shape == (len(items), 128)
    assert torch.isfinite(first).all()
    assert torch.allclose(first.norm(dim=1), torch.ones(len(items)), atol=1e-5)
    assert torch.equal(first, second)
    # Different items, different vectors (a constant embedding would pass the checks above).
    assert (first @ first.T).fill_diagonal_(0).max() < 0.9999


def test_an_item_without_image_embeds_like_the_blank_placeholder(embedder_and_batcher, items):
    from PIL import Image

    from align.collate import BLANK_GREY

    embedder, batcher = embedder_and_batcher
    no_image = dict(items[0], image=None)
    blank = dict(items[0], image=Image.new("RGB", (64, 64), BLANK_GREY))
    with torch.no_grad():
        a, b, real = embedder(**batcher([no_image])), embedder(**batcher([blank])), embedder(**batcher([items[0]]))
    assert torch.allclose(a, b, atol=1e-6)
    assert not torch.allclose(a, real, atol=1e-3)  # the image is read at all


def test_embedding_does_not_depend_on_batch_neighbours(embedder_and_batcher, items):
    embedder, batcher = embedder_and_batcher
    with torch.no_grad():
        alone = embedder(**batcher(items[:1]))
        together = embedder(**batcher(items))[:1]  # padded to the longest item
    assert torch.allclose(alone, together, atol=1e-4)


@pytest.mark.parametrize("side", ["left", "right"])
def test_pool_reads_only_real_positions(side):
    hidden = torch.arange(2 * 4 * 1, dtype=torch.float).reshape(2, 4, 1)
    mask = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]]) if side == "left" else torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    last, mean = pool(hidden, mask, "last"), pool(hidden, mask, "mean")
    assert last[:, 0].tolist() == ([3.0, 7.0] if side == "left" else [1.0, 7.0])
    assert mean[:, 0].tolist() == ([2.5, 5.5] if side == "left" else [0.5, 5.5])


@pytest.mark.parametrize("family", ["qwen2_vl"])
def test_head_round_trips_through_safetensors(embedder_and_batcher, items, tmp_path, loaded):
    embedder, batcher = embedder_and_batcher
    embedder.train()
    with torch.no_grad():
        embedder(**batcher(items))  # moves the centring statistics away from (0, 1)
    embedder.eval()
    embedder.save_head(tmp_path)
    assert (tmp_path / "projection_head.safetensors").exists() and (tmp_path / "projection_head.json").exists()
    other = ItemEmbedder(loaded[0], loaded[2], dim=128).eval()
    batch = batcher(items)
    with torch.no_grad():
        assert not torch.allclose(other(**batch), embedder(**batch))
        other.load_head(tmp_path)
        assert torch.equal(other(**batch), embedder(**batch))
    with pytest.raises(ConfigError, match="projection_head.json: field 'dim'"):
        ItemEmbedder(loaded[0], loaded[2], dim=64).load_head(tmp_path)


@pytest.mark.parametrize("family", ["llava"])
def test_mean_pooling_checkpointing_and_a_one_item_training_batch(loaded, items):
    model, processor, family = loaded
    embedder = ItemEmbedder(model, family, pooling="mean", gradient_checkpointing=True).train()
    out = embedder(**ItemBatcher(processor, family)(items[:1]))
    out.sum().backward()
    assert out.shape == (1, 128) and embedder.head.weight.grad is not None


def test_bad_options_are_config_errors(loaded):
    with pytest.raises(ConfigError, match="pooling"):
        ItemEmbedder(loaded[0], pooling="max")
