"""Suite-wide set-up. Under pytest-xdist (``make test`` runs two workers, one per core) each
worker and every process it launches uses one thread: two workers with a thread per core each
would oversubscribe the cores, which makes torch steps many times slower, not twice."""
from __future__ import annotations

import os

if os.environ.get("PYTEST_XDIST_WORKER"):
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[name] = "1"
