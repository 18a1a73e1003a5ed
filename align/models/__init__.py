"""Model loading (any Hugging Face VLM), per-family facts, and tiny offline test models.

Import from the submodules: ``align.models.loading.load_vlm``, ``align.models.tiny.build_tiny_vlm``,
``align.models.families``. This package imports no transformers at import time.
"""
