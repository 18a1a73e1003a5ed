"""Recipes: defaults, overrides, and one-line errors naming the file, the field and the value."""
from __future__ import annotations

import pytest

from align.config import load_recipe
from align.models.families import DEFAULT_PROMPT
from lis.errors import ConfigError

TINY = "recipes/configs/tiny_cpu.yaml"


def test_defaults_and_dotted_overrides():
    recipe = load_recipe(TINY, ["training.max_steps=7", "lora.r=8", "data.prompt='{image} {text} in one word:'",
                                "training.learning_rate=2e-3"])  # YAML 1.1 reads 2e-3 as text; we read a float
    assert recipe.training.max_steps == 7 and recipe.lora.r == 8 and recipe.training.learning_rate == 0.002
    assert recipe.data.prompt == "{image} {text} in one word:"
    assert load_recipe(TINY).data.prompt == DEFAULT_PROMPT  # today's prompt unless a recipe says otherwise
    assert load_recipe(TINY).to_dict()["data"]["prompt"] == DEFAULT_PROMPT  # so run.json records it


@pytest.mark.parametrize("override, message", [
    ("data.prompt='{text} only'", "field 'data.prompt' must contain {image} and {text}; got '{text} only'"),
    ("data.prompt='{image} {text} {title}'", "field 'data.prompt' may hold only {image} and {text}"),
    ("data.prompt=null", "field 'data.prompt' may not be empty"),
    ("data.nope=1", "unknown field 'data.nope'"),
    ("training.max_steps=0", "field 'training.max_steps' must be positive; got 0"),
    ("training.learning_rate=fast", "field 'training.learning_rate' must be float; got 'fast'"),
])
def test_bad_fields_are_named_with_the_file_and_value(override, message):
    with pytest.raises(ConfigError) as caught:
        load_recipe(TINY, [override])
    assert str(caught.value).startswith(f"{TINY}: ") and message in str(caught.value)


def test_contrastive_options_default_off_and_parse():
    loss = load_recipe(TINY).loss
    assert (loss.hard_negatives, loss.cache_chunk_size, loss.matryoshka_dims) == (0, 0, None)
    loss = load_recipe(TINY, ["loss.hard_negatives=4", "loss.cache_chunk_size=64", "loss.matryoshka_dims=64,32"]).loss
    assert (loss.hard_negatives, loss.cache_chunk_size, loss.matryoshka_dims) == (4, 64, [64, 32])


@pytest.mark.parametrize("overrides, message", [
    (["loss.hard_negatives=-1"], "field 'loss.hard_negatives' must be 0 (off) or positive; got -1"),
    (["loss.cache_chunk_size=8", "training.gradient_accumulation_steps=4"],
     "field 'loss.cache_chunk_size' needs training.gradient_accumulation_steps: 1"),
    (["loss.matryoshka_dims=[256]"], "field 'loss.matryoshka_dims' must be distinct integers in [1, embedder.dim=128]; got [256]"),
    (["loss.matryoshka_dims=[64,64]"], "field 'loss.matryoshka_dims' must be distinct integers"),
    (["loss.matryoshka_dims=[]"], "field 'loss.matryoshka_dims' must be distinct integers"),
])
def test_bad_contrastive_options_are_named(overrides, message):
    with pytest.raises(ConfigError) as caught:
        load_recipe(TINY, overrides)
    assert str(caught.value).startswith(f"{TINY}: ") and message in str(caught.value)


def test_the_lis_engine_reaches_the_evaluator_config_and_spark_needs_inline_validation():
    from align.train import evaluator_config

    assert evaluator_config(load_recipe(TINY)).engine == "memory"
    recipe = load_recipe(TINY, ["lis.engine=spark", "lis.spark_master=local[2]",
                                'lis.spark_conf={"spark.sql.shuffle.partitions": 4}'])
    config = evaluator_config(recipe)
    assert (config.engine, config.spark_master, config.spark_conf) == ("spark", "local[2]",
                                                                      {"spark.sql.shuffle.partitions": "4"})
    with pytest.raises(ConfigError, match="field 'lis.engine' must be one of memory, spark; got 'hive'"):
        load_recipe(TINY, ["lis.engine=hive"])
    with pytest.raises(ConfigError, match="field 'lis.engine' is 'spark', which needs lis.mode=inline"):
        load_recipe(TINY, ["lis.engine=spark", "lis.mode=async"])
