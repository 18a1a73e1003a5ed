"""Run a script under `accelerate launch` with two CPU processes, for tests.

Use from any test (tests are run as ``python -m pytest`` from the repository root, which puts
the root on sys.path, so ``tests`` imports as a namespace package):

    from tests.helpers_dist import launch_two_procs, parse_results

    rc, out, err = launch_two_procs("tests/align/dist_scripts/check_world.py", ["--flag", "1"])
    rows = parse_results(out)  # the JSON objects the script printed as "RESULT {...}" lines

and in the launched script, ``print_result({"rank": ..., ...})`` on every rank (it prints the
ranks one after the other, so long lines from two processes do not interleave).

``launch_two_procs`` raises ``DistLaunchError`` (with the command and the tail of stderr) when
the launch fails or times out, so a test only checks what the script computed. The launched
script must build ``Accelerator(cpu=True)`` (see accelerate_configs/cpu_2proc.yaml for why),
and for DeepSpeed on CPU also ``InitProcessGroupKwargs(backend="gloo")``.

Each call takes a free port (several tests or sessions may launch at once), sets
OMP_NUM_THREADS=1 (two processes share a 2-core machine), and kills the whole process group on
timeout so no orphaned worker keeps a port or a core.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = REPO_ROOT / "accelerate_configs"

# Launcher variables a parent run (CI under torchrun, a notebook) may have left behind; the
# child launcher must set its own.
_INHERITED = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
              "GROUP_RANK", "ROLE_RANK", "TORCHELASTIC_RUN_ID", "ACCELERATE_USE_CPU")


class DistLaunchError(RuntimeError):
    """The launched processes failed (non-zero exit) or did not finish within the timeout."""


def free_port() -> int:
    """A TCP port free right now on localhost (another process could take it before use)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def config_path(config: str | os.PathLike) -> Path:
    """``"cpu_2proc"`` -> accelerate_configs/cpu_2proc.yaml; a path is returned as is."""
    p = Path(config)
    if p.suffix in (".yaml", ".yml") or p.exists():
        return p if p.is_absolute() else REPO_ROOT / p
    return CONFIG_DIR / f"{config}.yaml"


def launch_two_procs(script, args=(), config="cpu_2proc", timeout=300.0, env=None, num_processes=None):
    """Run ``accelerate launch --config_file CONFIG SCRIPT ARGS``; return (rc, stdout, stderr).

    Args:
        script: path of the script (relative to the repository root or absolute).
        args: extra command-line arguments for the script (converted with str()).
        config: a config name in accelerate_configs/ (``cpu_2proc``, ``deepspeed_zero2_cpu``,
            ``deepspeed_zero3_cpu``) or a yaml path.
        timeout: seconds before the process group is killed and DistLaunchError raised.
        env: extra environment variables (override the defaults set here).
        num_processes: override the config's process count (default: the config's, 2).
    Raises DistLaunchError on a non-zero exit or a timeout; rc is therefore always 0.
    """
    port = free_port()
    cmd = [sys.executable, "-m", "accelerate.commands.launch",
           "--config_file", str(config_path(config)), "--main_process_port", str(port)]
    if num_processes is not None:
        cmd += ["--num_processes", str(num_processes)]
    cmd += [str(script), *map(str, args)]

    child_env = {k: v for k, v in os.environ.items() if k not in _INHERITED}
    child_env.update({
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "PYTHONUNBUFFERED": "1",
        "TOKENIZERS_PARALLELISM": "false",
        # The scripts import align/lis (installed editable) and sometimes tests.*.
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])),
    })
    child_env.update({k: str(v) for k, v in (env or {}).items()})

    # A new session makes the launcher and its workers one process group we can kill at once.
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=child_env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        raise DistLaunchError(f"timed out after {timeout:.0f} s: {' '.join(cmd)}\n"
                              f"--- stderr tail ---\n{_tail(err)}\n--- stdout tail ---\n{_tail(out)}")
    if proc.returncode != 0:
        raise DistLaunchError(f"exit status {proc.returncode}: {' '.join(cmd)}\n"
                              f"--- stderr tail ---\n{_tail(err)}\n--- stdout tail ---\n{_tail(out)}")
    return proc.returncode, out, err


def print_result(obj: dict, tag: str = "RESULT") -> None:
    """Print ``TAG {json}`` from every rank, one rank at a time (call it on every rank).

    Lines longer than the pipe's atomic write size (4 KiB) from two processes sharing one
    stdout interleave mid-line and no longer parse; a barrier between ranks keeps them whole.
    Launched scripts import it as ``from tests.helpers_dist import print_result`` (the
    launcher puts the repository root on PYTHONPATH).
    """
    import torch.distributed as dist

    line = f"{tag} {json.dumps(obj)}"
    if not (dist.is_available() and dist.is_initialized()):
        print(line, flush=True)
        return
    for r in range(dist.get_world_size()):
        if r == dist.get_rank():
            print(line, flush=True)
        dist.barrier()


def training_outcome(result: dict, recipe) -> dict:
    """What a launched run_training script reports from every rank: where it stopped, what it
    kept as best, and the LIS callback's history as json text (NaN compares equal to NaN and
    floats bit for bit)."""
    trainer, state = result["trainer"], result["trainer"].state
    return {
        "rank": trainer.args.process_index, "world_size": trainer.args.world_size,
        "max_steps": recipe.training.max_steps, "global_step": state.global_step,
        "should_training_stop": bool(trainer.control.should_training_stop),
        "best_global_step": state.best_global_step, "best_model_checkpoint": state.best_model_checkpoint,
        "history": json.dumps(result["lis_callback"].history),
    }


def parse_results(stdout: str, tag: str = "RESULT") -> list[dict]:
    """The JSON objects printed as ``TAG {...}`` lines, sorted by their "rank" key if present."""
    rows = [json.loads(line[len(tag) + 1:]) for line in stdout.splitlines() if line.startswith(tag + " ")]
    return sorted(rows, key=lambda r: r.get("rank", 0))


def _tail(text: str, lines: int = 40) -> str:
    """The last lines, preceded by every distinct line naming an error: torchrun's failure
    summary is long enough to push a worker's actual exception out of a plain tail."""
    all_lines = (text or "").splitlines()
    errors = list(dict.fromkeys(ln for ln in all_lines if "Error" in ln and "elastic" not in ln))
    head = ["(error lines)", *errors[:10], "(last lines)"] if errors else []
    return "\n".join(head + all_lines[-lines:])
