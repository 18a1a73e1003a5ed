"""Two-process CPU training through accelerate launch: DDP, DeepSpeed ZeRO-2 and ZeRO-3.

Each run trains the tiny Qwen2-VL recipe for 4 steps on 2 ranks (gloo), saving at steps 2 and
4, and checks that the trainable parameters are identical on both ranks afterwards and that
the adapter and head saved in RUN_DIR/best equal the live (under ZeRO-3: gathered) parameters
exactly; a ZeRO-3 save that wrote empty shards instead of real weights fails both checks. (The
loss and its gradient against a single process are tested in test_distributed_loss.py.)

Under DeepSpeed the same runs then serve two more tests: the engine checkpoint holds no frozen
base weight (the files are read back), and a run resumed from checkpoint-2 ends with the same
checkpoint-4 adapter, bit for bit, as the uninterrupted run.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.helpers_dist import launch_two_procs, parse_results

pytestmark = pytest.mark.slow

SCRIPT = "tests/align/dist_scripts/train_run.py"
# 4 steps, checkpoints at 2 and 4 (kept), so a run can resume from the middle.
STEPS = ["training.max_steps=4", "training.eval_steps=2", "training.save_steps=2", "training.save_total_limit=null"]


@pytest.fixture(scope="module")
def inputs(data_dir, base_model):  # the session's tiny data dir and Qwen2-VL (tests/align/conftest.py)
    return data_dir, base_model


@pytest.fixture(scope="module")
def runs(inputs, tmp_path_factory):
    """config -> (run dir, RESULT rows): one uninterrupted run per config, shared by the tests."""
    done = {}

    def run(config):
        if config not in done:
            out = tmp_path_factory.mktemp(config) / "run"
            _, stdout, _ = launch_two_procs(SCRIPT, [*inputs, out, *STEPS], config=config, timeout=400)
            done[config] = out, parse_results(stdout)
        return done[config]

    return run


@pytest.mark.timeout(420)
@pytest.mark.parametrize("config", ["cpu_2proc", "deepspeed_zero2_cpu", "deepspeed_zero3_cpu"])
def test_two_ranks_train_to_identical_parameters_and_save_the_real_adapter(config, runs):
    out, rows = runs(config)
    assert [r["rank"] for r in rows] == [0, 1] and all(r["world_size"] == 2 for r in rows)
    assert all(r["deepspeed"] == config.startswith("deepspeed") for r in rows)
    assert all(r["global_step"] == 4 for r in rows)
    assert rows[0]["param_sums"] == rows[1]["param_sums"] and rows[0]["params"] == rows[1]["params"]
    main = rows[0]
    assert main["adapter_same_keys"] and main["adapter_keys"] > 0 and main["adapter_numel"] > 0
    assert main["adapter_max_diff"] == 0.0 and main["head_max_diff"] == 0.0
    assert (out / "best" / "embeddings.safetensors").is_file()


# ----------------------------------------------------------------------------- DeepSpeed checkpoints
def _tensors(obj, found):
    """Every tensor inside a loaded checkpoint object (dicts, lists, tuples, nested)."""
    if isinstance(obj, torch.Tensor):
        found.append(obj)
    elif isinstance(obj, dict):
        for v in obj.values():
            _tensors(v, found)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            _tensors(v, found)
    return found


def _stored(checkpoint: Path) -> dict[str, object]:
    """file name (relative) -> loaded content, for every weight file of a checkpoint folder."""
    from safetensors.torch import load_file

    files = {}
    for path in sorted(checkpoint.rglob("*")):
        if path.suffix == ".safetensors":
            files[str(path.relative_to(checkpoint))] = load_file(str(path))
        elif path.suffix in (".pt", ".pth", ".bin"):
            files[str(path.relative_to(checkpoint))] = torch.load(path, map_location="cpu", weights_only=False)
    return files


@pytest.fixture(scope="module")
def model_parameters(inputs):
    """(trainable names and numel, frozen tensors by name) of the tiny recipe's AlignmentModel."""
    from align.alignment_model import build_alignment_model
    from tests.align.train_helpers import recipe

    data, base = inputs
    model, _, _ = build_alignment_model(recipe(data, base, "unused"), str(base))
    trainable = {n: p.numel() for n, p in model.named_parameters() if p.requires_grad}
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    return trainable, frozen


@pytest.mark.timeout(420)
@pytest.mark.parametrize("config", ["deepspeed_zero2_cpu", "deepspeed_zero3_cpu"])
def test_deepspeed_checkpoint_holds_trainable_state_and_no_frozen_base_weight(config, runs, model_parameters):
    out, _ = runs(config)
    trainable, frozen = model_parameters
    checkpoint = out / "checkpoint-2"
    files = _stored(checkpoint)
    engine = {name: c for name, c in files.items() if name.startswith("global_step2/")}
    model_states = [c for name, c in engine.items() if name.endswith("model_states.pt")]
    assert model_states and any(name.endswith("optim_states.pt") for name in engine)
    for states in model_states:
        assert not states.get("frozen_param_fragments"), "frozen weights saved as ZeRO fragments"
        assert not set(states["module"]) & set(frozen), "frozen parameters in the module state"
        # What the optimizer owns (and its state covers) is exactly the trainable parameters.
        assert {n for group in states["param_shapes"] for n in group} == set(trainable)
    # No frozen base weight anywhere, under any name: compare values (weight matrices, not
    # norms of ones that a buffer might equal by chance).
    big_frozen = [t for t in frozen.values() if t.numel() >= 1000]
    assert big_frozen
    for name, content in files.items():
        for t in _tensors(content, []):
            for f in big_frozen:
                assert not (t.shape == f.shape and torch.equal(t, f)), f"a frozen base weight in {name}"
    # Engine files: trainable parameters + fp32 master copy + two Adam moments, nothing the size
    # of the backbone (the tiny model's frozen part alone is ~2.4x its trainable part).
    stored = sum(t.numel() for c in engine.values() for t in _tensors(c, []))
    assert sum(trainable.values()) <= stored <= 4.2 * sum(trainable.values())


@pytest.mark.timeout(420)
@pytest.mark.parametrize("config", ["deepspeed_zero2_cpu", "deepspeed_zero3_cpu"])
def test_deepspeed_resume_from_a_trainable_only_checkpoint_ends_with_the_same_adapter(config, runs, inputs, tmp_path):
    from safetensors.torch import load_file

    straight, _ = runs(config)
    resumed = tmp_path / "resumed"
    _, stdout, _ = launch_two_procs(SCRIPT, [*inputs, resumed, *STEPS,
                                             f"training.resume_from_checkpoint={straight / 'checkpoint-2'}"],
                                    config=config, timeout=400)
    assert all(r["global_step"] == 4 for r in parse_results(stdout))
    assert not (resumed / "checkpoint-2").exists()  # it did not start over
    for name in ("adapter_model.safetensors", "projection_head.safetensors", "contrastive_loss.safetensors"):
        a, b = load_file(str(straight / "checkpoint-4" / name)), load_file(str(resumed / "checkpoint-4" / name))
        assert a.keys() == b.keys()
        for key in a:  # bitwise: gloo on the CPU is deterministic, and every state is restored
            assert torch.equal(a[key], b[key]), f"{name}:{key}"
