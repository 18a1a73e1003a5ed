"""ItemBatcher: images from disk or bytes, clear errors, text truncation, Qwen2-VL's extra ids."""
from __future__ import annotations

import io

import pandas as pd
import pytest
import torch

from align.collate import ItemBatcher, add_mm_token_type_ids, items_from_catalogue
from lis.errors import ConfigError, DataError


@pytest.fixture(scope="module")
def qwen(tiny_dirs):
    from align.models.loading import load_vlm

    _, processor, family = load_vlm(str(tiny_dirs["qwen2_vl"]))
    return processor, family


def test_a_missing_image_file_names_the_file_and_the_item(qwen, tiny_catalogue):
    batcher = ItemBatcher(*qwen, base_dir=tiny_catalogue)
    with pytest.raises(DataError, match=r"images/gone\.png: image of item 'x7' not found"):
        batcher([{"item_id": "x7", "text": "a", "image": "images/gone.png"}])


def test_a_corrupt_image_file_names_the_file_and_the_item(qwen, tmp_path):
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    batcher = ItemBatcher(*qwen, base_dir=tmp_path)
    with pytest.raises(DataError, match=r"bad\.png: cannot decode the image of item 'x8'"):
        batcher([{"item_id": "x8", "text": "a", "image": "bad.png"}])
    with pytest.raises(DataError, match="image bytes of item 'x9'"):
        batcher([{"item_id": "x9", "text": "a", "image": b"junk"}])


def test_encoded_bytes_and_relative_paths_give_the_same_batch(qwen, tiny_catalogue):
    relative = {"item_id": "i0", "text": "red", "image": "images/i0.png"}
    as_bytes = dict(relative, image=(tiny_catalogue / "images/i0.png").read_bytes())
    batcher = ItemBatcher(*qwen, base_dir=tiny_catalogue)
    assert torch.equal(batcher([relative])["pixel_values"], batcher([as_bytes])["pixel_values"])


def test_long_text_is_cut_to_max_tokens_and_counted(qwen, items):
    processor, family = qwen
    batcher = ItemBatcher(processor, family, max_text_tokens=3)
    long_item = dict(items[0], text="vintage wooden chair " * 20)
    short = ItemBatcher(processor, family, max_text_tokens=3)([dict(items[0], text="vintage wooden chair " * 2)])
    batch = batcher([long_item, dict(items[1], text="mug")])
    assert (batcher.truncated, batcher.seen) == (1, 2)
    # The cut item is as long as any other 3-token text: the prompt suffix survived the cut.
    assert batch["attention_mask"][0].sum() <= short["attention_mask"][0].sum()
    tail = processor.tokenizer.decode(batch["input_ids"][0][-3:])
    assert "word:" in tail


def test_qwen2_vl_batches_carry_mm_token_type_ids(qwen, items):
    processor, family = qwen
    batch = ItemBatcher(processor, family)(items[:2])
    rebuilt = {"input_ids": batch["input_ids"]}
    add_mm_token_type_ids(rebuilt, processor)
    assert torch.equal(rebuilt["mm_token_type_ids"], batch["mm_token_type_ids"].long())
    assert batch["mm_token_type_ids"].sum() == 2 * 16  # 64 px, patch 8, merge 2 -> 16 tokens per image


def test_missing_image_policy_error_and_catalogue_order(qwen, tiny_catalogue):
    frame = pd.read_parquet(tiny_catalogue / "catalogue.parquet")
    picked = items_from_catalogue(frame, ids=["i5", "i0"], base_dir=tiny_catalogue)
    assert [item["item_id"] for item in picked] == ["i5", "i0"] and picked[0]["image"] is None
    with pytest.raises(DataError, match="item 'i5': has no image"):
        ItemBatcher(*qwen, missing_image="error")(picked)
    with pytest.raises(DataError, match="item_id 'nope' is not in the catalogue"):
        items_from_catalogue(frame, ids=["nope"])
    with pytest.raises(ConfigError, match="missing_image"):
        ItemBatcher(*qwen, missing_image="skip")



def test_items_of_a_data_dir_given_by_a_relative_path_open_their_images(tiny_catalogue, monkeypatch, loaded):
    # `make demo` passes runs/demo/data: the image path must not get the relative dir twice.
    import os
    from pathlib import Path

    from lis.datadir import DataDir

    _, processor, family = loaded
    monkeypatch.chdir(tiny_catalogue.parent)
    relative = Path(os.path.relpath(tiny_catalogue))
    catalogue = pd.read_parquet(tiny_catalogue / "catalogue.parquet")
    items = items_from_catalogue(DataDir(path=relative, catalogue=catalogue, log=None))
    batch = ItemBatcher(processor, family, base_dir=relative)(items[:2])
    assert batch["input_ids"].shape[0] == 2
