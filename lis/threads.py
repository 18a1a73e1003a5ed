"""One torch thread for the evaluator's small models.

The evaluator's torch work (ranker, oracle tables, feature batches) is made of small ops:
intra-op threads only add synchronisation, and on a busy 2-core machine OpenMP spin-waiting
made a 1M-row ranker fit 7x slower (57 s vs 8 s). One thread also makes results independent
of the machine's core count.
"""
from __future__ import annotations

import contextlib

import torch


@contextlib.contextmanager
def one_torch_thread():
    """Run the body with ``torch.set_num_threads(1)``; restore the previous count after."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
