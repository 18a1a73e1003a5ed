"""The item embedder: a VLM read out as one L2-normalised vector per item."""
from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import nn

from align.checkpoint import HEAD_CONFIG, read_head, write_head
from align.embedding_loop import embed_in_batches
from align.frozen_inputs import FEATURES_KEY
from align.models.families import get_family
from lis.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

POOLINGS = ("last", "mean")


class ItemEmbedder(nn.Module):
    """Turn a VLM into an item-embedding model: pooled final hidden state -> centring -> head -> L2 norm.

    An item (image + text) is formatted by :class:`align.collate.ItemBatcher` with a prompt that
    asks the model to compress it into one word (``'<image>Title: ...\\nSummarise this item in
    one word:'``), so the final position of the sequence is trained to carry the whole item.
    ``forward(**batch)`` runs the backbone (the language model with the vision tower, without
    the LM head: we never need the vocabulary logits), pools, and returns ``(B, dim)`` unit vectors.

    Args:
        model: a Hugging Face VLM (``*ForConditionalGeneration`` or its bare ``*Model``), plain
            or wrapped by PEFT (:func:`align.lora.apply_lora`).
        family: family name or :class:`align.models.families.Family`; ``None`` reads
            ``model.config.model_type``.
        dim: output dimension of the projection head (default 128).
        pooling: ``'last'`` (default; the final non-pad position: the "one word" readout) or
            ``'mean'`` (mean over non-pad positions, image tokens included). A randomly
            initialised causal model's last position is dominated by the last word, so the
            tiny CPU recipe should choose ``'mean'`` (docs/design.md, "The tiny model": recall
            0.13 vs 0.057 at step 0); a pretrained model is usually better read at the last position.
        center: subtract a running mean and divide by a running std before the head
            (``BatchNorm1d`` without affine parameters). On by default: when the starting
            features carry little, training otherwise first collapses towards a constant
            embedding (loss stuck at ln(batch) for 60-100 s on the tiny model).
        normalize: L2-normalise the output (default on; the contrastive loss expects it).
        gradient_checkpointing: recompute the backbone's activations in the backward pass
            (non-reentrant, so frozen embeddings need no ``enable_input_require_grads``).

    Limits:
        * Centring uses per-process batch statistics in training (no SyncBatchNorm): with
          tiny per-device batches under DDP the statistics are noisy; a training batch of one
          item falls back to the running statistics instead of failing.
        * The head and centring run in float32 whatever the backbone's dtype.
        * Items without an image are not special-cased here: the batcher gives them a blank
          placeholder image, so every item takes the same path on every rank (a text-only
          item would skip the vision tower and hang ZeRO-3 on a mixed batch).
        * Only the final hidden layer is read; intermediate layers are not offered.

    The head is saved apart from the LoRA adapter: :meth:`save_head` / :meth:`load_head`
    (``projection_head.safetensors`` + ``projection_head.json``).
    """

    def __init__(self, model: nn.Module, family=None, dim: int = 128, pooling: str = "last", center: bool = True,
                 normalize: bool = True, gradient_checkpointing: bool = False):
        super().__init__()
        if pooling not in POOLINGS:
            raise ConfigError(f"pooling: expected one of {', '.join(POOLINGS)}; got {pooling!r}.")
        if dim <= 0:
            raise ConfigError(f"dim: must be a positive integer; got {dim}.")
        self.model = model
        config = model.config
        self.family = get_family(family if family is not None else getattr(config, "model_type", None))
        self.hidden_size = config.get_text_config().hidden_size
        self.dim, self.pooling, self.normalize = dim, pooling, normalize
        self.centered = center
        self.center = nn.BatchNorm1d(self.hidden_size, affine=False) if center else nn.Identity()
        self.head = nn.Linear(self.hidden_size, dim)
        if gradient_checkpointing:
            self.gradient_checkpointing_enable()

    def gradient_checkpointing_enable(self) -> None:
        kwargs = {"use_reentrant": False}
        base = self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model
        # transformers 5.x renamed it (the old name warns, removal in v6); keep both working.
        if hasattr(base, "activation_checkpointing_enable"):
            base.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            base.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)

    def backbone(self) -> nn.Module:
        """The module that returns ``last_hidden_state``: the VLM without its LM head."""
        base = self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model
        # *ForConditionalGeneration keeps the multimodal model in `.model` and adds `lm_head`.
        if hasattr(base, "lm_head") and isinstance(getattr(base, "model", None), nn.Module):
            return base.model
        return base

    def forward(self, **batch) -> torch.Tensor:
        """Embed a processor batch (see :class:`align.collate.ItemBatcher`) -> ``(B, dim)``."""
        return self.project(self.pooled(**batch))

    def pooled(self, **batch) -> torch.Tensor:
        """The pooled final hidden states ``(B, hidden)`` float32, before centring and head.

        Per item: no batch statistics yet, so a batch may be pooled in chunks (the cached loss does).
        A batch from :class:`align.frozen_inputs.FrozenItemInputs` carries ``image_features``
        (cached encoder outputs) instead of pixels; they reach the model as ``mm_encoder_outputs``.
        """
        mask = batch.get("attention_mask")
        if mask is None:
            raise DataError("batch: 'attention_mask' is missing; build batches with align.collate.ItemBatcher.")
        features = batch.pop(FEATURES_KEY, None)
        if features is not None:  # cached vision-encoder outputs (align.frozen_inputs) instead of pixels
            from transformers.modeling_outputs import BaseModelOutputWithPooling

            batch["mm_encoder_outputs"] = {"image": BaseModelOutputWithPooling(pooler_output=tuple(features))}
        outputs = self.backbone()(**batch, use_cache=False, return_dict=True)
        # >= float32 before pooling: a bf16 sum over hundreds of positions loses digits.
        hidden = outputs.last_hidden_state
        return pool(hidden.to(torch.promote_types(hidden.dtype, torch.float32)), mask, self.pooling)

    def project(self, pooled: torch.Tensor) -> torch.Tensor:
        """Centring, head and normalisation of pooled hidden states ``(B, hidden)``."""
        if self.centered and self.training and pooled.shape[0] == 1:
            # BatchNorm cannot take statistics of one row: use the running ones.
            pooled = F.batch_norm(pooled, self.center.running_mean, self.center.running_var, training=False,
                                  eps=self.center.eps)
        else:
            pooled = self.center(pooled)
        out = self.head(pooled)
        return F.normalize(out, dim=-1) if self.normalize else out

    def embed_items(self, items, batcher, batch_size: int = 64) -> torch.Tensor:
        """Embed a list of item dicts in eval mode, ``batch_size`` at a time -> ``(n, dim)`` float32 on CPU.

        The same loop as every export (:func:`align.embedding_loop.embed_in_batches`), on this
        process alone.
        """
        return embed_in_batches(self, batcher, items, batch_size=batch_size).cpu()

    # --- the head on disk -------------------------------------------------------------

    def head_config(self) -> dict:
        return {"hidden_size": self.hidden_size, "dim": self.dim, "pooling": self.pooling, "center": self.centered,
                "normalize": self.normalize, "family": self.family.name}

    def head_state(self) -> dict:
        state = {f"head.{k}": v for k, v in self.head.state_dict().items()}
        if self.centered:
            state.update({f"center.{k}": v for k, v in self.center.state_dict().items()})
        return {k: v.detach().cpu().contiguous() for k, v in state.items()}

    def save_head(self, directory) -> None:
        """Write ``projection_head.safetensors`` and ``projection_head.json`` into ``directory``."""
        write_head(directory, self.head_state(), self.head_config())

    def load_head(self, directory) -> "ItemEmbedder":
        """Load a head saved by :meth:`save_head`; its shape and options must match this embedder's."""
        saved, state = read_head(directory)
        mine = self.head_config()
        for key in ("hidden_size", "dim", "center"):
            if saved.get(key) != mine[key]:
                raise ConfigError(
                    f"{HEAD_CONFIG}: field '{key}' is {saved.get(key)!r} but this embedder has {mine[key]!r}."
                )
        device = next(self.head.parameters()).device
        self.head.load_state_dict({k[5:]: v.to(device) for k, v in state.items() if k.startswith("head.")})
        if self.centered:
            self.center.load_state_dict({k[7:]: v.to(device) for k, v in state.items() if k.startswith("center.")})
        if saved.get("pooling") != self.pooling:
            # Not an error: pooling has no weights, but the embeddings will differ from the saved run's.
            logger.warning("%s: head was trained with pooling=%r; this embedder uses %r", HEAD_CONFIG,
                           saved.get("pooling"), self.pooling)
        return self


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, how: str = "last") -> torch.Tensor:
    """Pool ``(B, T, H)`` hidden states over the non-pad positions of ``attention_mask``.

    ``last`` takes the final non-pad position whichever side the padding is on.
    """
    mask = attention_mask.to(hidden.device)
    if how == "last":
        positions = torch.arange(mask.shape[1], device=mask.device)
        last = (positions * (mask > 0)).argmax(dim=1)
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
    weights = mask.to(hidden.dtype).unsqueeze(-1)
    return (hidden * weights).sum(1) / weights.sum(1).clamp_min(1.0)
