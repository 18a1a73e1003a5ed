"""Single-process training: RUN_DIR layout, logs, PEFT round trip, item cache, resume, bad inputs."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from lis.errors import DataError
from tests.align.train_helpers import FAST, recipe

REPO = Path(__file__).resolve().parents[2]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data_dir, base_model):
    from align.train import run_training

    out = tmp_path_factory.mktemp("train_run") / "run"
    result = run_training(recipe(data_dir, base_model, out))
    return out, result


def test_run_training_writes_the_run_dir_layout(trained, data_dir, base_model):
    from lis.embeddings import catalogue_hash, load_embeddings
    from lis.schemas import load_catalogue

    out, result = trained
    run = json.loads((out / "run.json").read_text())
    assert run["base_model"] == str(base_model) and run["base_model_id"] is None and run["family"] == "qwen2_vl"
    assert run["best_step"] == result["best_step"] and "eval_loss" in run["best_metric"]
    assert run["recipe"]["training"]["max_steps"] == 6
    assert run["data"]["n_pairs"] > 0 and run["data"]["n_items"] == 200 and "eval_start_unix" in run["data"]["windows"]
    best = out / "best"
    for name in ("adapter_model.safetensors", "adapter_config.json", "projection_head.safetensors",
                 "projection_head.json", "contrastive_loss.safetensors", "embeddings.safetensors", "lis_align.json"):
        assert (best / name).is_file(), name
    assert (out / "checkpoint-3" / "adapter_model.safetensors").is_file() and (out / "checkpoint-6").is_dir()
    table = load_embeddings(best / "embeddings.safetensors")
    catalogue = load_catalogue(data_dir / "catalogue.parquet")
    assert table.ids == list(catalogue["item_id"]) and table.dim == 128
    m = table.manifest
    import hashlib

    digest = hashlib.sha256((best / "adapter_model.safetensors").read_bytes()).hexdigest()
    assert digest.startswith(m["adapter_hash"]) and m["step"] == run["best_step"]
    assert m["catalogue_hash"] == catalogue_hash(catalogue)
    # trained_until = the last timestamp of the fit window, strictly before the evaluation window.
    assert m["trained_until"] == run["data"]["trained_until"] < run["data"]["windows"]["eval_start_unix"]
    # The builder of the training pairs, so the evaluator bounds the table by its own ceiling.
    assert m["builder"] == run["recipe"]["data"]["builder"] and isinstance(m["builder_options"], dict)


def test_training_logs_loss_temperature_and_accuracy(trained):
    out, result = trained
    state = json.loads((out / "checkpoint-6" / "trainer_state.json").read_text())
    logged = [e for e in state["log_history"] if "loss" in e]
    assert logged and all({"loss", "logit_scale", "temperature", "accuracy"} <= set(e) for e in logged)
    assert all(e["temperature"] == pytest.approx(1 / e["logit_scale"]) for e in logged)
    assert any("eval_accuracy" in e for e in state["log_history"])
    assert list(out.glob("runs/*/events.out.tfevents.*")), "no TensorBoard event file"


def test_saved_adapter_loads_with_plain_peft_and_reproduces_the_export(trained, data_dir, base_model):
    from peft import PeftModel

    from align.collate import batcher_for_datadir, items_from_catalogue
    from align.embedder import ItemEmbedder
    from align.models.loading import load_vlm
    from lis.datadir import load_datadir
    from lis.embeddings import load_embeddings

    out, _ = trained
    vlm, processor, family = load_vlm(str(base_model))
    model = PeftModel.from_pretrained(vlm, str(out / "best"))
    embedder = ItemEmbedder(model, family, dim=128, pooling="mean", center=True).load_head(out / "best").eval()
    datadir = load_datadir(data_dir)
    batcher = batcher_for_datadir(datadir, processor, family, max_text_tokens=48, image_size=64)
    items = items_from_catalogue(datadir)
    mine = embedder.embed_items(items, batcher, batch_size=50).numpy()
    table = load_embeddings(out / "best" / "embeddings.safetensors")
    cosine = (mine * table.vectors).sum(1) / np.linalg.norm(mine, axis=1) / np.linalg.norm(table.vectors, axis=1)
    assert cosine.min() >= 0.999


@pytest.mark.parametrize("fam", ["qwen2_vl", "llava", "idefics3"])
def test_item_cache_batches_equal_processor_batches(tiny_dirs, items, fam):
    from align.collate import ItemBatcher
    from align.item_cache import ItemCache
    from align.models.loading import load_vlm

    _, processor, family = load_vlm(str(tiny_dirs[fam]))
    batcher = ItemBatcher(processor, family, max_text_tokens=3)
    cache = ItemCache(batcher, items, chunk_size=4, progress=False)
    rows = [5, 0, 3, 3, 1]  # the last catalogue item has no image: the blank placeholder path
    expected = ItemBatcher(processor, family, max_text_tokens=3)([items[r] for r in rows])
    got = cache.collate(rows)
    assert set(got) == set(expected)
    for key in expected:
        assert torch.equal(got[key], expected[key]), key
    lengths = [len(batcher.tokenizer(it["text"], add_special_tokens=False)["input_ids"]) for it in items]
    assert cache.truncated == sum(n > 3 for n in lengths) > 0


def test_build_trainer_puts_early_stopping_after_given_callbacks(trained, data_dir, base_model, tmp_path):
    from transformers import EarlyStoppingCallback, TrainerCallback

    from align.trainer import build_trainer

    _, result = trained
    trainer = result["trainer"]

    class Marker(TrainerCallback):
        pass

    r = recipe(data_dir, base_model, tmp_path / "x", "lis.early_stopping_patience=2", "lis.enabled=true")
    new = build_trainer(r, trainer.model, trainer.train_dataset, trainer.eval_dataset, trainer.data_collator,
                        callbacks=[Marker()])
    kinds = [type(c) for c in new.callback_handler.callbacks]
    assert kinds.index(Marker) < kinds.index(EarlyStoppingCallback)
    assert new.args.metric_for_best_model == "eval_ais_auc" and new.args.greater_is_better
    plain = build_trainer(r, trainer.model, trainer.train_dataset, trainer.eval_dataset, trainer.data_collator)
    assert plain.args.metric_for_best_model == "eval_loss" and not plain.args.greater_is_better


# ----------------------------------------------------------------------------- resume
def _launch(data_dir, base_model, out, *extra):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
           "PYTHONPATH": str(REPO)}
    args = [f"data.data_dir={data_dir}", f"model.path={base_model}", f"training.output_dir={out}", *FAST,
            "training.max_steps=14", "training.save_steps=2", "training.eval_steps=2", "training.report_to=[]",
            "training.save_total_limit=null", *extra]
    return subprocess.Popen([sys.executable, "-m", "align.train", "recipes/configs/tiny_cpu.yaml", *args],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def _tensors(directory):
    from safetensors.torch import load_file

    out = {}
    for name in ("adapter_model.safetensors", "projection_head.safetensors", "contrastive_loss.safetensors"):
        out.update({f"{name}:{k}": v for k, v in load_file(str(directory / name)).items()})
    return out


@pytest.mark.slow  # three training subprocesses, ~35 s
@pytest.mark.timeout(300)
def test_resume_after_sigkill_ends_with_the_same_adapter_bitwise(data_dir, base_model, tmp_path):
    straight = _launch(data_dir, base_model, tmp_path / "straight")
    out_straight, _ = straight.communicate(timeout=240)
    assert straight.returncode == 0, out_straight[-3000:]

    killed_dir = tmp_path / "killed"
    killed = _launch(data_dir, base_model, killed_dir)
    marker = killed_dir / "checkpoint-4" / "trainer_state.json"  # written last: the checkpoint is complete
    deadline = time.time() + 200
    while not marker.exists() and killed.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    os.killpg(killed.pid, signal.SIGKILL)
    killed.communicate()
    assert killed.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    assert not (killed_dir / "checkpoint-14").exists() and not (killed_dir / "best").exists()

    resumed = _launch(data_dir, base_model, killed_dir, "training.resume_from_checkpoint=last")
    out_resumed, _ = resumed.communicate(timeout=240)
    assert resumed.returncode == 0, out_resumed[-3000:]
    a, b = _tensors(tmp_path / "straight" / "checkpoint-14"), _tensors(killed_dir / "checkpoint-14")
    assert a.keys() == b.keys()
    for key in a:  # bitwise: one process on the CPU is deterministic, and every state is restored
        assert torch.equal(a[key], b[key]), key


# ----------------------------------------------------------------------------- bad inputs
@pytest.fixture
def data_copy(data_dir, tmp_path):
    return Path(shutil.copytree(data_dir, tmp_path / "data"))


def _run(data, base_model, out, *extra):
    from align.train import run_training

    return run_training(recipe(data, base_model, out, *extra))


def test_missing_image_is_a_data_error_naming_file_and_item(data_copy, base_model, tmp_path):
    (data_copy / "images" / "i7.png").unlink()
    with pytest.raises(DataError, match=r"catalogue\.parquet.*'i7'.*images/i7\.png"):
        _run(data_copy, base_model, tmp_path / "out")


def test_corrupt_image_is_a_data_error_naming_file_and_item(data_copy, base_model, tmp_path):
    (data_copy / "images" / "i3.png").write_bytes(b"not a png at all")
    with pytest.raises(DataError, match=r"catalogue\.parquet.*'i3'.*images/i3\.png.*cannot be read"):
        _run(data_copy, base_model, tmp_path / "out")


def test_pair_with_an_unknown_item_names_the_pairs_file_and_item(data_dir, base_model, tmp_path):
    path = tmp_path / "my_pairs.parquet"
    pd.DataFrame({"anchor_id": ["i1", "nope"], "positive_id": ["i2", "i3"], "weight": [1.0, 1.0]}).to_parquet(path)
    with pytest.raises(DataError, match=r"my_pairs\.parquet.*'nope'"):
        _run(data_dir, base_model, tmp_path / "out", f"data.pairs_file={path}")


def test_zero_pairs_is_a_data_error(data_dir, base_model, tmp_path):
    path = tmp_path / "empty_pairs.parquet"
    pd.DataFrame({"anchor_id": pd.Series([], dtype=str), "positive_id": pd.Series([], dtype=str),
                  "weight": pd.Series([], dtype=float)}).to_parquet(path)
    with pytest.raises(DataError, match=r"empty_pairs\.parquet.*empty"):
        _run(data_dir, base_model, tmp_path / "out", f"data.pairs_file={path}")


def test_over_long_text_is_truncated_and_counted(data_copy, base_model, tmp_path, caplog):
    catalogue = pd.read_parquet(data_copy / "catalogue.parquet")
    catalogue.loc[[0, 5], "text"] = catalogue.loc[[0, 5], "text"] * 20
    catalogue.to_parquet(data_copy / "catalogue.parquet")
    with caplog.at_level("WARNING", logger="align.train"):
        result = _run(data_copy, base_model, tmp_path / "out", "training.max_steps=1", "data.max_text_tokens=40")
    assert result["n_truncated_texts"] == 2
    assert "2 of 200 item texts are longer than data.max_text_tokens=40" in caplog.text
    assert json.loads((tmp_path / "out" / "run.json").read_text())["data"]["n_truncated_texts"] == 2


def test_nan_loss_stops_training_and_keeps_the_last_good_checkpoint(data_dir, base_model, tmp_path):
    from align.checkpoint import adapter_is_finite
    from align.trainer import TrainingDivergedError

    out = tmp_path / "out"
    with pytest.raises(TrainingDivergedError, match=r"step 5: the loss is nan.*checkpoint-4"):
        _run(data_dir, base_model, out, "training.inject_nan_at_step=5", "training.save_steps=2",
             "training.eval_steps=2", "training.max_steps=8")
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    assert adapter_is_finite(out / "checkpoint-4") and not (out / "best").exists()


# ----------------------------------------------------------------------------- the command
def test_train_command_builds_the_accelerate_launch_line():
    from align.commands.train import launch_command

    cmd = launch_command("recipes/configs/tiny_cpu.yaml", ["training.max_steps=5"], "cpu_2proc", 2)
    assert cmd[1:4] == ["-m", "accelerate.commands.launch", "--config_file"]
    assert cmd[4].endswith("accelerate_configs/cpu_2proc.yaml") and cmd[5:7] == ["--num_processes", "2"]
    assert cmd[7:] == ["-m", "align.train", "recipes/configs/tiny_cpu.yaml", "training.max_steps=5"]


def test_train_command_passes_the_machine_flags_to_accelerate():
    from align.commands.train import launch_command

    cmd = launch_command("r.yaml", [], "cpu_2proc", 4, num_machines=2, machine_rank=1, main_process_ip="10.0.0.1",
                         main_process_port=29555)
    assert cmd[5:15] == ["--num_processes", "4", "--num_machines", "2", "--machine_rank", "1",
                         "--main_process_ip", "10.0.0.1", "--main_process_port", "29555"]
    assert cmd[15:] == ["-m", "align.train", "r.yaml"]


@pytest.mark.parametrize("flags, message", [
    (["--machine-rank", "1"], "--machine-rank: needs --accelerate-config"),
    (["--accelerate-config", "cpu_2proc", "--num-machines", "2", "--machine-rank", "2"],
     "--machine-rank: must be in 0..1 (0 is the main machine); got 2."),
    (["--accelerate-config", "cpu_2proc", "--num-machines", "0"], "--num-machines: must be at least 1; got 0."),
    (["--accelerate-config", "cpu_2proc", "--main-process-port", "70000"], "--main-process-port: must be a TCP port"),
])
def test_train_command_rejects_bad_machine_flags_in_one_line(flags, message, capsys):
    from align.cli import main

    assert main(["train", "recipes/configs/tiny_cpu.yaml", *flags]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


class _EngineDouble:
    """What load_trainable_engine_state uses of a DeepSpeed engine: load_checkpoint with a custom
    load function (the real engine is exercised by the two-rank resume tests)."""

    def __init__(self, module, saved):
        self.module, self.saved = module, saved

    def load_checkpoint(self, path, load_module_strict, load_optimizer_states, load_lr_scheduler_states, custom_load_fn):
        assert not load_module_strict and load_optimizer_states and load_lr_scheduler_states
        if self.saved is None:
            return None, None
        custom_load_fn(src=self.saved, dst=self.module)
        return path, {}


def test_trainable_engine_state_needs_every_trainable_parameter_and_no_frozen_one():
    from align.trainer import load_trainable_engine_state

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2))
    model[0].requires_grad_(False)  # the frozen "base"
    trainable = {k: torch.full_like(v, 7.0) for k, v in model.state_dict().items() if k.startswith("1.")}
    frozen_before = model[0].weight.detach().clone()
    load_trainable_engine_state(_EngineDouble(model, trainable), "ckpt")
    assert torch.equal(model[1].weight, torch.full((2, 2), 7.0)) and torch.equal(model[0].weight, frozen_before)
    with pytest.raises(DataError, match=r"ckpt: the DeepSpeed checkpoint lacks the trainable parameter '1.bias'"):
        load_trainable_engine_state(_EngineDouble(model, {"1.weight": trainable["1.weight"]}), "ckpt")
    with pytest.raises(DataError, match=r"ckpt: the DeepSpeed checkpoint holds 'extra'"):
        load_trainable_engine_state(_EngineDouble(model, {**trainable, "extra": torch.zeros(1)}), "ckpt")
    with pytest.raises(DataError, match=r"ckpt: no DeepSpeed checkpoint"):
        load_trainable_engine_state(_EngineDouble(model, None), "ckpt")


def test_train_command_reports_bad_input_in_one_line(tmp_path, capsys):
    from align.cli import main

    assert main(["train", str(tmp_path / "nope.yaml")]) == 2
    assert "nope.yaml: recipe file not found" in capsys.readouterr().err
    assert main(["train", "recipes/configs/tiny_cpu.yaml", "--accelerate-config", "nonsense"]) == 2


def test_training_done_line_is_strict_json_without_live_objects(monkeypatch, capsys):
    import align.train

    result = {"best_step": 3, "best_metric": {"eval_lis_efficiency": float("nan")}, "seconds_per_step": None,
              "trainer": object(), "lis_callback": object()}
    monkeypatch.setattr(align.train, "run_training", lambda recipe: result)
    assert align.train.main(["recipes/configs/tiny_cpu.yaml"]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("TRAINING DONE "))

    def refuse(constant):
        raise ValueError(constant)

    shown = json.loads(line[len("TRAINING DONE "):], parse_constant=refuse)
    assert shown == {"best_step": 3, "best_metric": {"eval_lis_efficiency": None}, "seconds_per_step": None}
