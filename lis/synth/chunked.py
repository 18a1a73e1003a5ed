"""Worlds too big for one process: ``scale`` independent populations of users, one chunk at a time.

``simulate_chunked(preset, seed, scale, out)`` writes the preset's catalogue once (items from
``seed``) and then, for chunk ``c`` = 0 .. scale-1, simulates the preset's users, sessions and
engagements with their own streams (seed ``seed * 100_003 + c + 1``) against the same items,
and writes them as ``log/part-<c>.parquet`` (each file in time order, ids prefixed ``c<c>-`` so
chunks never share a user or session). Memory stays that of one chunk (the bench preset: ~1.16M
impressions a chunk), so a 64-chunk world of ~74M impressions fits a small machine; the
Spark engine reads ``log/`` as one dataset. The whole folder appears at once (written beside,
then renamed). No truth files: this is a world for measuring speed, not validity.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from lis.atomic import atomic_path, write_json
from lis.synth.config import resolve
from lis.synth.output import _check_target, _write_catalogue
from lis.synth.world import make_items, simulate_log, streams


def simulate_chunked(preset, seed: int, scale: int, out_dir, progress=None) -> dict:
    """Write the catalogue and ``scale`` log chunks to ``out_dir``; returns rows and seconds."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from lis.errors import ConfigError

    if isinstance(scale, bool) or not isinstance(scale, int) or scale < 1:
        raise ConfigError(f"--scale must be an integer >= 1; got {scale!r}.")
    config = resolve(preset)
    out = Path(out_dir)
    _check_target(out)
    started, rows = time.perf_counter(), 0
    with atomic_path(out) as tmp:
        tmp.mkdir()
        (tmp / "log").mkdir()
        rngs = streams(seed)
        items = make_items(config, rngs["items"])
        _write_catalogue(tmp, config, items, rngs, progress=False)
        item_ids = np.array([f"i{k}" for k in range(config.n_items)], dtype=object)
        for c in range(scale):
            log = simulate_log(config, items, streams(seed * 100_003 + c + 1))
            user_ids = np.array([f"c{c}-u{k}" for k in range(config.n_users)], dtype=object)
            session_ids = np.array([f"c{c}-s{k}" for k in range(config.n_sessions)], dtype=object)
            table = pa.table({
                "user_id": pa.array(user_ids[log.user], pa.string()),
                "item_id": pa.array(item_ids[log.item], pa.string()),
                "timestamp": pa.array(log.timestamp, pa.int64()),
                "label": pa.array(log.label, pa.int8()),
                "session_id": pa.array(session_ids[log.session], pa.string()),
            })
            pq.write_table(table, tmp / "log" / f"part-{c:05d}.parquet")
            rows += len(log.user)
            del log, table
            if progress:
                progress(f"chunk {c + 1}/{scale}: {rows:,} impressions")
        summary = {"preset": config.name, "seed": int(seed), "scale": int(scale), "impressions": rows,
                   "seconds": round(time.perf_counter() - started, 1)}
        write_json(tmp / "synth.json", {"generator": "lis.synth.chunked", **summary})
    return summary
