"""Test-only: with ``LIS_ALIGN_WRITE_SPY=DIR`` set, every torchrun worker records what it writes
under DIR (tests/align/dist_scripts/write_spy.py) and prints it at exit as one line
``WRITES {"rank": ..., "machine_rank": ..., "writes": [...]}``.

Put this folder first on PYTHONPATH to spy on a command that cannot be edited (``lis-align
train``); launcher processes (no ``LOCAL_RANK``) are left alone.
"""
import os

if os.environ.get("LIS_ALIGN_WRITE_SPY") and "LOCAL_RANK" in os.environ:
    import atexit
    import json

    from tests.align.dist_scripts.write_spy import install  # the launcher's PYTHONPATH has the repository root

    _writes = install(os.environ["LIS_ALIGN_WRITE_SPY"])

    @atexit.register
    def _report():
        print("WRITES " + json.dumps({"rank": int(os.environ.get("RANK", -1)),
                                      "machine_rank": int(os.environ.get("GROUP_RANK", -1)),
                                      "writes": sorted(set(_writes))}), flush=True)
