"""Per-family facts of the VLMs we support: prompt format, image tokens, module names, LoRA targets.

Everything the rest of ``align`` needs to know about one architecture lives in a
:class:`Family` record, so supporting a new family means adding one record here.
Families are keyed by ``config.model_type``. An unknown model type gets
:data:`GENERIC` (a ``<image>`` placeholder and LoRA on every ``*_proj`` module outside
the vision tower) with a warning: it often works, but check the trainable-parameter
report before a long run.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field

logger = logging.getLogger(__name__)

# Projections of a Llama/Qwen-style decoder block: attention and gated MLP.
LANGUAGE_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class Family:
    """Facts about one VLM architecture.

    Args:
        name: our family name (``qwen2_vl``, ``llava``, ``idefics3``, ``generic``).
        model_types: the ``config.model_type`` values that map to this family.
        image_placeholder: what a prompt holds where the image goes; the processor expands it
            into the right number of image tokens.
        language_prefixes: module-name components of the language model (as in
            ``model.language_model.layers.0...``); LoRA targets are restricted to modules
            under one of them so the vision tower is left alone.
        vision_prefixes: module-name components of the vision tower and projector.
        vision_targets: linear layer names inside the vision tower (used when ``vision=True``).
        needs_mm_token_type_ids: the model wants ``mm_token_type_ids`` in the batch (M-RoPE
            of Qwen2-VL in transformers 5.x); processors return it, hand-built batches must too.
    """

    name: str
    model_types: tuple[str, ...]
    image_placeholder: str
    language_prefixes: tuple[str, ...] = ("language_model", "text_model")
    vision_prefixes: tuple[str, ...] = ("visual", "vision_tower", "vision_model", "multi_modal_projector", "connector")
    language_targets: tuple[str, ...] = LANGUAGE_PROJECTIONS
    vision_targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2")
    needs_mm_token_type_ids: bool = False
    extra: dict = field(default_factory=dict, compare=False)

    def lora_target_regex(self, vision: bool = False) -> str:
        """A PEFT ``target_modules`` regex (full match on module names) for this family.

        Language-model projections only, unless ``vision`` adds the vision tower's linears.
        """
        parts = [_scoped(self.language_prefixes, self.language_targets)]
        if vision:
            parts.append(_scoped(self.vision_prefixes, self.vision_targets))
        return "|".join(f"(?:{part})" for part in parts)


def _scoped(prefixes, names) -> str:
    # "<anything.>(prefix).<anything.>name" anchored at both ends: PEFT uses re.fullmatch.
    return rf"^(?:.*\.)?(?:{'|'.join(map(re.escape, prefixes))})\.(?:.*\.)?(?:{'|'.join(map(re.escape, names))})$"


QWEN2_VL = Family(
    name="qwen2_vl",
    model_types=("qwen2_vl", "qwen2_5_vl"),
    image_placeholder="<|vision_start|><|image_pad|><|vision_end|>",
    # Qwen2-VL's vision blocks use fused "qkv" and "proj" in attention, fc1/fc2 in the MLP,
    # and the merger's mlp.0/mlp.2 (Qwen2.5-VL: gate/up/down_proj in the vision MLP).
    vision_targets=("qkv", "proj", "fc1", "fc2", "gate_proj", "up_proj", "down_proj"),
    needs_mm_token_type_ids=True,
)

LLAVA = Family(name="llava", model_types=("llava",), image_placeholder="<image>")

IDEFICS3 = Family(name="idefics3", model_types=("idefics3", "smolvlm"), image_placeholder="<image>")

GENERIC = Family(name="generic", model_types=(), image_placeholder="<image>")

FAMILIES = {family.name: family for family in (QWEN2_VL, LLAVA, IDEFICS3)}


def family_for_model_type(model_type: str | None) -> Family:
    """The family of a ``config.model_type``; :data:`GENERIC` with a warning when unknown."""
    for family in FAMILIES.values():
        if model_type in family.model_types:
            return family
    logger.warning(
        "model type %r is not one lis-align knows (%s); using generic defaults: '<image>' placeholder, "
        "LoRA on *_proj modules of the language model. Check the trainable-parameter report.",
        model_type, ", ".join(sorted(t for f in FAMILIES.values() for t in f.model_types)),
    )
    return GENERIC


def get_family(family: "str | Family") -> Family:
    """Accept a :class:`Family`, a family name or a model type."""
    if isinstance(family, Family):
        return family
    if family in FAMILIES:
        return FAMILIES[family]
    if family == "generic":
        return GENERIC
    return family_for_model_type(family)


DEFAULT_PROMPT = "{image}Title: {text}\nSummarise this item in one word:"


def format_prompt(family: "str | Family", text: str, template: str = DEFAULT_PROMPT) -> str:
    """The plain-text prompt of one item: image placeholder, item text, the compression ask.

    A plain prompt rather than a chat template: the tiny models have none, and a fixed
    prompt keeps the embedding of a checkpoint stable across transformers versions. For
    instruction-tuned checkpoints pass a ``template`` in their chat format.
    """
    return template.format(image=get_family(family).image_placeholder, text=text)
