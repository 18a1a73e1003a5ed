"""Benchmark of embedding export: our batched exporter against a naive per-item loop.

Run:  .venv/bin/python bench/bench_export.py [--items 256 --batch-size 64 --family qwen2_vl --threads N]

Builds a tiny random VLM (``lis-align model tiny``) and a data dir of ``--items`` items with
64-px PNG images (one in ten without an image, as real catalogues have), then, in the same
process and on the same items:

* baseline: one item at a time, the processor called per item, one forward pass per item
  (what a user writes first: ``for item in items: embedder(**batcher([item]))``);
* ours: :func:`align.export.export_embeddings` with its defaults (batches of ``--batch-size``;
  on CPU no prefetch thread);
* ours, prefetch on: the next batch's images decoded and processed in a thread while the model
  runs the current one (the default on GPUs; on a 2-core CPU it competes with torch's threads);
* ours, cached inputs: the export reading an :class:`align.item_cache.ItemCache` (the trainer's
  repeated exports during training; the one-off cost of building the cache is its own row).

It checks that every variant agrees with the baseline (cosine >= 0.9999 per item) and prints
one table: size, baseline time, ours, ratio, plus the machine (cores, torch, load average).
Timings are wall-clock on a possibly shared machine: the variants run in ``--repeat``
interleaved rounds and the best time of each is kept.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import torch  # noqa: E402

from align.collate import items_from_catalogue  # noqa: E402
from align.export import export_embeddings, load_export_model  # noqa: E402
from lis.datadir import load_datadir  # noqa: E402

WORDS = ["red", "blue", "green", "black", "leather", "cotton", "steel", "wooden", "shirt", "shoes", "lamp",
         "chair", "mug", "watch", "jacket", "for", "running", "travel", "kids", "vintage", "modern", "soft"]


def make_data(root: Path, n: int, seed: int = 0) -> Path:
    """A data dir of ``n`` items (titles of 4-12 words, 64-px PNGs, 10% without image) and a tiny log."""
    import pandas as pd
    from PIL import Image

    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    rows = []
    for i in range(n):
        image = None
        if i % 10 != 9:
            image = f"images/{i}.png"
            Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(root / image)
        rows.append({"item_id": f"item{i}", "text": " ".join(rng.choice(WORDS, rng.integers(4, 13))), "image": image})
    pd.DataFrame(rows).to_parquet(root / "catalogue.parquet")
    pd.DataFrame({"user_id": ["u0"], "item_id": ["item0"], "timestamp": [0], "label": [1]}).to_parquet(
        root / "log.parquet")
    return root


def naive(embedder, batcher, items) -> np.ndarray:
    embedder.eval()
    with torch.no_grad():
        return torch.cat([embedder(**batcher([item])) for item in items]).numpy()


def best_of(repeat, fn):
    best, out = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return out, best


def min_cosine(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(((a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)).min())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--family", default="qwen2_vl", choices=("qwen2_vl", "llava", "idefics3"))
    parser.add_argument("--repeat", type=int, default=3, help="rounds; the best time of each variant is kept")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    from align.item_cache import ItemCache
    from align.models.tiny import build_tiny_vlm

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = make_data(tmp / "data", args.items)
        build_tiny_vlm(args.family, tmp / "model", catalogue=data)
        embedder, batcher = load_export_model(tmp / "model")
        items = items_from_catalogue(load_datadir(data))
        export_embeddings(embedder, batcher, items[: args.batch_size], batch_size=args.batch_size,
                          progress=False)  # warm-up: first calls allocate and fill caches

        cache, t_build = best_of(1, lambda: ItemCache(batcher, items, progress=False))
        chunks = [items[i:i + args.batch_size] for i in range(0, len(items), args.batch_size)]
        run = dict(batch_size=args.batch_size, progress=False)
        variants = {
            "naive": lambda: naive(embedder, batcher, items),
            "ours": lambda: export_embeddings(embedder, batcher, items, **run),  # on CPU: no prefetch
            "prefetch": lambda: export_embeddings(embedder, batcher, items, prefetch=True, **run),
            "cached": lambda: export_embeddings(embedder, cache, items, **run),
            # Where ours spends its time: image decoding + processor alone, batched as the exporter batches.
            "processor": lambda: [batcher(chunk) for chunk in chunks],
        }
        # Rounds interleave the variants, so a burst of load from other processes hits them alike.
        out, best = {}, {name: float("inf") for name in variants}
        for _ in range(args.repeat):
            for name, fn in variants.items():
                out[name], seconds = best_of(1, fn)
                best[name] = min(best[name], seconds)
        want, ours, prefetched, cached = out["naive"], out["ours"], out["prefetch"], out["cached"]
        t_naive, t_ours, t_prefetch, t_cached, t_proc = (best[k] for k in ("naive", "ours", "prefetch", "cached",
                                                                             "processor"))

    agree = {name: min_cosine(table.vectors, want) for name, table in
             (("ours", ours), ("prefetch", prefetched), ("cached", cached))}
    if min(agree.values()) < 0.9999:
        print(f"DISAGREE with the per-item loop: min cosine {agree}", file=sys.stderr)
        return 1
    n = args.items
    rows = [
        ("export (ours, defaults)", t_naive, t_ours),
        ("export, prefetch thread on", t_naive, t_prefetch),
        ("export, cached inputs", t_naive, t_cached),
        ("  item cache build (once)", None, t_build),
        ("  processor alone, batched", None, t_proc),
    ]
    print(f"\nexport of {n} items, tiny {args.family}, batch {args.batch_size}; every variant agrees with the "
          f"per-item loop (min cosine {min(agree.values()):.6f})\n")
    print("| what | items | baseline s (per-item loop) | ours s | items/s (ours) | ratio |")
    print("|---|---|---|---|---|---|")
    for what, base, ours_s in rows:
        ratio = f"{base / ours_s:.1f}x" if base else "-"
        print(f"| {what} | {n} | {base:.2f} | {ours_s:.2f} | {n / ours_s:.0f} | {ratio} |" if base else
              f"| {what} | {n} | - | {ours_s:.2f} | {n / ours_s:.0f} | - |")
    print(f"\nper-item loop: {n / t_naive:.0f} items/s. machine: {os.cpu_count()} cores, torch "
          f"{torch.__version__} ({torch.get_num_threads()} threads), python {platform.python_version()}, "
          f"load average {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
