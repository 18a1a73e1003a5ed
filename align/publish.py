"""Publish a training run's best adapter to the Hugging Face Hub, after proving it reloads.

Three steps, each usable alone:

* :func:`assemble` copies what a user needs out of ``RUN_DIR/best`` (PEFT adapter, projection
  head, processor files) plus ``lis_report.json``, ``lis_curve.png``, ``lis_align.json`` (how to
  rebuild the embedder) and a model card (``README.md``) into ``RUN_DIR/publish``, atomically.
  Files are *whitelisted*: trainer state, optimizer files and ``training_args.bin`` (which can
  hold a Hub token) never reach the folder.
* :func:`verify` reloads that folder from scratch (fresh base model, ``PeftModel.from_pretrained``,
  head and processor from the folder) and refuses it unless it reproduces the run's best
  embeddings (``best/embeddings.safetensors``) on ``n_probe`` catalogue items, cosine >= 0.999 each.
* :func:`publish` runs both, then creates the repo and uploads the folder with ``HfApi``.

The token (argument, ``HF_TOKEN`` or the cached login) only ever travels in ``HfApi``'s
Authorization header: it is never logged, returned or written.

The run folder read here is in the format of :mod:`align.checkpoint` (``run.json``, ``best/``
with its ``lis_align.json`` and ``embeddings.safetensors``, ``lis_report.json``, ``lis_curve.png``);
the published ``lis_align.json`` carries the same batcher settings as ``best/``'s, every field.

Limits: one adapter per repo, uploaded to the default branch in one commit (no pull requests,
no revisions); verification embeds on CPU unless CUDA is present and needs the catalogue of
``run.json``'s ``data_dir`` (relative paths resolve against the working directory, then RUN_DIR).
"""
from __future__ import annotations

import logging
import shutil
from pathlib import Path

from align import strict_json
from align.checkpoint import (ADAPTER_CONFIG, ADAPTER_FILES, ADAPTER_WEIGHTS, BEST_DIR, EMBEDDER_CONFIG, EMBEDDINGS,
                              HEAD_CONFIG, HEAD_FILES, LIS_CURVE, LIS_REPORT, LIS_REPORT_MD, PROCESSOR_FILES,
                              read_adapter_info, read_json, read_run, write_embedder_config)
from align.export import load_export_model
from lis.errors import DataError, first_line

logger = logging.getLogger(__name__)

REPORT_FILES = (LIS_REPORT, LIS_CURVE)
OPTIONAL_REPORT_FILES = (LIS_REPORT_MD,)
MIN_COSINE = 0.999
MERGED_DIR = "merged"  # publish --merged: the merged model, beside the adapter
NO_TOKEN = "no Hugging Face token found: set HF_TOKEN or run `huggingface-cli login` (or pass --dry-run)."


def assemble(run_dir, out_dir=None, repo_id: str | None = None) -> Path:
    """Build the repo folder (default ``RUN_DIR/publish``) atomically and return its path.

    A missing required file is a DataError naming it; an existing folder is replaced whole.
    """
    from align.model_card import hub_base_model, render_card

    run_dir = Path(run_dir)
    run = read_run(run_dir)
    best = run_dir / BEST_DIR
    out_dir = Path(out_dir) if out_dir is not None else run_dir / "publish"
    required = [best / name for name in ADAPTER_FILES + HEAD_FILES] + [run_dir / name for name in REPORT_FILES]
    for path in required:
        if not path.is_file():
            raise DataError(f"{path.name}: required file not found in {path.parent} (needed to publish the run).")
    processor_files = [best / name for name in PROCESSOR_FILES if (best / name).is_file()]
    if not any(p.name in ("tokenizer_config.json", "tokenizer.json") for p in processor_files):
        raise DataError(f"tokenizer_config.json: no processor/tokenizer files in {best}; save the processor "
                        "with the best checkpoint.")
    report = read_json(run_dir / LIS_REPORT)
    head = read_json(best / HEAD_CONFIG)
    base_name = hub_base_model(run) or Path(str(run["base_model"])).name
    given = (run.get("data") or {}).get("data_dir")
    if given and any((d / "synth.json").is_file() for d in (Path(given), run_dir / given)):
        run["data"]["simulated"] = True  # lis-align synth wrote this data dir: the card says so
    batcher = read_adapter_info(best).batcher  # best/lis_align.json, else run.json's recipe
    card = render_card(run, report, repo_id=repo_id, head_config=head, batcher=batcher)

    from lis.atomic import atomic_path

    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        # adapter_config.json is rewritten below, not copied.
        for path in [best / name for name in (ADAPTER_WEIGHTS, *HEAD_FILES)] + processor_files:
            shutil.copyfile(path, tmp / path.name)
        for name in REPORT_FILES + OPTIONAL_REPORT_FILES:
            if (run_dir / name).is_file():
                shutil.copyfile(run_dir / name, tmp / name)
        adapter_config = read_json(best / ADAPTER_CONFIG)
        # PEFT records the local path the base was loaded from; publish the Hub id (or the bare
        # folder name) instead: AutoPeftModel resolves it, and no home folder leaks to the Hub.
        adapter_config["base_model_name_or_path"] = base_name
        (tmp / ADAPTER_CONFIG).write_text(strict_json.dumps(adapter_config, indent=2) + "\n")
        write_embedder_config(tmp, batcher, base_model=base_name, family=run.get("family") or head.get("family"),
                              best_step=run.get("best_step"), head=head)
        (tmp / "README.md").write_text(card)
    logger.info("assembled %d files in %s", len(list(out_dir.iterdir())), out_dir)
    return out_dir


def load_published(folder, base_model: str | None = None, dtype=None):
    """Rebuild ``(ItemEmbedder, ItemBatcher)`` from a published folder (local path) from scratch.

    ``base_model`` overrides ``lis_align.json``'s (e.g. a local copy). The model is in eval mode,
    on this process's CUDA device if any, else the CPU. The loading itself is
    :func:`align.export.load_export_model`'s (head from ``projection_head.json``, batcher from
    ``lis_align.json``), so a published folder and a training checkpoint load the same way.
    """
    folder = Path(folder)
    config = read_json(folder / EMBEDDER_CONFIG)
    if config is None:
        raise DataError(f"{EMBEDDER_CONFIG}: not found in {folder}; assemble the folder with lis-align publish.")
    return load_export_model(str(base_model or config["base_model"]), folder, dtype=dtype)


def verify(folder, run_dir, n_probe: int = 32, min_cosine: float = MIN_COSINE) -> dict:
    """Reload ``folder`` from scratch and compare it with the run's best embeddings on ``n_probe`` items.

    Probe items are spread evenly over the ids of ``best/embeddings.safetensors``. Raises
    DataError naming the failing items and the minimum cosine when any is below ``min_cosine``.
    Returns ``{"n_probe", "min_cosine", "mean_cosine", "worst_item", "threshold"}``.
    """
    import torch

    run_dir = Path(run_dir)
    run = read_run(run_dir)
    table, rows, ids, items = probe_items(run_dir, n_probe)
    dtype = ((run.get("recipe") or {}).get("model") or {}).get("dtype")
    embedder, batcher = load_published(folder, base_model=str(run["base_model"]), dtype=dtype)
    got = torch.nn.functional.normalize(embedder.embed_items(items, batcher, batch_size=16), dim=-1)
    want = torch.nn.functional.normalize(torch.from_numpy(table.vectors[rows]), dim=-1)
    if got.shape != want.shape:
        raise DataError(f"{EMBEDDINGS}: the reloaded embedder gives {got.shape[1]}-d vectors but the run's best "
                        f"embeddings are {want.shape[1]}-d; the folder does not match the run.")
    cosine = (got * want).sum(dim=1).numpy()
    worst = int(cosine.argmin())
    result = {"n_probe": len(ids), "min_cosine": float(cosine.min()), "mean_cosine": float(cosine.mean()),
              "worst_item": ids[worst], "threshold": min_cosine}
    failing = [item for item, c in zip(ids, cosine) if c < min_cosine]
    if failing:
        shown = ", ".join(repr(i) for i in failing[:5]) + (" ..." if len(failing) > 5 else "")
        raise DataError(
            f"{EMBEDDINGS}: the assembled folder does not reproduce the run's best embeddings: {len(failing)} of "
            f"{len(ids)} probe items below cosine {min_cosine} ({shown}; min {cosine.min():.4f} at {ids[worst]!r}). "
            f"Refusing to publish {folder}."
        )
    logger.info("verified %s: %d probe items, min cosine %.6f", folder, len(ids), result["min_cosine"])
    return result


def probe_items(run_dir, n_probe: int):
    """``(best embeddings table, rows, ids, item dicts)`` of ``n_probe`` items spread evenly over the table."""
    import numpy as np

    from align.collate import items_from_catalogue
    from lis.datadir import find_table
    from lis.embeddings import load_embeddings
    from lis.schemas import load_catalogue

    run_dir = Path(run_dir)
    table = load_embeddings(run_dir / BEST_DIR / EMBEDDINGS)
    rows = np.unique(np.linspace(0, len(table) - 1, min(n_probe, len(table))).round().astype(int))
    ids = [table.ids[row] for row in rows]
    data_dir = _data_dir(read_run(run_dir), run_dir)
    items = items_from_catalogue(load_catalogue(find_table(data_dir, "catalogue")), ids=ids, base_dir=data_dir)
    return table, rows, ids, items


def add_merged(folder, run_dir, n_probe: int = 32, min_cosine: float = MIN_COSINE) -> dict:
    """``FOLDER/merged``: the base model with the folder's adapter merged (:func:`align.merge.write_merged`),
    verified on the probe items; the model card says how to load it without peft."""
    from align.merge import write_merged
    from align.model_card import merged_section
    from lis.atomic import write_text

    folder = Path(folder)
    run = read_run(run_dir)
    dtype = ((run.get("recipe") or {}).get("model") or {}).get("dtype")
    result = write_merged(str(run["base_model"]), folder, folder / MERGED_DIR, probe_items(run_dir, n_probe)[3],
                          min_cosine=min_cosine, dtype=dtype)
    card = folder / "README.md"
    write_text(card, card.read_text(encoding="utf-8") + "\n".join(merged_section(MERGED_DIR)) + "\n")
    return result


def _data_dir(run: dict, run_dir: Path) -> Path:
    given = (run.get("data") or {}).get("data_dir")
    if not given:
        raise DataError("run.json: field 'data.data_dir' is missing; verification needs the catalogue.")
    from lis.datadir import find_table

    for candidate in (Path(given), run_dir / given):
        try:
            find_table(candidate, "catalogue")  # Parquet, CSV, JSONL or a datasets folder
            return candidate
        except DataError:
            continue
    raise DataError(f"run.json: field 'data.data_dir' is {given!r}, which holds no catalogue table "
                    f"(looked in the working directory and in {run_dir}).")


def listing(folder) -> list[tuple[str, int]]:
    """``(relative path, size in bytes)`` of every file in ``folder``, sorted."""
    folder = Path(folder)
    return sorted((p.relative_to(folder).as_posix(), p.stat().st_size) for p in folder.rglob("*") if p.is_file())


def resolve_token(token: str | None = None) -> str:
    """The token to upload with: the argument, else ``HF_TOKEN`` / the cached login; DataError if none."""
    if token:
        return token
    from huggingface_hub import get_token

    found = get_token()
    if not found:
        raise DataError(NO_TOKEN)
    return found


def publish(run_dir, repo_id: str, private: bool = False, dry_run: bool = False, token: str | None = None,
            endpoint: str | None = None, n_probe: int = 32, min_cosine: float = MIN_COSINE,
            merged: bool = False) -> dict:
    """Assemble, verify and (unless ``dry_run``) upload. Returns a summary without the token.

    The summary: ``{"repo_id", "folder", "files": [(path, size)], "verify": {...}, "dry_run",
    "private", "url"}`` (``url`` is the commit URL, None for a dry run). Nothing is uploaded when
    verification fails. A missing token is checked first, before any expensive work.
    ``merged``: also put the merged model in ``merged/`` (:func:`add_merged`; ``summary["merged"]``
    holds its verification), refused like the adapter when it does not reproduce the embeddings.
    """
    check_publish_args(repo_id, n_probe=n_probe, min_cosine=min_cosine, dry_run=dry_run, endpoint=endpoint)
    secret = None if dry_run else resolve_token(token)
    folder = assemble(run_dir, repo_id=repo_id)
    checked = verify(folder, run_dir, n_probe=n_probe, min_cosine=min_cosine)
    merged_check = add_merged(folder, run_dir, n_probe=n_probe, min_cosine=min_cosine) if merged else None
    summary = {"repo_id": repo_id, "folder": str(folder), "files": listing(folder), "verify": checked,
               "dry_run": dry_run, "private": private, "url": None, "merged": merged_check}
    if dry_run:
        return summary
    summary["url"] = _upload(folder, repo_id, private, secret, endpoint)
    return summary


OFFLINE_VALUES = ("1", "on", "yes", "true")


def check_publish_args(repo_id: str, *, n_probe: int = 32, min_cosine: float = MIN_COSINE, dry_run: bool = False,
                       endpoint: str | None = None) -> None:
    """Refuse, before any work, what would publish wrongly or fail late: a repo id the Hub rejects
    (it would land in the card), a probe of no items or a cosine bar that checks nothing, an
    upload while ``HF_HUB_OFFLINE`` is set, an endpoint that is not an http(s) URL."""
    import math
    import os

    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as error:
        reason = first_line(error).split(":")[0]
        raise DataError(f"--repo-id: {reason}; got {repo_id!r} (expected 'name' or 'namespace/name').") from None
    if n_probe < 1:
        raise DataError(f"--n-probe: must be a positive integer (items re-embedded to verify); got {n_probe}.")
    if not (math.isfinite(min_cosine) and 0.0 < min_cosine <= 1.0):
        raise DataError(f"--min-cosine: must be in (0, 1] (a lower bar would let a broken folder through); "
                        f"got {min_cosine}.")
    if endpoint is not None and not endpoint.startswith(("http://", "https://")):
        raise DataError(f"--endpoint: must be an http:// or https:// URL; got {endpoint!r}.")
    offline = os.environ.get("HF_HUB_OFFLINE", "").strip().lower()
    if not dry_run and offline in OFFLINE_VALUES:
        raise DataError(f"HF_HUB_OFFLINE is {os.environ['HF_HUB_OFFLINE']!r}: uploading needs the network; unset it "
                        "or pass --dry-run to assemble and verify only.")


def _upload(folder: Path, repo_id: str, private: bool, token: str, endpoint: str | None) -> str:
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    api = HfApi(endpoint=endpoint, token=token)
    try:
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        info = api.upload_folder(repo_id=repo_id, folder_path=str(folder), repo_type="model",
                                 commit_message="Upload adapter with lis-align")
    except OfflineModeIsEnabled:
        raise DataError("HF_HUB_OFFLINE is set: uploading needs the network; unset it or pass --dry-run.") from None
    except HfHubHTTPError as error:
        status = getattr(error.response, "status_code", "?")
        raise DataError(f"{repo_id}: the Hub refused the upload (HTTP {status}): {first_line(error)}") from None
    except _transport_errors() as error:
        raise DataError(f"{api.endpoint}: cannot reach the Hub ({type(error).__name__}).") from None
    logger.info("uploaded %s to %s", folder, repo_id)
    return str(info.commit_url if hasattr(info, "commit_url") else info)


def _transport_errors() -> tuple:
    """Connection-level errors of the HTTP client huggingface_hub uses (httpx2 in 2.x, httpx in 1.x)."""
    import importlib

    found = []
    for name in ("httpx2", "httpx"):
        try:
            found.append(importlib.import_module(name).HTTPError)
        except ImportError:
            continue
    return tuple(found) or (ConnectionError,)


