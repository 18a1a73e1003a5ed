"""Tiny randomly initialised VLMs of real architectures, built offline in about a second.

``build_tiny_vlm(family, out_dir)`` writes a folder that loads exactly like a downloaded
checkpoint (``AutoModelForImageTextToText.from_pretrained`` + ``AutoProcessor.from_pretrained``;
for Qwen2-VL without torchvision use :func:`align.models.loading.load_vlm`, see there).
Tests and the CPU demo use it so the code path is the one a real checkpoint takes.

Sizes: hidden 64, 2 decoder layers, 4 heads (2 KV heads), a 2-layer vision tower, 64-px
images giving 16 (Qwen2-VL, LLaVA) or 4 (Idefics3) image tokens; 0.2-0.4M parameters.
The tokenizer is a byte-level BPE trained on the catalogue's text (a generic tokenizer split
titles into ~5x more tokens and made steps 1.75x slower; docs/design.md, "The tiny model"), or on a small
built-in corpus. Everything is seeded: the same arguments give the same bytes of weights.

Limits: no chat template is saved (prompts are plain text, see ``families.format_prompt``);
Idefics3 is built with image splitting off (one global image per item).
"""
from __future__ import annotations

from pathlib import Path

from align.models.families import DEFAULT_PROMPT
from lis.errors import ConfigError, DataError

TINY_FAMILIES = ("qwen2_vl", "llava", "idefics3")

HIDDEN = 64
LAYERS = 2
HEADS = 4
KV_HEADS = 2
INTERMEDIATE = 128
VISION_HIDDEN = 32
SEED = 0

# A built-in corpus for when no catalogue is given: product-like titles.
_BUILTIN_CORPUS = [
    f"{adjective} {material} {thing} for {use}"
    for adjective in ("red", "blue", "green", "black", "white", "small", "large", "vintage", "modern", "soft")
    for material in ("cotton", "leather", "steel", "wooden", "glass", "wool")
    for thing in ("shirt", "shoes", "bag", "lamp", "chair", "mug", "watch", "jacket")
    for use in ("running", "the kitchen", "travel", "work", "kids")
]

_QWEN_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                  "<|image_pad|>", "<|video_pad|>"]
_LLAVA_SPECIALS = ["<pad>", "<s>", "</s>", "<image>"]
_IDEFICS3_SPECIALS = ["<pad>", "<s>", "</s>", "<image>", "<fake_token_around_image>", "<global-img>",
                      "<end_of_utterance>"] + [f"<row_{i}_col_{j}>" for i in range(1, 7) for j in range(1, 7)]


def read_corpus(catalogue: str | Path | None) -> list[str]:
    """Item texts of a catalogue (a data dir, or a .parquet/.csv/.jsonl file); built-in corpus if None."""
    if catalogue is None:
        return list(_BUILTIN_CORPUS)
    import pandas as pd

    path = Path(catalogue)
    if path.is_dir():
        path = path / "catalogue.parquet"
    if not path.exists():
        raise DataError(f"{path}: catalogue not found.")
    readers = {".parquet": pd.read_parquet, ".csv": pd.read_csv, ".jsonl": lambda p: pd.read_json(p, lines=True)}
    if path.suffix not in readers:
        raise DataError(f"{path.name}: expected a .parquet, .csv or .jsonl catalogue (or a data dir).")
    frame = readers[path.suffix](path)
    if "text" not in frame.columns:
        raise DataError(f"{path.name}: column 'text' is missing; columns are {list(frame.columns)}.")
    texts = [str(t) for t in frame["text"].dropna()]
    if not texts:
        raise DataError(f"{path.name}: column 'text' holds no text to train the tokenizer on.")
    return texts


def train_tokenizer(texts: list[str], specials: list[str], vocab_size: int = 1024):
    """A byte-level BPE trained on ``texts`` (about a second), wrapped for transformers.

    Special tokens come first, so their ids are 0..len(specials)-1 in the given order.
    Padding is on the left: the last position of every row is then a real token.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    if vocab_size < len(specials) + 257:
        raise ConfigError(f"--vocab-size: must be at least {len(specials) + 257} (bytes + special tokens); got {vocab_size}.")
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, padding_side="left")


def _wrap_tokenizer(family: str, texts: list[str], vocab_size: int):
    if family == "qwen2_vl":
        tok = train_tokenizer(texts, _QWEN_SPECIALS, vocab_size)
        tok.add_special_tokens({"eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>"})
        return tok
    tok = train_tokenizer(texts, _LLAVA_SPECIALS if family == "llava" else _IDEFICS3_SPECIALS, vocab_size)
    tok.add_special_tokens({"pad_token": "<pad>", "bos_token": "<s>", "eos_token": "</s>"})
    return tok


def _text_kwargs(tok) -> dict:
    return dict(
        vocab_size=len(tok), hidden_size=HIDDEN, intermediate_size=INTERMEDIATE, num_hidden_layers=LAYERS,
        num_attention_heads=HEADS, num_key_value_heads=KV_HEADS, max_position_embeddings=1024,
        pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id,
        tie_word_embeddings=False,
    )


def _build_qwen2_vl(tok, image_size: int):
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    from align.models.loading import make_qwen2_vl_processor

    patch, merge = 8, 2
    text = _text_kwargs(tok)
    # M-RoPE splits head_dim/2 rotary frequencies into (temporal, height, width) sections.
    text["rope_parameters"] = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]}
    ids = {t: tok.convert_tokens_to_ids(t) for t in _QWEN_SPECIALS}
    config = Qwen2VLConfig(
        text_config=text,
        vision_config=dict(depth=LAYERS, embed_dim=VISION_HIDDEN, hidden_size=HIDDEN, num_heads=2, mlp_ratio=2,
                           patch_size=patch, spatial_merge_size=merge, temporal_patch_size=2),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
    )
    # Pixel bounds pin every image to image_size x image_size -> (image_size/patch)^2/merge^2 tokens.
    pixels = image_size * image_size
    image_processor = Qwen2VLImageProcessorPil(
        size={"shortest_edge": pixels, "longest_edge": pixels},
        patch_size=patch, merge_size=merge, temporal_patch_size=2,
    )
    return Qwen2VLForConditionalGeneration(config), make_qwen2_vl_processor(image_processor, tok)


def _build_llava(tok, image_size: int):
    from transformers import CLIPImageProcessor, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor

    patch = 16
    text = _text_kwargs(tok)
    text["model_type"] = "llama"
    config = LlavaConfig(
        text_config=text,
        vision_config=dict(model_type="clip_vision_model", hidden_size=VISION_HIDDEN, intermediate_size=2 * VISION_HIDDEN,
                           num_hidden_layers=LAYERS, num_attention_heads=2, image_size=image_size, patch_size=patch,
                           projection_dim=VISION_HIDDEN),
        image_token_index=tok.convert_tokens_to_ids("<image>"),
        image_seq_length=(image_size // patch) ** 2,
        vision_feature_layer=-1, vision_feature_select_strategy="default",
    )
    image_processor = CLIPImageProcessor(size={"shortest_edge": image_size},
                                         crop_size={"height": image_size, "width": image_size})
    processor = LlavaProcessor(image_processor=image_processor, tokenizer=tok, patch_size=patch,
                               vision_feature_select_strategy="default", num_additional_image_tokens=1,
                               image_token="<image>")
    return LlavaForConditionalGeneration(config), processor


def _build_idefics3(tok, image_size: int):
    from transformers import Idefics3Config, Idefics3ForConditionalGeneration, Idefics3ImageProcessor, Idefics3Processor

    patch, scale = 16, 2
    text = _text_kwargs(tok)
    text["model_type"] = "llama"
    config = Idefics3Config(
        text_config=text,
        vision_config=dict(hidden_size=VISION_HIDDEN, intermediate_size=2 * VISION_HIDDEN, num_hidden_layers=LAYERS,
                           num_attention_heads=2, image_size=image_size, patch_size=patch),
        image_token_id=tok.convert_tokens_to_ids("<image>"), scale_factor=scale, pad_token_id=tok.pad_token_id,
    )
    image_processor = Idefics3ImageProcessor(
        do_image_splitting=False, size={"longest_edge": image_size}, max_image_size={"longest_edge": image_size},
    )
    processor = Idefics3Processor(image_processor=image_processor, tokenizer=tok,
                                  image_seq_len=(image_size // patch) ** 2 // scale**2)
    return Idefics3ForConditionalGeneration(config), processor


_BUILDERS = {"qwen2_vl": _build_qwen2_vl, "llava": _build_llava, "idefics3": _build_idefics3}


def build_tiny_vlm(family: str, out_dir: str | Path | None = None, catalogue=None, vocab_size: int = 1024,
                   image_size: int = 64, seed: int = SEED):
    """Build (and save, when ``out_dir`` is given) a tiny random VLM of ``family``.

    Args:
        family: ``qwen2_vl``, ``llava`` or ``idefics3``.
        out_dir: folder to write; written atomically (a crash leaves no half folder).
        catalogue: data dir or catalogue file whose ``text`` column trains the tokenizer;
            ``None`` uses a built-in corpus.
        vocab_size: BPE vocabulary target (the trainer stops earlier on a small corpus).
        image_size: image side in pixels; a multiple of 16.
        seed: weights' seed.

    Returns:
        ``(model, processor)``, the model in eval mode.
    """
    import torch

    if family not in _BUILDERS:
        raise ConfigError(f"--family: expected one of {', '.join(TINY_FAMILIES)}; got {family!r}.")
    if image_size <= 0 or image_size % 16:
        raise ConfigError(f"--image-size: must be a positive multiple of 16; got {image_size}.")
    # The prompt's own words join the corpus so they are single tokens too.
    prompt_words = [DEFAULT_PROMPT.format(image="", text="")] * 50
    tok = _wrap_tokenizer(family, read_corpus(catalogue) + prompt_words, vocab_size)
    torch.manual_seed(seed)
    model, processor = _BUILDERS[family](tok, image_size)
    model.eval()
    if out_dir is not None:
        save_tiny(model, processor, out_dir, family)
    return model, processor


def save_tiny(model, processor, out_dir, family: str) -> None:
    from lis.atomic import atomic_path, write_json

    with atomic_path(out_dir) as tmp:
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        write_json(Path(tmp) / "lis_tiny.json", {
            "family": family, "parameters": sum(p.numel() for p in model.parameters()),
            "note": "randomly initialised by `lis-align model tiny`; for tests and demos only",
        })


def count_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())

