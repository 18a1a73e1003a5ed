"""InfoNCELoss across two real processes (accelerate + gloo on CPU), and DeepSpeed on CPU.

Slow: each test launches `accelerate launch` with two processes (~20 s each on 2 cores; the
first DeepSpeed run on a machine also compiles a shared-memory op, ~60-170 s, cached in
~/.cache/torch_extensions afterwards).
"""
import pytest
import torch

from tests.align.dist_scripts.ds_smoke import reference_params
from tests.align.dist_scripts.loss_case import CASES, Model, make_batch, run
from tests.helpers_dist import launch_two_procs, parse_results

pytestmark = pytest.mark.slow
SCRIPTS = "tests/align/dist_scripts"
W = 2
TOL = 1e-9  # float64 throughout; the observed error is ~1e-15


@pytest.fixture(scope="module")
def dist_cases():
    """Run every loss case once in two processes; {case: [rank0 result, rank1 result]}."""
    _, out, _ = launch_two_procs(f"{SCRIPTS}/dist_loss.py", timeout=300)
    ranks = parse_results(out)
    assert [r["rank"] for r in ranks] == [0, 1] and all(r["world_size"] == W for r in ranks)
    return {name: [r["cases"][name] for r in ranks] for name in CASES}


def single_process_reference():
    return run(Model(), *make_batch())


@pytest.mark.timeout(360)
def test_cpu_2proc_config_starts_two_gloo_processes():
    _, out, _ = launch_two_procs(f"{SCRIPTS}/check_world.py", timeout=300)
    rows = parse_results(out)
    assert [r["rank"] for r in rows] == [0, 1]
    assert {r["world_size"] for r in rows} == {2}
    assert {r["backend"] for r in rows} == {"gloo"}
    assert rows[0]["pid"] != rows[1]["pid"]


@pytest.mark.timeout(360)
@pytest.mark.parametrize("case", ["with_grad_local", "with_grad_global", "with_grad_unequal"])
def test_gather_with_grad_matches_one_process_on_the_concatenated_batch(dist_cases, case):
    ref = single_process_reference()
    r0, r1 = dist_cases[case]
    # The mean of the rank losses is the global loss (the documented scaling convention) ...
    assert (r0["loss"] + r1["loss"]) / W == pytest.approx(ref["loss"], abs=TOL)
    assert r0["accuracy"] == pytest.approx(ref["accuracy"], abs=TOL)
    assert r1["accuracy"] == pytest.approx(ref["accuracy"], abs=TOL)
    # ... each rank's input gradient is W x the global one (DDP divides by W) ...
    for key in ("grad_xa", "grad_xp"):
        gathered = torch.tensor(r0[key] + r1[key], dtype=torch.float64)
        torch.testing.assert_close(gathered / W, torch.tensor(ref[key], dtype=torch.float64), rtol=0, atol=TOL)
    # ... so after DDP's averaging every parameter gradient equals the single-process one.
    for r in (r0, r1):
        torch.testing.assert_close(torch.tensor(r["grad_weight"]), torch.tensor(ref["grad_weight"]),
                                   rtol=0, atol=TOL)
        assert r["grad_log_scale"] == pytest.approx(ref["grad_log_scale"], abs=TOL)


@pytest.mark.timeout(360)
def test_gather_without_grad_gives_a_different_gradient(dist_cases):
    ref = single_process_reference()
    r0, r1 = dist_cases["no_grad_local"]
    # Same loss value: only the gradient path differs.
    assert (r0["loss"] + r1["loss"]) / W == pytest.approx(ref["loss"], abs=TOL)
    gathered = torch.tensor(r0["grad_xa"] + r1["grad_xa"], dtype=torch.float64) / W
    assert (gathered - torch.tensor(ref["grad_xa"], dtype=torch.float64)).abs().max() > 1e-3
    assert (torch.tensor(r0["grad_weight"]) - torch.tensor(ref["grad_weight"])).abs().max() > 1e-3


@pytest.mark.timeout(600)
@pytest.mark.parametrize("config,stage", [("deepspeed_zero2_cpu", 2), ("deepspeed_zero3_cpu", 3)])
def test_deepspeed_on_cpu_takes_two_steps_like_one_process(config, stage):
    _, out, _ = launch_two_procs(f"{SCRIPTS}/ds_smoke.py", config=config, timeout=540)
    rows = parse_results(out)
    assert [r["rank"] for r in rows] == [0, 1]
    assert {(r["world_size"], r["backend"], r["zero_stage"]) for r in rows} == {(2, "gloo", stage)}
    assert all(len(r["losses"]) == 2 for r in rows)
    ref = torch.tensor(sum(reference_params(), []), dtype=torch.float64)
    for r in rows:
        got = torch.tensor(sum(r["params"], []), dtype=torch.float64)
        # float32 training: the same arithmetic in a different order, ~1e-8 observed.
        torch.testing.assert_close(got, ref, rtol=0, atol=1e-5)
    assert rows[0]["params"] == rows[1]["params"]  # identical on both ranks, bit for bit
