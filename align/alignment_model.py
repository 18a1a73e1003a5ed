"""The model being trained: a LoRA-wrapped VLM read out as an item embedder, plus the contrastive loss.

:class:`AlignmentModel` is what ``transformers.Trainer`` sees; :func:`build_alignment_model`
builds it from a recipe; :func:`resolve_base_model` finds (or, for ``tiny:FAMILY``, builds) the
base VLM it starts from.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

import torch
from torch import nn

from align.checkpoint import BASE_MODEL_DIR
from align.distributed import gather_sizes, launch_rank
from lis.errors import DataError

logger = logging.getLogger(__name__)

TINY_PREFIX = "tiny:"


class AlignmentModel(nn.Module):
    """Embedder + contrastive loss as one module: ``forward(anchor_ids, positive_ids, weights, **items)``.

    One module because DDP/DeepSpeed must wrap the loss's temperature too (otherwise ranks'
    temperatures drift apart), and one forward call for anchors and positives because DDP
    allows one forward per backward.

    Args:
        embedder: an :class:`align.embedder.ItemEmbedder` (its VLM usually LoRA-wrapped).
        loss: an :class:`align.loss.InfoNCELoss`.
        known_pairs: ``encode_pairs`` keys of every training pair (masked when two related
            items meet as negatives in a batch), or None. Kept as a plain attribute, not a
            buffer: it is data, not state, and DeepSpeed/DDP should not broadcast it.

    ``items`` is one processor batch of 2B (+M hard negative) items, anchors first, or ``chunks``
    of it (:class:`align.collate.PairCollator`); ``negative_ids`` the M hard negatives' ids.
    Returns the loss's dict (``loss``, ``logit_scale``, ``accuracy``). Its state-dict layout is
    the one :func:`align.checkpoint.save_align_state` writes.
    """

    def __init__(self, embedder: nn.Module, loss: nn.Module, known_pairs: torch.Tensor | None = None):
        super().__init__()
        self.embedder = embedder
        self.loss = loss
        self.known_pairs = known_pairs

    def forward(self, anchor_ids=None, positive_ids=None, weights=None, negative_ids=None, chunks=None,
                pooled_before=None, pooled_after=None, **items):
        if anchor_ids is None:  # a chunk pass of the cached loss (align.cached_loss): pooled states only
            return self.embedder.pooled(**items)
        if chunks is None:
            embeddings = self.embedder(**items)
        else:  # items collated in chunks, between the cached states of the chunks before and after them
            # ZeRO-3 gathers parameters in every pass (a collective): a rank with fewer chunks
            # (evaluation batches differ) repeats its last one until all ranks ran as many.
            passes = max(gather_sizes(len(chunks), anchor_ids.device))
            parts = [self.embedder.pooled(**c) for c in chunks]
            for _ in range(passes - len(chunks)):
                self.embedder.pooled(**chunks[-1])
            parts = [t for t in (pooled_before, *parts, pooled_after) if t is not None]
            embeddings = self.embedder.project(torch.cat(parts))
        return self.contrast(embeddings, anchor_ids, positive_ids, weights, negative_ids)

    def contrast(self, embeddings, anchor_ids, positive_ids, weights=None, negative_ids=None):
        """The loss of embeddings laid out as the collator lays out items: B anchors, B positives, then negatives."""
        n = anchor_ids.shape[0]
        negatives = embeddings[2 * n:] if negative_ids is not None else None
        return self.loss(embeddings[:n], embeddings[n:2 * n], anchor_ids, positive_ids, weights,
                         known_pairs=self.known_pairs, negative_emb=negatives, negative_ids=negative_ids)


def build_alignment_model(recipe, base_model: str, pairs_rows=None):
    """Load the VLM, apply LoRA, wrap in embedder + loss -> ``(AlignmentModel, processor, family)``.

    ``pairs_rows``: ``(anchor rows, positive rows)`` of every training pair, masked as known
    positives when ``loss.mask_known_pairs`` is on.
    """
    from align.embedder import ItemEmbedder
    from align.lora import apply_lora, trainable_report
    from align.loss import InfoNCELoss, encode_pairs
    from align.models.loading import load_vlm

    torch.manual_seed(recipe.training.seed)  # LoRA and head initialisation
    vlm, processor, family = load_vlm(base_model, dtype=recipe.model.dtype,
                                      attn_implementation=recipe.model.attn_implementation)
    lo = recipe.lora
    peft_model = apply_lora(vlm, family, r=lo.r, alpha=lo.alpha, dropout=lo.dropout, target_modules=lo.target_modules,
                            vision=lo.vision, train_token_embeddings=lo.train_token_embeddings)
    e = recipe.embedder
    embedder = ItemEmbedder(peft_model, family, dim=e.dim, pooling=e.pooling, center=e.center,
                            gradient_checkpointing=e.gradient_checkpointing)
    ls = recipe.loss
    loss = InfoNCELoss(init_scale=ls.logit_scale_init, learn_scale=ls.learn_temperature,
                       gather_with_grad=ls.gather_with_grad, local_loss=ls.local_loss,
                       matryoshka_dims=ls.matryoshka_dims)
    known = encode_pairs(*pairs_rows) if (ls.mask_known_pairs and pairs_rows is not None) else None
    model = AlignmentModel(embedder, loss, known_pairs=known)
    model.train()
    report = trainable_report(model)
    logger.info("trainable parameters: %d of %d (LoRA %d, token embeddings %d, head/temperature %d)",
                report["trainable"], report["total"], report["lora"], report["embeddings"], report["other"])
    return model, processor, family


def resolve_base_model(recipe, out_dir: Path, catalogue_dir) -> tuple[str, str | None]:
    """``(loadable path or Hub id, Hub id or None)``; builds the tiny VLM for ``tiny:FAMILY``.

    Rank 0 builds ``OUTPUT_DIR/base_model`` (atomically); the other ranks wait for it. A
    folder left by an earlier run (resume) is reused as is.
    """
    path = recipe.model.path
    if not path.startswith(TINY_PREFIX):
        local = Path(path).expanduser()
        return (str(local), None) if local.exists() else (path, path)
    family = path[len(TINY_PREFIX):]
    target = Path(out_dir) / BASE_MODEL_DIR
    if not (target / "config.json").is_file():
        if launch_rank() == 0:
            from align.models.tiny import build_tiny_vlm

            logger.info("building a tiny %s VLM in %s (tokenizer trained on the catalogue text)", family, target)
            build_tiny_vlm(family, target, catalogue=catalogue_dir, image_size=recipe.data.image_size,
                           seed=recipe.training.seed)
        else:
            _wait_for(target / "config.json")
    return str(target), None


def _wait_for(path: Path, timeout: float = 600.0) -> None:
    start = time.time()
    while not path.exists():
        if time.time() - start > timeout:
            raise DataError(f"{path}: rank 0 did not build the tiny model within {timeout:.0f} s.")
        time.sleep(0.2)
