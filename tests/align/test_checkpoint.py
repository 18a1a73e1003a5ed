"""align/checkpoint.py: the run and checkpoint files: strict run.json, what a folder says about itself."""
from __future__ import annotations

import inspect
import json

import pytest

from align.checkpoint import (BATCHER_FIELDS, EMBEDDER_CONFIG, RUN_FILE, batcher_settings, read_adapter_info, read_run,
                              write_embedder_config, write_run)
from lis.errors import DataError


def strict_loads(text: str):
    def refuse(constant):
        raise ValueError(f"not JSON: {constant}")

    return json.loads(text, parse_constant=refuse)


def test_run_json_is_strict_json_and_reads_back(tmp_path):
    write_run(tmp_path, {"base_model": "m", "best_step": 4, "data": {},
                         "best_metric": {"eval_ais_auc": 0.02, "eval_lis_efficiency": float("nan")}})
    assert "NaN" not in (tmp_path / RUN_FILE).read_text()
    run = strict_loads((tmp_path / RUN_FILE).read_text())
    assert run["best_metric"] == {"eval_ais_auc": 0.02, "eval_lis_efficiency": None}
    assert read_run(tmp_path) == run
    with pytest.raises(TypeError, match="not JSON serialisable: object"):
        write_run(tmp_path / "other", {"callback": object()})  # never an object repr
    assert not (tmp_path / "other" / RUN_FILE).exists()


@pytest.mark.parametrize("run, message", [
    ({"best_step": 1, "data": {}}, "run.json: field 'base_model' is missing"),
    ({"base_model": "tiny:qwen2_vl", "best_step": 1, "data": {}}, "must name the folder the tiny model was built in"),
])
def test_read_run_names_the_bad_field(tmp_path, run, message):
    (tmp_path / RUN_FILE).write_text(json.dumps(run))
    with pytest.raises(DataError, match=message):
        read_run(tmp_path)


def test_batcher_settings_are_every_batcher_argument_that_changes_the_inputs():
    from align.collate import ItemBatcher

    arguments = inspect.signature(ItemBatcher).parameters
    assert set(BATCHER_FIELDS) <= set(arguments)
    assert set(arguments) - set(BATCHER_FIELDS) == {"processor", "family", "base_dir"}  # not settings: inputs

    class Batcher:
        max_text_tokens, image_size, prompt, missing_image = 8, 32, "{image}{text}", "error"

    assert batcher_settings(Batcher()) == {"max_text_tokens": 8, "image_size": 32, "prompt": "{image}{text}",
                                           "missing_image": "error"}


def test_a_checkpoint_folder_prefers_its_own_settings_over_the_run_around_it(tmp_path):
    run_dir, best = tmp_path / "run", tmp_path / "run" / "best"
    best.mkdir(parents=True)
    write_run(run_dir, {"base_model": "m", "best_step": 9, "data": {"trained_until": 1234},
                        "recipe": {"data": {"max_text_tokens": 48, "prompt": "{image} run {text}", "top_k": 5}}})
    info = read_adapter_info(best)  # no lis_align.json: run.json's recipe and best_step
    assert info.batcher == {"max_text_tokens": 48, "prompt": "{image} run {text}"} and info.step == 9
    assert info.trained_until == 1234
    write_embedder_config(best, {"max_text_tokens": 8, "image_size": 64, "prompt": "{image} own {text}",
                                 "missing_image": "blank"}, step=7)
    info = read_adapter_info(best)
    assert info.batcher["prompt"] == "{image} own {text}" and info.step == 7 and info.trained_until == 1234
    assert strict_loads((best / EMBEDDER_CONFIG).read_text())["batcher"]["max_text_tokens"] == 8
