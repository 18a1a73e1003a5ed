"""Tiny VLMs: real architectures, saved like checkpoints, deterministic."""
from __future__ import annotations

import logging

import pytest
import torch

from align.collate import ItemBatcher
from align.models.families import GENERIC, family_for_model_type, get_family
from lis.errors import ConfigError


def test_saved_tiny_model_reloads_with_identical_outputs(tiny_dirs, tiny_catalogue, family, items):
    from transformers import AutoModelForImageTextToText

    from align.models.loading import load_vlm
    from align.models.tiny import build_tiny_vlm

    # Building again with the same arguments gives the same weights (seeded), so the
    # in-memory model and the one read back from disk must agree exactly.
    built, built_processor = build_tiny_vlm(family, None, catalogue=tiny_catalogue)
    loaded, processor, fam = load_vlm(str(tiny_dirs[family]))
    auto = AutoModelForImageTextToText.from_pretrained(str(tiny_dirs[family])).eval()
    assert fam.name == family and type(loaded) is type(built) is type(auto)
    batch = ItemBatcher(processor, fam)(items[:3])
    assert torch.equal(batch["input_ids"], ItemBatcher(built_processor, fam)(items[:3])["input_ids"])
    with torch.no_grad():
        reference = built(**batch).logits
        assert torch.equal(reference, loaded(**batch).logits)
        assert torch.equal(reference, auto(**batch).logits)
    assert torch.isfinite(reference).all()
    assert 1e5 < sum(p.numel() for p in loaded.parameters()) < 2e6


@pytest.mark.parametrize("family", ["llava", "idefics3"])
def test_auto_processor_loads_the_saved_processor(tiny_dirs, family):
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(str(tiny_dirs[family]))
    assert type(processor).__name__.lower().startswith(family)


def test_qwen2_vl_processor_is_saved_as_the_standard_class(tiny_dirs):
    import json

    config = json.loads((tiny_dirs["qwen2_vl"] / "processor_config.json").read_text())
    assert config["processor_class"] == "Qwen2VLProcessor"


def test_tokenizer_is_trained_on_catalogue_text(tiny_dirs):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_dirs["llava"]))
    # A catalogue title costs few tokens (a generic tokenizer would split it ~5x more).
    assert len(tokenizer("vintage wooden chair", add_special_tokens=False)["input_ids"]) <= 4
    assert tokenizer.padding_side == "left"


def test_cli_builds_a_loadable_folder(tmp_path, capsys):
    from align.cli import main
    from align.models.loading import load_vlm

    assert main(["model", "tiny", "--family", "llava", "--out", str(tmp_path / "m"), "--vocab-size", "400"]) == 0
    assert "parameters" in capsys.readouterr().out
    model, _, family = load_vlm(str(tmp_path / "m"))
    assert family.name == "llava"


def test_cli_rejects_a_bad_image_size(tmp_path, capsys):
    from align.cli import main

    assert main(["model", "tiny", "--family", "llava", "--out", str(tmp_path / "m"), "--image-size", "50"]) == 2
    assert "--image-size" in capsys.readouterr().err
    assert not (tmp_path / "m").exists()


def test_unknown_model_type_gets_generic_defaults_with_a_warning(caplog):
    with caplog.at_level(logging.WARNING):
        assert family_for_model_type("mystery_vlm") is GENERIC
    assert "mystery_vlm" in caplog.text
    assert get_family("smolvlm").name == "idefics3" and get_family("qwen2_5_vl").name == "qwen2_vl"


@pytest.mark.parametrize("name, vision, expected", [
    ("model.language_model.layers.0.self_attn.q_proj", False, True),
    ("model.text_model.layers.1.mlp.down_proj", False, True),
    ("model.vision_tower.encoder.layers.0.self_attn.q_proj", False, False),
    ("model.vision_tower.encoder.layers.0.self_attn.q_proj", True, True),
    ("model.visual.blocks.0.attn.qkv", True, True),
    ("model.language_model.embed_tokens", True, False),
])
def test_lora_target_regex_keeps_to_the_language_model(name, vision, expected):
    import re

    family = get_family("qwen2_vl") if "visual" in name else get_family("llava")
    assert bool(re.fullmatch(family.lora_target_regex(vision=vision), name)) is expected


def test_missing_catalogue_text_column_is_a_data_error(tmp_path):
    import pandas as pd

    from align.models.tiny import read_corpus
    from lis.errors import DataError

    pd.DataFrame({"item_id": ["a"], "title": ["x"]}).to_parquet(tmp_path / "c.parquet")
    with pytest.raises(DataError, match="c.parquet: column 'text'"):
        read_corpus(tmp_path / "c.parquet")
    with pytest.raises(ConfigError, match="--vocab-size"):
        from align.models.tiny import build_tiny_vlm

        build_tiny_vlm("llava", vocab_size=10)
