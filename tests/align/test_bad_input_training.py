"""Bad input to every training-side command (train, export, publish, model tiny, demo): exit 2,
one line naming the file or flag, the field and the bad value, nothing written
(the contract is checked by :func:`tests.bad_input.expect_bad_input`)."""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

from align.cli import main
from tests.bad_input import expect_bad_input

RECIPE = "recipes/configs/tiny_cpu.yaml"
REPO = Path(__file__).resolve().parents[2]


@dataclass
class Workspace:
    tmp: Path
    data: Path  # the shared simulated data dir (read-only)
    model: Path  # the shared tiny Qwen2-VL (read-only)

    def file(self, name: str, content) -> Path:
        path = self.tmp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        (path.write_bytes if isinstance(content, bytes) else path.write_text)(content)
        return path

    def data_copy(self) -> Path:
        """A private copy of the data dir, for cases that break it."""
        copy = self.tmp / "data"
        if not copy.exists():
            shutil.copytree(self.data, copy, symlinks=True)
        return copy


# ----------------------------------------------------------------------------- train
def _train(ws, *overrides, recipe=RECIPE):
    return ["train", recipe, f"training.output_dir={ws.tmp / 'run'}", f"data.data_dir={ws.data}",
            f"model.path={ws.model}", *overrides]


def _field(name, value, shown=None):
    """A recipe override whose message must name the field and the value."""
    return lambda ws: (_train(ws, f"{name}={value}"), [name, str(value) if shown is None else shown])


TRAIN = {
    # the cases
    "gradient_accumulation_steps_0": _field("training.gradient_accumulation_steps", 0),
    "builder_nope": _field("data.builder", "nope", "'nope'"),
    "yaml_error_in_override": lambda ws: (_train(ws, "training.max_steps=[1,2"), ["training.max_steps=[1,2", "YAML"]),
    "resume_last_without_checkpoint": lambda ws: (
        _train(ws, "training.resume_from_checkpoint=last"), ["training.resume_from_checkpoint", "'last'", "checkpoint"]),
    "recipe_not_utf8": lambda ws: (
        _train(ws, recipe=ws.file("latin1.yaml", "model:\n  path: caf\xe9\n".encode("latin-1"))), ["latin1.yaml", "UTF-8", "0xe9"]),
    # recipe files
    "recipe_missing": lambda ws: (_train(ws, recipe=ws.tmp / "none.yaml"), ["none.yaml", "not found"]),
    "recipe_invalid_yaml": lambda ws: (
        _train(ws, recipe=ws.file("bad.yaml", "training:\n  max_steps: [1\n")), ["bad.yaml", "YAML", "line"]),
    "recipe_a_list": lambda ws: (_train(ws, recipe=ws.file("list.yaml", "- 1\n- 2\n")), ["list.yaml", "mapping", "list"]),
    "recipe_unknown_section": lambda ws: (
        _train(ws, recipe=ws.file("sec.yaml", "trainer:\n  steps: 3\n")), ["sec.yaml", "'trainer'"]),
    "recipe_section_not_mapping": lambda ws: (
        _train(ws, recipe=ws.file("flat.yaml", "training: 5\n")), ["flat.yaml", "'training'", "5"]),
    # overrides
    "override_without_equals": lambda ws: (_train(ws, "training.max_steps"), ["'training.max_steps'", "section.field=value"]),
    "override_empty_key": lambda ws: (_train(ws, "=3"), ["'=3'", "section.field=value"]),
    "override_empty_part": lambda ws: (_train(ws, "training..max_steps=3"), ["'training..max_steps=3'"]),
    "override_value_as_section": lambda ws: (_train(ws, "training.max_steps.x=1"), ["training.max_steps.x", "'max_steps'"]),
    "unknown_field": _field("training.max_stepz", 3, "'training.max_stepz'"),
    "max_steps_text": _field("training.max_steps", "many", "'many'"),
    "max_steps_0": _field("training.max_steps", 0),
    "max_steps_bool": _field("training.max_steps", "true", "True"),
    "learning_rate_negative": _field("training.learning_rate", -0.1),
    "learning_rate_inf": _field("training.learning_rate", ".inf", "inf"),
    "learning_rate_nan": _field("training.learning_rate", ".nan", "nan"),
    "batch_size_0": _field("training.per_device_train_batch_size", 0),
    "eval_steps_0": _field("training.eval_steps", 0),
    "save_steps_not_multiple": lambda ws: (
        _train(ws, "training.save_steps=7", "training.eval_steps=5"), ["training.save_steps", "7", "5"]),
    "warmup_negative": _field("training.warmup_steps", -1),
    "logging_steps_0": _field("training.logging_steps", 0),
    "save_total_limit_0": _field("training.save_total_limit", 0),
    "cpu_threads_0": _field("training.cpu_threads", 0),
    "export_batch_size_0": _field("training.export_batch_size", 0),
    "dataloader_workers_negative": _field("training.dataloader_num_workers", -2),
    "weight_decay_negative": _field("training.weight_decay", -1.0),
    "max_grad_norm_negative": _field("training.max_grad_norm", -1.0),
    "scheduler_unknown": _field("training.lr_scheduler_type", "zigzag", "'zigzag'"),
    "resume_folder_missing": lambda ws: (
        _train(ws, f"training.resume_from_checkpoint={ws.tmp / 'ckpt'}"), ["training.resume_from_checkpoint", "ckpt"]),
    "seed_negative": _field("training.seed", -1),
    "holdout_fraction_1": _field("data.holdout_fraction", 1.0),
    "eval_fraction_0": _field("data.eval_fraction", 0.0),
    "top_k_0": _field("data.top_k", 0),
    "max_text_tokens_0": _field("data.max_text_tokens", 0),
    "image_size_0": _field("data.image_size", 0),
    "missing_image_bad": _field("data.missing_image", "skip", "'skip'"),
    "prompt_without_text": _field("data.prompt", "'{image} only'", "'{image} only'"),
    "prompt_unknown_field": _field("data.prompt", "'{image}{text}{price}'", "price"),
    "pooling_bad": _field("embedder.pooling", "max", "'max'"),
    "dim_0": _field("embedder.dim", 0),
    "dtype_bad": _field("model.dtype", "int8", "'int8'"),
    "lora_r_0": _field("lora.r", 0),
    "lora_alpha_0": _field("lora.alpha", 0),
    "lora_dropout_1_5": _field("lora.dropout", 1.5),
    "logit_scale_200": _field("loss.logit_scale_init", 200),
    "lis_builder_nope": _field("lis.builder", "nope", "'nope'"),
    "lis_bootstrap_5": _field("lis.n_bootstrap", 5),
    "lis_patience_0": _field("lis.early_stopping_patience", 0),
    "lis_max_eval_items_0": _field("lis.max_eval_items", 0),
    "data_dir_missing": lambda ws: (
        _train(ws, f"data.data_dir={ws.tmp / 'gone'}", "lis.enabled=false"), ["gone"]),
    # launcher flags
    "num_processes_without_config": lambda ws: (_train(ws) + ["--num-processes", "2"], ["--num-processes"]),
    "accelerate_config_unknown": lambda ws: (_train(ws) + ["--accelerate-config", "warp"], ["--accelerate-config", "'warp'"]),
    "machine_rank_negative": lambda ws: (
        _train(ws) + ["--accelerate-config", "cpu_2proc", "--machine-rank", "-1"], ["--machine-rank", "-1"]),
    "launch_with_bad_override": lambda ws: (
        _train(ws, "training.max_steps=0") + ["--accelerate-config", "cpu_2proc"], ["training.max_steps", "0"]),
    "launch_resume_last_without_checkpoint": lambda ws: (
        _train(ws, "training.resume_from_checkpoint=last") + ["--accelerate-config", "cpu_2proc"],
        ["training.resume_from_checkpoint", "'last'"]),
    "launch_log_label_3": lambda ws: (
        _train(ws, f"data.data_dir={_bad_label(ws)}") + ["--accelerate-config", "cpu_2proc"], ["log.parquet", "label", "3"]),
    "launch_data_dir_missing": lambda ws: (
        _train(ws, f"data.data_dir={ws.tmp / 'gone'}") + ["--accelerate-config", "cpu_2proc"], ["data.data_dir", "gone"]),
}


def _bad_label(ws) -> Path:
    import pandas as pd

    data = ws.data_copy()
    log = pd.read_parquet(data / "log.parquet")
    log.loc[5, "label"] = 3
    log.to_parquet(data / "log.parquet", index=False)
    return data


# ----------------------------------------------------------------------------- export
def _export(ws, *extra, out=None, data=None):
    return ["export", "--model", ws.model, "--data", data or ws.data, "--out", out or ws.tmp / "emb.safetensors",
            "--no-progress", *extra]


def _symlink_outside(ws) -> Path:
    data = ws.data_copy()
    target = ws.file("private/secret.png", (data / "images" / "i0.png").read_bytes())
    (data / "images" / "i0.png").unlink()
    os.symlink(target, data / "images" / "i0.png")
    return data


EXPORT = {
    "out_is_a_directory": lambda ws: (_export(ws, out=ws.tmp), ["--out", "directory"]),
    "out_is_the_catalogue": lambda ws: (
        _export(ws, out=ws.data_copy() / "catalogue.parquet", data=ws.data_copy()), ["--out", "catalogue.parquet", "input"]),
    "out_inside_the_model": lambda ws: (_export(ws, out=ws.model / "e.safetensors"), ["--out", "e.safetensors", "input folder"]),
    "out_inside_the_adapter": lambda ws: (
        _export(ws, "--adapter", ws.file("adapter/projection_head.json", "{}").parent, out=ws.tmp / "adapter" / "e.safetensors"),
        ["--out", "e.safetensors", "adapter"]),
    "out_is_the_ids_file": lambda ws: (
        _export(ws, "--ids-file", ws.file("ids.txt", "i0\n"), out=ws.tmp / "ids.txt"), ["--out", "ids.txt", "input"]),
    "merged_holds_the_model": lambda ws: (
        _export(ws, "--adapter", ws.file("adapter/projection_head.json", "{}").parent, "--merged", ws.model.parent),
        ["--merged", "input"]),
    "merged_is_a_file": lambda ws: (
        _export(ws, "--adapter", ws.file("adapter/projection_head.json", "{}").parent, "--merged", ws.file("m.bin", b"x")),
        ["--merged", "m.bin", "file"]),
    "batch_size_0": lambda ws: (_export(ws, "--batch-size", "0"), ["--batch-size", "0"]),
    "dtype_bad": lambda ws: (_export(ws, "--dtype", "int4"), ["--dtype", "'int4'"]),
    "trained_until_text": lambda ws: (_export(ws, "--trained-until", "soon"), ["--trained-until", "'soon'"]),
    "data_missing": lambda ws: (_export(ws, data=ws.tmp / "gone"), ["gone", "not found"]),
    "image_symlink_outside": lambda ws: (_export(ws, data=_symlink_outside(ws)), ["catalogue.parquet", "image", "row 0", "outside"]),
    "ids_file_missing": lambda ws: (_export(ws, "--ids-file", ws.tmp / "ids.txt"), ["ids.txt", "not found"]),
    "ids_file_repeat": lambda ws: (_export(ws, "--ids-file", ws.file("ids.txt", "i0\ni1\ni0\n")), ["ids.txt", "'i0'", "twice"]),
    "ids_file_unknown": lambda ws: (_export(ws, "--ids-file", ws.file("ids.txt", "i0\nzz\n")), ["ids.txt", "'zz'", "line 2"]),
    "ids_file_empty": lambda ws: (_export(ws, "--ids-file", ws.file("ids.txt", "# nothing\n")), ["ids.txt", "no item ids"]),
    "ids_file_not_utf8": lambda ws: (_export(ws, "--ids-file", ws.file("ids.txt", b"i0\n\xff\n")), ["ids.txt", "UTF-8", "0xff"]),
    "model_missing": lambda ws: (["export", "--model", ws.tmp / "m", "--data", ws.data, "--out", ws.tmp / "e.safetensors"],
                                 ["m", "model folder not found"]),
    "adapter_missing": lambda ws: (_export(ws, "--adapter", ws.tmp / "ad"), ["ad", "adapter folder not found"]),
    "adapter_without_head": lambda ws: (_export(ws, "--adapter", _mkdir(ws.tmp / "ad")), ["projection_head.json", "ad"]),
}


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


# ----------------------------------------------------------------------------- publish
def _publish(ws, *extra, repo="someone/items", run=None):
    return ["publish", run or ws.tmp / "run", "--repo-id", repo, *extra]


def _run_dir(ws, run: str | None) -> Path:
    folder = _mkdir(ws.tmp / "run")
    if run is not None:
        (folder / "run.json").write_text(run)
    return folder


PUBLISH = {
    "n_probe_0": lambda ws: (_publish(ws, "--dry-run", "--n-probe", "0"), ["--n-probe", "0"]),
    "n_probe_negative": lambda ws: (_publish(ws, "--dry-run", "--n-probe", "-3"), ["--n-probe", "-3"]),
    "min_cosine_minus_5": lambda ws: (_publish(ws, "--dry-run", "--min-cosine", "-5"), ["--min-cosine", "-5"]),
    "min_cosine_above_1": lambda ws: (_publish(ws, "--dry-run", "--min-cosine", "1.5"), ["--min-cosine", "1.5"]),
    "min_cosine_nan": lambda ws: (_publish(ws, "--dry-run", "--min-cosine", "nan"), ["--min-cosine", "nan"]),
    "repo_id_invalid_dry_run": lambda ws: (_publish(ws, "--dry-run", repo="bad repo!!/x y"), ["--repo-id", "'bad repo!!/x y'"]),
    "repo_id_three_parts": lambda ws: (_publish(ws, "--dry-run", repo="a/b/c"), ["--repo-id", "'a/b/c'"]),
    "repo_id_double_dash": lambda ws: (_publish(ws, "--dry-run", repo="me/a--b"), ["--repo-id", "'me/a--b'"]),
    "repo_id_empty": lambda ws: (_publish(ws, "--dry-run", repo=""), ["--repo-id", "''"]),
    "endpoint_not_http": lambda ws: (_publish(ws, "--endpoint", "ftp://hub"), ["--endpoint", "'ftp://hub'"]),
    "hf_hub_offline": lambda ws: (_publish(ws), ["HF_HUB_OFFLINE", "'1'", "--dry-run"]),
    "no_token": lambda ws: (_publish(ws), ["token", "HF_TOKEN"]),
    "run_dir_missing": lambda ws: (_publish(ws, "--dry-run", run=ws.tmp / "nowhere"), ["run.json", "nowhere"]),
    "run_json_invalid": lambda ws: (_publish(ws, "--dry-run", run=_run_dir(ws, "{oops")), ["run.json", "not valid JSON"]),
    "run_json_missing_field": lambda ws: (_publish(ws, "--dry-run", run=_run_dir(ws, "{}")), ["run.json", "field"]),
    "run_json_tiny_base": lambda ws: (
        _publish(ws, "--dry-run", run=_run_dir(ws, json.dumps({"base_model": "tiny:qwen2_vl", "best_step": 1, "recipe": {},
                                                               "data": {}, "family": "qwen2_vl"}))),
        ["run.json", "'base_model'", "'tiny:qwen2_vl'"]),
}


# ----------------------------------------------------------------------------- model tiny, demo
MODEL = {
    "family_unknown": lambda ws: (["model", "tiny", "--family", "gpt", "--out", ws.tmp / "m"], ["--family", "'gpt'"]),
    "image_size_30": lambda ws: (["model", "tiny", "--family", "llava", "--out", ws.tmp / "m", "--image-size", "30"],
                                 ["--image-size", "30"]),
    "vocab_size_10": lambda ws: (["model", "tiny", "--family", "llava", "--out", ws.tmp / "m", "--vocab-size", "10"],
                                 ["--vocab-size", "10"]),
    "out_holds_the_catalogue": lambda ws: (
        ["model", "tiny", "--family", "llava", "--out", ws.tmp, "--catalogue", ws.file("c/catalogue.parquet", b"x").parent],
        ["--out", "input"]),
    "out_is_a_file": lambda ws: (["model", "tiny", "--family", "llava", "--out", ws.file("m.txt", "x")], ["--out", "m.txt", "file"]),
}

DEMO = {
    "preset_unknown": lambda ws: (["demo", "--out", ws.tmp / "d", "--preset", "huge"], ["--preset", "'huge'"]),
    "bad_override": lambda ws: (["demo", "--out", ws.tmp / "d", "training.max_steps=-4"], ["training.max_steps", "-4"]),
    "unknown_override": lambda ws: (["demo", "--out", ws.tmp / "d", "lora.rank=4"], ["'lora.rank'"]),
}

CASES = {f"{group}-{name}": build for group, table in
         (("train", TRAIN), ("export", EXPORT), ("publish", PUBLISH), ("model", MODEL), ("demo", DEMO))
         for name, build in table.items()}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_is_one_line_exit_2_and_writes_nothing(case, tmp_path, data_dir, base_model, capsys, monkeypatch):
    monkeypatch.chdir(REPO)  # recipes are named relative to the repository
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1" if case == "publish-hf_hub_offline" else "0")
    if case == "publish-no_token":
        monkeypatch.setattr("huggingface_hub.get_token", lambda: None)
    ws = Workspace(tmp_path / "ws", data_dir, base_model)
    ws.tmp.mkdir()
    argv, words = CASES[case](ws)
    expect_bad_input(main, argv, capsys, words, watch=[ws.tmp, data_dir, base_model])


def test_scheduler_names_are_transformers_own():
    from transformers import SchedulerType

    from align.config import SCHEDULERS

    assert set(SCHEDULERS) == {kind.value for kind in SchedulerType}
