"""Jobs in fresh Python interpreters: parallelism that is safe to start from any process.

The usual pools each fail somewhere our callers live. A forked child copies every lock that
the parent's other threads held at the fork (progress bars, logging, OpenMP pools, a training
loop's helpers), and a child that takes one waits forever. The ``spawn`` and ``forkserver``
methods re-import the caller's main module, which a script without an ``if __name__ ==
"__main__"`` guard cannot survive (it starts the pool again, recursively). A fresh interpreter
(``python -m lis.interpreters JOBS RESULTS``) has neither problem; it costs one interpreter
start per worker (a few seconds with torch) and a pickle of each job and result.
"""
from __future__ import annotations

import os
import pickle
import subprocess
import sys
import tempfile
from pathlib import Path


def run_in_interpreters(function, jobs: list, workers: int) -> list:
    """``[function(job) for job in jobs]`` in ``workers`` child interpreters (jobs dealt round
    robin); ``function`` must be importable by name. A child that fails raises RuntimeError
    with the last line it wrote to stderr."""
    package_root = str(Path(__file__).resolve().parents[1])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")])))
    results = [None] * len(jobs)
    with tempfile.TemporaryDirectory(prefix="lis-jobs-") as folder:
        children = []
        try:
            for worker in range(workers):
                share = list(range(worker, len(jobs), workers))
                source, target = Path(folder) / f"jobs-{worker}.pkl", Path(folder) / f"results-{worker}.pkl"
                source.write_bytes(pickle.dumps((function, [jobs[i] for i in share]), protocol=pickle.HIGHEST_PROTOCOL))
                command = [sys.executable, "-m", "lis.interpreters", str(source), str(target)]
                children.append((share, target, subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True)))
            for share, target, child in children:
                _, errors = child.communicate()
                if child.returncode != 0:
                    last = (errors or "").strip().splitlines()[-1:] or ["no message"]
                    raise RuntimeError(f"a worker process exited with status {child.returncode}: {last[0]}")
                for index, result in zip(share, pickle.loads(target.read_bytes())):
                    results[index] = result
        finally:
            for _, _, child in children:
                if child.poll() is None:
                    child.kill()
                    child.wait()
    return results


def main(argv: list[str]) -> int:
    source, target = argv
    function, jobs = pickle.loads(Path(source).read_bytes())
    results = [function(job) for job in jobs]
    partial = Path(target + ".tmp")
    partial.write_bytes(pickle.dumps(results, protocol=pickle.HIGHEST_PROTOCOL))
    os.replace(partial, target)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
