"""align: LoRA fine-tuning of a Hugging Face VLM into an item-embedding model.

Model loading and pooling, LoRA, the contrastive loss, collation, the trainer, embedding
export, the LIS validation callback and Hub publishing. Depends on ``lis``; never the reverse.
Which module owns which concept, the checkpoint format and the training flow: docs/design.md.
"""
__version__ = "0.1.0"
