"""Start one ``accelerate launch`` per "machine" on this computer, meeting at 127.0.0.1 (gloo).

A two-machine job run on loopback: each machine is its own launcher process (its own torchrun
agent) with ``--num_machines 2 --machine_rank R --main_process_ip 127.0.0.1``, one process
each, exactly the command a user runs on each host of a cluster. Used by
tests/align/test_multinode.py:

    port = free_port()
    runs = launch_machines([argv_for(0, port), argv_for(1, port)], timeout=200)
    # runs[r] = (returncode, stdout, stderr) of machine r

Every machine runs in its own process group (killed as a whole on time-out); stdout/stderr go
to files, not pipes, so a chatty machine cannot block on a full pipe while the test waits on
the other. When one machine fails, the others get ``grace`` seconds to fail too (a peer that
lost its partner waits in a collective until gloo's own time-out, far longer than a test).
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.helpers_dist import _INHERITED, REPO_ROOT, DistLaunchError, _tail, config_path, free_port

__all__ = ["MAIN_IP", "accelerate_argv", "child_env", "early_stopping_overrides", "free_port", "launch_machines"]

MAIN_IP = "127.0.0.1"


def child_env(extra: dict | None = None) -> dict:
    """The environment of a launched machine: no launcher variables inherited, one thread per
    process (two machines share 2 cores), the repository root on PYTHONPATH."""
    env = {k: v for k, v in os.environ.items() if k not in _INHERITED}
    env.update({"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1",
                "TOKENIZERS_PARALLELISM": "false",
                "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))})
    env.update({k: str(v) for k, v in (extra or {}).items()})
    return env


def accelerate_argv(config, script_and_args, machine_rank: int, port: int, num_machines: int = 2) -> list[str]:
    """``accelerate launch`` for one machine of a ``num_machines`` job with one process per machine."""
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config_path(config)),
            "--num_machines", str(num_machines), "--num_processes", str(num_machines),
            "--machine_rank", str(machine_rank), "--main_process_ip", MAIN_IP, "--main_process_port", str(port),
            *map(str, script_and_args)]


def launch_machines(argvs: list[list[str]], timeout: float = 300.0, env: dict | None = None,
                    grace: float = 30.0) -> list[tuple[int, str, str]]:
    """Run one command per machine at once; return ``[(returncode, stdout, stderr), ...]`` in order.

    Raises DistLaunchError (with every machine's command and output tails) when a machine exits
    non-zero or when the machines do not all finish within ``timeout`` seconds; every process
    group is killed before it raises, so no worker outlives the test.
    """
    child = child_env(env)
    with tempfile.TemporaryDirectory(prefix="machines_") as logs:
        procs, files = [], []
        for rank, argv in enumerate(argvs):
            out = open(Path(logs) / f"m{rank}.out", "w+")
            err = open(Path(logs) / f"m{rank}.err", "w+")
            files.append((out, err))
            procs.append(subprocess.Popen([str(a) for a in argv], cwd=REPO_ROOT, env=child, stdout=out, stderr=err,
                                          text=True, start_new_session=True))
        deadline = time.monotonic() + timeout
        stop_at, why = deadline, None
        while None in [p.poll() for p in procs]:  # a list: poll every machine, not up to the first live one
            now = time.monotonic()
            if any(p.returncode not in (None, 0) for p in procs):
                stop_at = min(stop_at, now + grace)  # the others lost their partner: kill them soon
            if now > stop_at:
                if stop_at == deadline:
                    why = f"timed out after {timeout:.0f} s"
                break
            time.sleep(0.2)
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
        results = []
        for p, (out, err) in zip(procs, files):
            out.seek(0)
            err.seek(0)
            results.append((p.returncode, out.read(), err.read()))
            out.close()
            err.close()
    if why is None and any(rc != 0 for rc, _, _ in results):
        why = "exit status " + ", ".join(f"machine {r}: {rc}" for r, (rc, _, _) in enumerate(results))
        why += " (-9: killed, its partner had failed)" if any(rc == -signal.SIGKILL for rc, _, _ in results) else ""
    if why is not None:
        report = [why]
        for rank, (argv, (rc, out, err)) in enumerate(zip(argvs, results)):
            report += [f"=== machine {rank} (exit {rc}): {' '.join(map(str, argv))}",
                       f"--- stderr tail ---\n{_tail(err)}", f"--- stdout tail ---\n{_tail(out, 10)}"]
        raise DistLaunchError("\n".join(report))
    return results


def early_stopping_overrides(data_dir, base_model, out_dir) -> list[str]:
    """The tiny recipe's overrides for the multi-node runs: callback_run.py's LIS set-up (evaluate
    every 2 steps, patience 1, a min_delta no gain reaches), so early stopping on LIS ends the
    run at step 4 of 20 on every machine."""
    return [f"data.data_dir={data_dir}", f"model.path={base_model}", f"training.output_dir={out_dir}",
            "training.max_steps=20", "training.eval_steps=2", "training.save_steps=2", "training.logging_steps=1",
            "training.per_device_train_batch_size=8", "training.export_batch_size=32", "training.report_to=[]",
            "lis.enabled=true", "lis.early_stopping_patience=1", "lis.early_stopping_min_delta=1.0"]
