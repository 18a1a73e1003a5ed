"""Scaling of `lis-align lis score`: the in-memory engine against the Spark engine (local mode).

Run:  .venv/bin/lis-align synth --preset bench --scale 16 --out /tmp/bench16     # the world, once
      .venv/bin/python bench/bench_spark_scaling.py --world /tmp/bench16 --sizes 1,4,16

A size of N uses the first N chunks of the world (bench preset: ~1.03M impressions each) as its
own data dir (hard links: log/ for Spark, a merged time-ordered log.parquet for the in-memory
engine, written only for the sizes it runs). Both engines score the same thing: builders
co_engagement and random, one random 64-d table (AIS), 200 bootstrap resamples, no segments.
Each run is a fresh `lis-align lis score` process; its wall time and peak resident memory are
measured by polling /proc (the driver: the Python process; the JVM that Spark's local mode runs
in, and its Python workers, are reported apart). The table gives impressions/s per core
(os.cpu_count() cores) and, from the best measured per-core rate of the Spark engine, the hours
a 1B-impression log would take on a 100-core cluster (a linear projection: shuffles and the
driver-side oracle fits do not shrink with cores, so it is a lower bound).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
LIS = [str(ROOT / ".venv" / "bin" / "lis-align"), "lis", "score"]


def size_dir(world: Path, n: int, merged: bool) -> Path:
    """``world/size-<n>``: catalogue + the first n chunks (hard links), and a merged log when asked."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    out = world / f"size-{n}"
    (out / "log").mkdir(parents=True, exist_ok=True)
    for name in ("catalogue.parquet",):
        if not (out / name).exists():
            os.link(world / name, out / name)
    parts = sorted((world / "log").glob("part-*.parquet"))[:n]
    if len(parts) < n:
        raise SystemExit(f"{world}: has {len(parts)} chunks, size {n} needs {n} (lis-align synth --scale {n})")
    for part in parts:
        if not (out / "log" / part.name).exists():
            os.link(part, out / "log" / part.name)
    if merged and not (out / "log.parquet").exists():
        table = pa.concat_tables([pq.read_table(part) for part in parts])
        order = np.argsort(table["timestamp"].to_numpy(), kind="stable")
        pq.write_table(table.take(order), out / "log.parquet.tmp")
        os.replace(out / "log.parquet.tmp", out / "log.parquet")
    return out


def random_table(world: Path) -> Path:
    import pandas as pd

    from lis.embeddings import EmbeddingTable, make_manifest, save_embeddings

    path = world / "random64.safetensors"
    if not path.exists():
        ids = pd.read_parquet(world / "catalogue.parquet", columns=["item_id"])["item_id"].astype(str).tolist()
        vectors = np.random.default_rng(0).standard_normal((len(ids), 64)).astype(np.float32)
        save_embeddings(path, EmbeddingTable(ids, vectors, make_manifest(64, "random")))
    return path


def measure(command: list[str], log_file: Path) -> tuple[float, float, float, int]:
    """(seconds, driver peak GiB, JVM + workers peak GiB, exit status) of one run."""
    import psutil

    started = time.perf_counter()
    with open(log_file, "w") as log:
        process = psutil.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        driver = others = 0
        while process.poll() is None:
            try:
                driver = max(driver, process.memory_info().rss)
                others = max(others, sum(child.memory_info().rss for child in process.children(recursive=True)))
            except psutil.Error:
                pass
            time.sleep(0.5)
    return time.perf_counter() - started, driver / 2**30, others / 2**30, process.returncode


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--world", required=True, type=Path, help="a world from lis-align synth --scale N")
    parser.add_argument("--sizes", default="1,4,16", help="chunks per size (default: %(default)s)")
    parser.add_argument("--memory-up-to", type=int, default=4, help="largest size the in-memory engine runs")
    parser.add_argument("--engines", default="memory,spark")
    parser.add_argument("--spark-conf", action="append", default=[], metavar="KEY=VALUE",
                        help="passed to every Spark run (e.g. spark.driver.memory=8g for 64M impressions)")
    args = parser.parse_args()
    table = random_table(args.world)
    cores = os.cpu_count() or 1
    rows = []
    for n in map(int, args.sizes.split(",")):
        for engine in args.engines.split(","):
            if engine == "memory" and n > args.memory_up_to:
                continue
            data = size_dir(args.world, n, merged=engine == "memory")
            out = data / f"report-{engine}.json"
            command = LIS + ["--data", str(data), "--out", str(out), "--builder", "co_engagement", "--builder",
                             "random", "--embeddings", f"random={table}", "--no-segments", "--engine", engine]
            if engine == "spark":
                command += [arg for conf in args.spark_conf for arg in ("--spark-conf", conf)]
            seconds, driver, others, status = measure(command, data / f"run-{engine}.log")
            import pyarrow.parquet as pq
            impressions = sum(pq.ParquetFile(p).metadata.num_rows for p in (data / "log").glob("*.parquet"))
            rows.append((n, engine, impressions, seconds, driver, others, status))
            print(f"size {n} {engine}: {impressions:,} impressions {seconds:.1f} s driver {driver:.2f} GiB "
                  f"JVM+workers {others:.2f} GiB exit {status}", file=sys.stderr, flush=True)
    print(f"\nmachine: {cores} cores, load average {os.getloadavg()[0]:.1f} at the end; Spark conf: "
          f"{' '.join(args.spark_conf) or 'defaults'}")
    print("| impressions | engine | wall s | driver peak GiB | JVM+workers peak GiB | impressions/s per core |")
    print("|---:|---|---:|---:|---:|---:|")
    for n, engine, impressions, seconds, driver, others, status in rows:
        rate = impressions / seconds / cores if status == 0 else float("nan")
        jvm = f"{others:.2f}" if engine == "spark" else "-"
        print(f"| {impressions / 1e6:.2f}M | {engine} | {seconds:.1f}{'' if status == 0 else ' (failed)'} | "
              f"{driver:.2f} | {jvm} | {rate:,.0f} |")
    spark = [r for r in rows if r[1] == "spark" and r[6] == 0]
    memory = {r[0]: r for r in rows if r[1] == "memory" and r[6] == 0}
    for n, _, _, seconds, *_ in spark:
        if n in memory:
            print(f"Spark / in-memory time at {memory[n][2] / 1e6:.2f}M impressions: {seconds / memory[n][3]:.2f}x")
    if spark:
        best = max(r[2] / r[3] / cores for r in spark)
        print(f"projection: 1B impressions on 100 cores at {best:,.0f} impressions/s per core: "
              f"{1e9 / (best * 100) / 3600:.2f} h (linear; a lower bound)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
