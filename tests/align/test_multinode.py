"""Training on two machines, on one computer: two launches meeting at 127.0.0.1 over gloo.

Each "machine" is its own ``accelerate launch --num_machines 2 --machine_rank R
--main_process_ip 127.0.0.1`` (its own torchrun agent, one process), the command a user runs on
each host. Two ways in: plain ``accelerate launch`` of a test script (DDP), and our launcher
``lis-align train ... --accelerate-config deepspeed_zero2_cpu --num-machines 2 --machine-rank
R ...`` (ZeRO-2). Both train the tiny recipe with LIS early stopping (it stops at step 4 of 20).

Checked: both machines finish at the same step, stopped by early stopping; the trainable
parameters are identical on both after training; the run folder is written by machine 0 alone
(every file write of every rank is recorded, see dist_scripts/write_spy.py: machine 1 writes only
its own per-rank state, RNG state and, under ZeRO-2, its optimizer shard). Every launch is bounded
(launch_machines kills both process groups on time-out or when one machine fails).

Not covered: NCCL and real networks between hosts, SLURM, a run folder that is not shared by
the machines (see README, "Multi-node").
"""
from __future__ import annotations

import json
import os
import sys

import pytest
import torch

from tests.align.multinode_helpers import (MAIN_IP, accelerate_argv, early_stopping_overrides, free_port,
                                           launch_machines)
from tests.helpers_dist import REPO_ROOT, parse_results

pytestmark = pytest.mark.slow

SCRIPT = "tests/align/dist_scripts/multinode_run.py"
SPY_SITE = REPO_ROOT / "tests" / "align" / "dist_scripts" / "spy_site"


def _per_rank_state(steps, shard=False):
    """What machine 1 (rank 1) writes into a shared run folder: its own state in each checkpoint."""
    files = {f"_open_zipfile_writer checkpoint-{s}/rng_state_1.pth" for s in steps}
    if shard:
        files |= {f"_open_zipfile_writer checkpoint-{s}/global_step{s}/zero_pp_rank_1_mp_rank_00_optim_states.pt"
                  for s in steps}
    return files


def _wrote_the_run(writes) -> bool:
    """True when these writes include run.json, the best/ folder and the LIS log (the spy sees them)."""
    paths = {w.split(" ", 1)[1] for w in writes}
    return {"run.json", "evals.jsonl"} <= paths and any(p == "best" or p.startswith("best") for p in paths)


def _check_run_dir(out):
    run = json.loads((out / "run.json").read_text())
    assert run["global_step"] == 4 and run["best_step"] in (2, 4)
    assert [json.loads(line)["step"] for line in (out / "evals.jsonl").read_text().splitlines()] == [0, 2, 4]
    for name in ("best/adapter_model.safetensors", "best/embeddings.safetensors", "lis_report.json",
                 "lis_report.md", "lis_curve.png", "checkpoint-2/trainer_state.json", "checkpoint-4/trainer_state.json"):
        assert (out / name).is_file(), name
    return run


@pytest.mark.timeout(480)
def test_two_machines_through_accelerate_launch_train_alike_stop_together_and_machine_0_writes(
        data_dir, base_model, tmp_path):
    out = tmp_path / "run"
    port = free_port()
    argvs = [accelerate_argv("cpu_2proc", [SCRIPT, data_dir, base_model, out], machine_rank=r, port=port)
             for r in (0, 1)]
    runs = launch_machines(argvs, timeout=420)
    rows = parse_results(runs[0][1] + runs[1][1])  # each machine prints its own rank's line
    assert [(r["rank"], r["machine_rank"], r["local_rank"], r["world_size"]) for r in rows] == [(0, 0, 0, 2), (1, 1, 0, 2)]
    main, other = rows
    assert main["n_trainable"] == other["n_trainable"] > 0 and main["params"] == other["params"]
    for r in rows:  # early stopping on LIS ended both machines at the second evaluation
        assert r["global_step"] == 4 < r["max_steps"] and r["should_training_stop"] and r["history_steps"] == [0, 2, 4]
    assert main["best_global_step"] == other["best_global_step"] == main["result_best_step"]
    assert set(other["writes"]) == _per_rank_state((2, 4))
    assert _wrote_the_run(main["writes"]) and not _wrote_the_run(other["writes"])
    _check_run_dir(out)


def _train_command(data_dir, base_model, out, machine_rank, port):
    return [sys.executable, "-m", "align.cli", "train", "recipes/configs/tiny_cpu.yaml",
            *early_stopping_overrides(data_dir, base_model, out), "--accelerate-config", "deepspeed_zero2_cpu",
            "--num-machines", "2", "--machine-rank", str(machine_rank), "--main-process-ip", MAIN_IP,
            "--main-process-port", str(port)]


@pytest.mark.timeout(480)
def test_two_machines_through_lis_align_train_under_zero2(data_dir, base_model, tmp_path):
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    out = tmp_path / "run"
    port = free_port()
    # The spy (a sitecustomize on PYTHONPATH) records what each torchrun worker writes under out.
    env = {"LIS_ALIGN_WRITE_SPY": out,
           "PYTHONPATH": os.pathsep.join([str(SPY_SITE), str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])}
    runs = launch_machines([_train_command(data_dir, base_model, out, r, port) for r in (0, 1)], timeout=420, env=env)
    done = [[line for line in stdout.splitlines() if line.startswith("TRAINING DONE ")] for _, stdout, _ in runs]
    assert len(done[0]) == 1 and done[1] == []  # the result is reported by the main machine only
    assert json.loads(done[0][0][len("TRAINING DONE "):])["global_step"] == 4
    writes = [json.loads(line[len("WRITES "):]) for _, stdout, _ in runs for line in stdout.splitlines()
              if line.startswith("WRITES ")]
    assert sorted((w["rank"], w["machine_rank"]) for w in writes) == [(0, 0), (1, 1)]
    by_rank = {w["rank"]: set(w["writes"]) for w in writes}
    assert by_rank[1] == _per_rank_state((2, 4), shard=True)
    assert _wrote_the_run(by_rank[0])
    run = _check_run_dir(out)
    assert run["recipe"]["training"]["max_steps"] == 20
    # Both machines hold the same parameters: machine 1's optimizer shard (its fp32 master
    # partition) and machine 0's, merged by DeepSpeed's own zero_to_fp32, equal the module
    # weights machine 0 saved at the last step.
    last = out / "checkpoint-4"
    merged = get_fp32_state_dict_from_zero_checkpoint(str(last))
    module = torch.load(last / "global_step4" / "mp_rank_00_model_states.pt", map_location="cpu",
                        weights_only=False)["module"]
    assert merged.keys() == module.keys() and len(module) > 0
    assert all(torch.equal(merged[k], module[k]) for k in module)
