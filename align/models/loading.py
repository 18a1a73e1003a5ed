"""Load any Hugging Face VLM with its processor and our family facts.

``load_vlm`` is the one entry point: a Hub id or a local folder (a real checkpoint or one
written by ``lis-align model tiny``) goes in, ``(model, processor, family)`` comes out.

Where torchvision is missing (our CPU test machines), transformers 5.x cannot build a
Qwen2-VL processor at all: its video processor needs torchvision and ``ProcessorMixin``
insists on every sub-processor. :class:`Qwen2VLImageOnlyProcessor` is the same processor
with the video processor dropped (its ``__init__`` signature no longer names one, which is
how ``ProcessorMixin.get_attributes`` decides what a processor holds). Images are processed
identically; videos are not supported by it.
"""
from __future__ import annotations

import functools
import logging

import torch

from align.models.families import Family, family_for_model_type
from lis.errors import ConfigError

logger = logging.getLogger(__name__)


@functools.lru_cache(maxsize=None)  # one class, so isinstance checks hold
def _qwen2_vl_image_only_class():
    from transformers import Qwen2VLProcessor

    class Qwen2VLImageOnlyProcessor(Qwen2VLProcessor):
        """Qwen2-VL processor without a video processor (no torchvision needed). Images only."""

        def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
            # The parent passes (image, tokenizer, video) positionally; ProcessorMixin zips
            # them with *our* attributes, so the None video processor is simply dropped.
            super().__init__(image_processor, tokenizer, None, chat_template=chat_template, **kwargs)

        def to_dict(self):
            # Save as the standard class so the folder loads anywhere like a real checkpoint.
            output = super().to_dict()
            output["processor_class"] = "Qwen2VLProcessor"
            return output

    return Qwen2VLImageOnlyProcessor


def make_qwen2_vl_processor(image_processor, tokenizer, chat_template=None):
    """A Qwen2-VL processor from its parts: the full one when torchvision is installed."""
    from transformers.utils import is_torchvision_available

    if is_torchvision_available():
        from transformers import Qwen2VLProcessor, Qwen2VLVideoProcessor

        return Qwen2VLProcessor(
            image_processor=image_processor, tokenizer=tokenizer,
            video_processor=Qwen2VLVideoProcessor(
                patch_size=image_processor.patch_size, merge_size=image_processor.merge_size,
                temporal_patch_size=image_processor.temporal_patch_size,
            ),
            chat_template=chat_template,
        )
    return _qwen2_vl_image_only_class()(image_processor=image_processor, tokenizer=tokenizer, chat_template=chat_template)


def load_processor(path_or_id: str, family: Family, **kwargs):
    """``AutoProcessor.from_pretrained`` with the Qwen2-VL no-torchvision fallback."""
    from transformers import AutoProcessor

    try:
        return AutoProcessor.from_pretrained(path_or_id, **kwargs)
    except (OSError, ValueError, ImportError, AttributeError, TypeError) as error:
        from transformers.utils import is_torchvision_available

        if family.name != "qwen2_vl" or is_torchvision_available():
            raise
        logger.info("AutoProcessor failed without torchvision (%s); building the image-only Qwen2-VL processor", error)
    from transformers import AutoImageProcessor, AutoTokenizer

    return make_qwen2_vl_processor(
        AutoImageProcessor.from_pretrained(path_or_id, **kwargs), AutoTokenizer.from_pretrained(path_or_id, **kwargs)
    )


def resolve_dtype(dtype):
    """``'auto'`` -> bf16 on a CUDA device that supports it, else float32; strings -> torch dtypes."""
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    try:
        return {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16,
                "float16": torch.float16, "fp32": torch.float32, "float32": torch.float32}[dtype]
    except KeyError:
        raise ConfigError(f"dtype: expected auto, bf16, fp16 or fp32; got {dtype!r}.") from None


def load_vlm(path_or_id: str, dtype=None, attn_implementation: str | None = None, **kwargs):
    """Load a VLM, its processor and its :class:`Family`.

    Args:
        path_or_id: Hub id or local folder.
        dtype: ``None`` (checkpoint default as transformers loads it), ``'auto'`` (bf16 on a CUDA
            device with bf16 support, float32 otherwise), a string (``bf16``/``fp16``/``fp32``)
            or a ``torch.dtype``.
        attn_implementation: passed through (``sdpa``, ``eager``, ``flash_attention_2``...).
        **kwargs: passed to both ``from_pretrained`` calls (``revision``, ``local_files_only``...).

    Returns:
        ``(model, processor, family)``. The model is tried as ``AutoModelForImageTextToText``
        first, then ``AutoModel`` (for checkpoints registered only there). It is returned
        in eval mode; callers switch to train mode.

    Limits: remote code is not trusted (``trust_remote_code`` is not set); a checkpoint that
    needs it fails with transformers' own error.
    """
    from transformers import AutoConfig, AutoModel, AutoModelForImageTextToText

    try:
        config = AutoConfig.from_pretrained(path_or_id, **kwargs)
    except OSError as error:  # "not a local folder nor a Hub id", or offline: bad input, not a bug
        from lis.errors import DataError, first_line

        raise DataError(f"{path_or_id}: cannot load the model config ({first_line(error)}); check model.path.") from None
    family = family_for_model_type(getattr(config, "model_type", None))
    model_kwargs = dict(kwargs)
    resolved = resolve_dtype(dtype)
    if resolved is not None:
        model_kwargs["dtype"] = resolved
    if attn_implementation is not None:
        model_kwargs["attn_implementation"] = attn_implementation
    try:
        model = AutoModelForImageTextToText.from_pretrained(path_or_id, **model_kwargs)
    except ValueError as error:  # "Unrecognized configuration class ... for this kind of AutoModel"
        logger.info("AutoModelForImageTextToText cannot load %s (%s); trying AutoModel", path_or_id, error)
        model = AutoModel.from_pretrained(path_or_id, **model_kwargs)
    processor = load_processor(path_or_id, family, **kwargs)
    model.eval()
    return model, processor, family
