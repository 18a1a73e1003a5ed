"""``simulate``: build a world and write it as a data dir, atomically and byte-reproducibly."""
from __future__ import annotations

import datetime as _dt
import json
from pathlib import Path

import numpy as np

from lis.atomic import atomic_path, write_bytes, write_json
from lis.errors import DataError
from lis.synth.config import SynthConfig, resolve
from lis.synth.render import ImageRenderer, TextRenderer, encode_png
from lis.synth.world import DAY, Items, Log, make_items, simulate_log, streams

CATEGORY_NAMES = ("art", "books", "beauty", "cars", "crafts", "fashion", "fitness", "food", "games",
                  "garden", "health", "home", "kids", "music", "outdoors", "pets", "photo", "science",
                  "sports", "tech", "toys", "travel", "diy", "film")
FORMAT_VERSION = 1
IMAGE_CHUNK = 1_000  # items rendered per batch: bounds memory at 64 px to ~50 MB of floats


def simulate(preset_or_config, seed: int, out_dir, progress: bool = True) -> dict:
    """Simulate a platform and write it to ``out_dir``; return the summary.

    ``out_dir`` receives ``catalogue.parquet``, ``log.parquet``, ``images/<item_id>.png``,
    ``truth.safetensors`` (the true item latents, an embedding table with source ``truth``),
    ``users_truth.safetensors`` (one row per *session*, keyed by ``session_id``: the user's
    true taste during that session, so ``taste . latent`` can be recomputed from files) and
    ``synth.json`` (config, seed, summary, ids of the items whose content is uninformative).

    The whole dir is written beside the target and renamed into place, so a reader never
    sees half a world. An existing non-empty ``out_dir`` is replaced only if it holds a
    previous ``synth.json``; anything else is refused (DataError) rather than deleted.
    The same seed gives byte-identical files; nothing depends on the wall clock.
    """
    config = resolve(preset_or_config)
    out = Path(out_dir)
    _check_target(out)
    rngs = streams(seed)
    items = make_items(config, rngs["items"])
    with _bar(progress, config.n_sessions, "sessions") as bar:
        log = simulate_log(config, items, rngs, bar)
    summary = summarize(config, items, log)
    with atomic_path(out) as tmp:
        tmp.mkdir()
        catalogue = _write_catalogue(tmp, config, items, rngs, progress)
        _write_log(tmp, config, log)
        _write_truth(tmp, config, items, log, catalogue)
        write_json(tmp / "synth.json", {
            "format_version": FORMAT_VERSION,
            "generator": "lis.synth",
            "preset": config.name,
            "seed": int(seed),
            "config": config.to_dict(),
            "summary": summary,
            "files": {
                "catalogue": "catalogue.parquet", "log": "log.parquet", "images": "images/",
                "truth": "truth.safetensors", "users_truth": "users_truth.safetensors",
            },
            "uninformative_item_ids": _ids("i", config.n_items)[~items.informative].tolist(),
        })
    return summary


def _check_target(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise DataError(f"{out}: output path exists and is not a directory.")
    if out.is_dir() and any(out.iterdir()) and not (out / "synth.json").is_file():
        raise DataError(f"{out}: output directory is not empty and holds no synth.json; "
                        "refusing to replace it (choose a new or empty directory).")


def _ids(prefix: str, n: int) -> np.ndarray:
    return np.array([f"{prefix}{k}" for k in range(n)], dtype=object)


def _bar(progress: bool, total: int, unit: str):
    from contextlib import nullcontext
    if not progress:
        return nullcontext(None)
    from tqdm import tqdm
    return tqdm(total=total, unit=f" {unit}", desc=f"synth {unit}", leave=False)


def _write_catalogue(out: Path, config: SynthConfig, items: Items, rngs: dict, progress: bool):
    import pyarrow as pa
    import pyarrow.parquet as pq

    n = config.n_items
    text = TextRenderer(config.dim, config.vocab_size, config.word_temperature, rngs["render"]).render(
        items.content_latent, rngs["content"])
    renderer = ImageRenderer(config.dim, config.image_size, rngs["render"])
    ids = _ids("i", n)
    images = out / "images"
    images.mkdir()
    with _bar(progress, n, "images") as bar:
        for lo in range(0, n, IMAGE_CHUNK):
            pixels = renderer.render(items.content_latent[lo:lo + IMAGE_CHUNK], rngs["content"])
            for k, data in enumerate(encode_png(pixels)):
                (images / f"{ids[lo + k]}.png").write_bytes(data)
            if bar is not None:
                bar.update(len(pixels))
    names = np.array([CATEGORY_NAMES[c % len(CATEGORY_NAMES)] + ("" if c < len(CATEGORY_NAMES) else f"_{c}")
                      for c in range(config.n_categories)], dtype=object)
    table = pa.table({
        "item_id": pa.array(ids, pa.string()),
        "text": pa.array(text, pa.string()),
        "image": pa.array([f"images/{i}.png" for i in ids], pa.string()),
        "category": pa.array(names[items.category], pa.string()),
        "created_at": pa.array(items.created_at, pa.int64()),
    })
    pq.write_table(table, out / "catalogue.parquet")
    # catalogue_hash only iterates the two columns; numpy arrays spare importing pandas.
    return {"item_id": ids.astype(str), "text": np.array(text, dtype=str)}


def _write_log(out: Path, config: SynthConfig, log: Log) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    columns = {
        "user_id": pa.array(_ids("u", config.n_users)[log.user], pa.string()),
        "item_id": pa.array(_ids("i", config.n_items)[log.item], pa.string()),
        "timestamp": pa.array(log.timestamp, pa.int64()),
        "label": pa.array(log.label, pa.int8()),
        "session_id": pa.array(_ids("s", config.n_sessions)[log.session], pa.string()),
    }
    if config.include_base_logit:
        columns["base_logit"] = pa.array(log.base_logit, pa.float32())
    pq.write_table(pa.table(columns), out / "log.parquet")


def _write_truth(out: Path, config: SynthConfig, items: Items, log: Log, catalogue) -> None:
    from lis.embeddings import EmbeddingTable, catalogue_hash, make_manifest, save_embeddings

    # trained_until=None: the truth saw no log data, so AIS may score it in any window.
    save_embeddings(out / "truth.safetensors", EmbeddingTable(
        list(_ids("i", config.n_items)), items.latent.astype(np.float32),
        make_manifest(config.dim, "truth", model="synth-truth", catalogue_hash=catalogue_hash(catalogue))))
    save_embeddings(out / "users_truth.safetensors", EmbeddingTable(
        list(_ids("s", config.n_sessions)), log.session_taste,
        make_manifest(config.dim, "truth-taste", model="synth-truth")))


def summarize(config: SynthConfig, items: Items, log: Log) -> dict:
    """Counts and rates of the world, plus the ceiling AUC of taste(t) . latent vs label."""
    first, last = int(log.timestamp[0]), int(log.timestamp[-1])
    cut = config.start + 0.7 * config.days * DAY
    first_seen = np.full(config.n_items, np.iinfo(np.int64).max)
    np.minimum.at(first_seen, log.item, log.timestamp)
    return {
        "items": config.n_items,
        "categories": config.n_categories,
        "users": int(len(np.unique(log.user))),
        "sessions": int(len(np.unique(log.session))),
        "impressions": int(len(log.item)),
        "positive_rate": round(float(log.label.mean()), 6),
        "first_timestamp": _iso(first),
        "last_timestamp": _iso(last),
        "items_shown": int((first_seen < np.iinfo(np.int64).max).sum()),
        "items_created_late": int((items.created_at >= config.start).sum()),
        "cold_items_last_30pct": int(((first_seen >= cut) & (first_seen < np.iinfo(np.int64).max)).sum()),
        "uninformative_items": int((~items.informative).sum()),
        "truth_auc": round(_auc(log.label, log.taste_dot), 6),
    }


def _iso(seconds: int) -> str:
    return _dt.datetime.fromtimestamp(seconds, _dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Rank AUC with tie-averaged ranks (kept local: the metrics module is not a dependency)."""
    pos = labels.astype(bool)
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    # Average 1-based rank of each distinct value: the ranks its ties would share.
    upper = np.cumsum(counts)
    ranks = (upper - (counts - 1) / 2.0)[inverse]
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))
