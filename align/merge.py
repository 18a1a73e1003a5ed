"""A merged model: the base VLM with the LoRA adapter folded into its weights, loadable without peft.

Serving engines load plain ``transformers`` checkpoints, not adapters. :func:`write_merged`
folds the adapter into the base weights (``merge_and_unload``: W + scale * B @ A, and trained
token embeddings in place of the frozen ones), saves the result with ``save_pretrained`` as
safetensors, adds the projection head, the processor and ``lis_align.json``, and *verifies the
folder before it exists*: the folder, reloaded from disk by ``transformers`` alone (no
``adapter_config.json`` in it, so peft is never involved), must embed probe items like the
adapter does (cosine >= ``min_cosine``, default 0.999, each); otherwise a DataError and nothing
is written (the folder is built as ``OUT.tmp`` and renamed).

Used by ``lis-align export --merged OUT_DIR`` and ``lis-align publish --merged``. The folder
loads with :func:`align.export.load_export_model` (``--model OUT_DIR --adapter OUT_DIR``) or
with ``transformers`` Auto classes plus ``ItemEmbedder(...).load_head(OUT_DIR)``.

Limits: the merge runs on CPU in the checkpoint's dtype (bf16 merges round the merged weights
once; the verification measures what that costs); one process.
"""
from __future__ import annotations

import logging
import shutil
from pathlib import Path

import torch

from align.checkpoint import ADAPTER_CONFIG, EMBEDDER_CONFIG, read_adapter_info, replace_dir, write_embedder_config
from lis.errors import DataError

logger = logging.getLogger(__name__)

MIN_COSINE = 0.999


def write_merged(model_dir, adapter_dir, out_dir, items: list[dict], *, min_cosine: float = MIN_COSINE,
                 dtype=None, batch_size: int = 16) -> dict:
    """Merge ``adapter_dir`` into ``model_dir``, verify on ``items`` (probe items) and write ``out_dir``.

    Returns ``{"folder", "n_probe", "min_cosine", "mean_cosine", "threshold"}``. Raises DataError
    (naming the worst item and its cosine) when the reloaded merged model does not reproduce the
    adapter's embeddings; ``out_dir`` is then left as it was.
    """
    from align.export import load_export_model

    adapter = Path(adapter_dir)
    if not (adapter / ADAPTER_CONFIG).is_file():
        raise DataError(f"{adapter}: no {ADAPTER_CONFIG}; --merged needs a LoRA adapter folder to merge.")
    if not items:
        raise DataError("--merged: no probe items to verify the merged model with.")
    embedder, batcher = load_export_model(str(model_dir), str(adapter), dtype=dtype, device="cpu")
    want = embedder.embed_items(items, batcher, batch_size=batch_size)
    merged = merge_adapter(embedder.model)
    out = Path(out_dir)
    tmp = out.with_name(out.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        merged.save_pretrained(str(tmp), safe_serialization=True)
        batcher.processor.save_pretrained(str(tmp))
        embedder.save_head(tmp)
        info = read_adapter_info(adapter)
        write_embedder_config(tmp, info.batcher, step=info.step, trained_until=info.trained_until,
                              base_model=str(model_dir))
        reloaded, reloaded_batcher = load_export_model(str(tmp), str(tmp), dtype=dtype, device="cpu")
        got = reloaded.embed_items(items, reloaded_batcher, batch_size=batch_size)
        result = _compare(want, got, [str(i["item_id"]) for i in items], min_cosine)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    replace_dir(tmp, out)
    logger.info("merged %s into %s -> %s (min cosine %.6f on %d probe items)", adapter, model_dir, out,
                result["min_cosine"], result["n_probe"])
    return {"folder": str(out), **result}


def merge_adapter(model):
    """The plain ``transformers`` model with the adapter merged (the PEFT wrapper removed)."""
    if not hasattr(model, "merge_and_unload"):
        raise DataError("--merged: the loaded model has no LoRA adapter to merge.")
    return model.merge_and_unload()


def _compare(want: torch.Tensor, got: torch.Tensor, ids: list[str], min_cosine: float) -> dict:
    want = torch.nn.functional.normalize(want.double(), dim=-1)
    got = torch.nn.functional.normalize(got.double(), dim=-1)
    cosine = (want * got).sum(dim=1)
    worst = int(cosine.argmin())
    result = {"n_probe": len(ids), "min_cosine": float(cosine.min()), "mean_cosine": float(cosine.mean()),
              "threshold": min_cosine}
    if result["min_cosine"] < min_cosine:
        raise DataError(f"{EMBEDDER_CONFIG}: the merged model does not reproduce the adapter's embeddings: "
                        f"{int((cosine < min_cosine).sum())} of {len(ids)} probe items below cosine {min_cosine} "
                        f"(min {result['min_cosine']:.6f} at item {ids[worst]!r}); refusing to write it.")
    return result
