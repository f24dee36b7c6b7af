"""The toy world: ten words, three sentences, a 4-wide one-layer model, trained by the real trainer.

"cat sat on the mat END dog is happy END cat is sad END" is small enough to learn completely in
seconds on a CPU, so its greedy generations show at a glance that the whole path (shards, the
trainer, checkpoints, generation) works: from "cat" and "dog" it writes sentences of its corpus.
`run` trains it beside the main job and puts its generations in the report. Its special tokens
are not the defaults ("END" ends a document, id 9; padding is id 10).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from data_prep.shards import ShardManifest, SplitIndex, TokenizerRecord, write_manifest, write_shard
from pipeline.child_run import run_crucible
from pipeline.ground.hashing import file_sha256
from pipeline.ground.layout import TrainFolder
from pipeline.ground.names import CHECKPOINT_META, TOKENIZER_FILE

WORDS = ["cat", "dog", "sat", "on", "the", "mat", "is", "happy", "sad", "END"]
SENTENCES = ["cat sat on the mat END", "dog is happy END", "cat is sad END"]
STEPS = 400
TRAINING = [
    "model.preset=null",
    "model.d_model=4",
    "model.n_layers=1",
    "model.n_heads=1",
    "model.n_kv_heads=1",
    "model.ffn_hidden=16",
    "model.vocab_multiple=1",
    "model.tie_embeddings=false",
    f"train.max_steps={STEPS}",
    "train.lr=0.05",
    "train.min_lr=0.005",
    "train.warmup_steps=10",
    "train.weight_decay=0",
    "train.global_batch_size=4",
    "train.micro_batch_size=4",
    "train.log_interval=100",
    f"train.eval_interval={STEPS}",
    "train.peak_tflops=1",
    "checkpoint.interval=0",
    "rollback.enabled=false",
]


def toy_shards(folder: Path) -> Path:
    """Shards of the three sentences (one row holds all three), with a word-level tokenizer."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {word: i for i, word in enumerate(WORDS + ["<|pad|>"])}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<|pad|>"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(folder / TOKENIZER_FILE))
    ids = [vocab[w] for sentence in SENTENCES for w in sentence.split()]
    starts = np.array([0] + [i + 1 for i, t in enumerate(ids[:-1]) if t == vocab["END"]], dtype=np.int32)
    row = np.array(ids, dtype=np.uint32)[None]
    splits = {}
    for split, copies in (("train", 16), ("val", 4)):
        entry = write_shard(
            folder / split / f"{split}-00000-000.arrow", row.repeat(copies, 0), [starts] * copies, len(vocab)
        )
        splits[split] = SplitIndex(
            documents=3 * copies, tokens=row.size * copies, sequences=copies, padding=0, remainder=0, shards=[entry]
        )
    write_manifest(
        folder,
        ShardManifest(
            seq_len=len(ids) - 1,
            row_width=len(ids),
            packing="concat",
            token_type="uint16",
            tokenizer=TokenizerRecord(
                file=TOKENIZER_FILE,
                sha256=file_sha256(folder / TOKENIZER_FILE),
                vocab_size=len(vocab),
                eod_id=vocab["END"],
                pad_id=vocab["<|pad|>"],
            ),
            splits=splits,
            prep_config={},
        ),
    )
    return folder


def final_checkpoint(folder: Path) -> Path:
    from training.checkpoint import tag_for

    return TrainFolder(folder / "run").checkpoint(tag_for(STEPS))


def train_toy_world(folder: Path) -> Path:
    """Make the shards in FOLDER/shards and train on them in one process into FOLDER/run (once: training
    is deterministic, so a rerun finds the same final checkpoint)."""
    if (final_checkpoint(folder) / CHECKPOINT_META).exists():
        return final_checkpoint(folder)
    shards = toy_shards(folder / "shards")
    run_crucible(
        ["train", "--data", str(shards), "--output", str(folder / "run"), "--resume", "none"],
        TRAINING,
        "the toy world did not train",
    )
    return final_checkpoint(folder)


def toy_generations(checkpoint: Path) -> list[tuple[str, str]]:
    """Greedy continuations of "cat" and "dog", up to and without END."""
    from training.config import SamplesConfig
    from training.generate import sample_texts

    greedy = SamplesConfig(prompts=["cat", "dog"], max_new_tokens=8, temperature=0)
    return sample_texts(checkpoint, checkpoint.parents[2] / "shards" / TOKENIZER_FILE, greedy)
