"""LoRA on a VLM's language model through PEFT, with per-family default targets.

The adapter is PEFT's own format: ``PeftModel.save_pretrained`` writes it and
``PeftModel.from_pretrained(base_model, dir)`` loads it back, with or without lis-align.
"""
from __future__ import annotations

import re

from torch import nn

from align.models.families import get_family
from lis.errors import ConfigError


def apply_lora(model: nn.Module, family, r: int = 16, alpha: int = 32, dropout: float = 0.0, target_modules=None,
               vision: bool = False, train_token_embeddings: bool = False):
    """Wrap ``model`` in a PEFT ``PeftModel`` with LoRA adapters; every base weight is frozen.

    Args:
        model: a VLM from :func:`align.models.loading.load_vlm` (unwrapped).
        family: family name or record (sets the default targets).
        r, alpha, dropout: LoRA rank, scaling numerator and dropout.
        target_modules: PEFT ``target_modules`` (list of names or a regex) overriding the
            default: the language model's attention and MLP projections (``q_proj, k_proj,
            v_proj, o_proj, gate_proj, up_proj, down_proj``), restricted by a regex to the
            language model so the vision tower's own ``q_proj``... are not touched.
        vision: also put LoRA on the vision tower's linears (family-specific names).
        train_token_embeddings: train the input token embeddings fully (PEFT
            ``modules_to_save``: a trainable copy saved with the adapter). The tiny recipe
            needs it: frozen *random* token embeddings carry so little that LoRA learned
            from the image and ignored the text (docs/design.md, "The tiny model"). Costs vocab x hidden
            parameters in every saved adapter; rarely worth it for a pretrained model.

    Returns:
        the ``PeftModel``. Use :func:`trainable_report` to see what trains.

    Limits: the projection head of :class:`align.embedder.ItemEmbedder` is not part of the
    adapter; save it with ``ItemEmbedder.save_head``. Tied input/output embeddings are not
    re-tied when ``train_token_embeddings`` is on (the embedder never uses the LM head).
    """
    from peft import LoraConfig, get_peft_model

    fam = get_family(family)
    targets = target_modules if target_modules is not None else fam.lora_target_regex(vision=vision)
    names = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    if isinstance(targets, str) and not any(re.fullmatch(targets, name) for name in names):
        raise ConfigError(
            f"LoRA target_modules: the pattern for family '{fam.name}' matches no linear layer of "
            f"{type(model).__name__}; linear layers look like {names[:4]}. Pass target_modules explicitly."
        )
    modules_to_save = [_input_embeddings_name(model)] if train_token_embeddings else None
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets,
                        modules_to_save=modules_to_save, bias="none")
    return get_peft_model(model, config)


def _input_embeddings_name(model: nn.Module) -> str:
    embeddings = model.get_input_embeddings()
    for name, module in model.named_modules():
        if module is embeddings:
            return name
    raise ConfigError(f"{type(model).__name__}: cannot find the input embeddings module to train.")


def trainable_report(model: nn.Module) -> dict:
    """Counts of trainable parameters: total, trainable, and trainable by kind (lora/embeddings/other)."""
    report = {"total": 0, "trainable": 0, "lora": 0, "embeddings": 0, "other": 0}
    for name, param in model.named_parameters():
        report["total"] += param.numel()
        if not param.requires_grad:
            continue
        report["trainable"] += param.numel()
        kind = "lora" if "lora_" in name else "embeddings" if "embed_tokens" in name or "modules_to_save" in name else "other"
        report[kind] += param.numel()
    return report
