"""File names that one module writes and another reads, defined once."""

MANIFEST = "manifest.json"  # the shards folder's index (data_prep.shards)
TOKENIZER_FILE = "tokenizer.json"  # a Hugging Face tokenizers file
CHECKPOINT_META = "crucible.json"  # a published checkpoint's metadata and file hashes
UNIVERSAL = ".universal"  # DeepSpeed universal checkpoints converted from ours, cached per step
UNIVERSAL_FILES = "universal.json"  # a cached universal checkpoint's file list and hashes, written when built
PREP_STATS = "stats.json"  # a prep output's counts per stage (published last: prep is done when it exists)
POST_DATA_STATS = "stats.json"  # a post-training run's data/ counts: records kept, tokens added (training.post)
METRICS_LOG = "metrics.jsonl"  # a training run's record per logged step
EVENTS_LOG = "events.jsonl"  # a training run's saves, resumes, rollbacks and signals
CHECKPOINTS = "checkpoints"  # a training run's checkpoint folders, step-N
LATEST = "latest"  # the pointer file (in CHECKPOINTS) to the newest published checkpoint
