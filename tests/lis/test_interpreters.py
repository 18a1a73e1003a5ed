"""Jobs in fresh interpreters: results in the order of the jobs, failures named, and safe to
start from an unguarded script with torch's threads running (a spawn or forkserver pool starts
such a script again in every worker, which starts the pool again: it never finishes)."""
from __future__ import annotations

import math
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from lis.interpreters import run_in_interpreters

ROOT = Path(__file__).resolve().parents[2]


def test_results_come_back_in_the_order_of_the_jobs():
    assert run_in_interpreters(math.sqrt, [1.0, 4.0, 9.0, 16.0, 25.0], workers=2) == [1.0, 2.0, 3.0, 4.0, 5.0]


def test_a_failing_worker_is_named_with_its_last_error_line():
    with pytest.raises(RuntimeError, match="math domain error"):
        run_in_interpreters(math.sqrt, [4.0, -1.0], workers=2)


def test_an_unguarded_script_with_torch_threads_running_fits_tables_in_workers(tmp_path):
    script = tmp_path / "unguarded.py"
    script.write_text(textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(ROOT)!r})
        import torch
        from lis import oracle
        from tests.lis.test_oracle import clustered_pairs
        x = torch.randn(256, 256)
        for _ in range(5):
            x = torch.tanh(x @ x)                      # torch's intra-op thread pool is started
        jobs = [dict(pairs=clustered_pairs(seed=s), dim=8, steps=50, seed=s) for s in range(2)]
        print("tables", len(oracle.fit_in_processes(jobs, workers=2)))
    """))
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "tables 2" in done.stdout
