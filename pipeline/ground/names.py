"""File names that one module writes and another reads, defined once."""

MANIFEST = "manifest.json"  # the shards folder's index (data_prep.shards)
TOKENIZER_FILE = "tokenizer.json"  # a Hugging Face tokenizers file
CHECKPOINT_META = "crucible.json"  # a published checkpoint's metadata and file hashes
UNIVERSAL = ".universal"  # DeepSpeed universal checkpoints converted from ours, cached per step
