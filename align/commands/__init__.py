"""Command-line commands of training, export and publishing, one module each.

Handlers import transformers/peft lazily so `lis-align --help` stays fast."""
