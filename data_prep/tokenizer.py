"""Tokenizer: train a byte-level BPE on the clean documents, or use a given tokenizer.json.

Byte-level BPE never meets an unknown character and decodes back to the exact input text,
which the packing and the round-trip tests rely on. The result is saved in the `tokenizers`
library's own `tokenizer.json`, so users can load it anywhere without Crucible.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pydantic import Field, field_validator

from data_prep.books import source_file
from data_prep.stage import (
    ID,
    LANG,
    TEXT,
    TOKEN_COUNTS,
    TOKENIZER,
    StageSpec,
    StepSpec,
    TaskContext,
    single,
    tasks_done,
)
from pipeline.ground.atomic import atomic_path
from pipeline.ground.errors import UserError
from pipeline.ground.hashing import file_sha256, uniform
from pipeline.ground.names import TOKENIZER_FILE
from pipeline.ground.schema import Section

TRAIN, TOKENIZE = "tokenize.train", "tokenize"
EOD = "<|endoftext|>"
PAD = "<|pad|>"


class TokenizerConfig(Section):
    """Train a tokenizer (vocab_size, ...) or load one from `path`."""

    path: Path | None = Field(None, description="An existing tokenizer.json; skips training.")
    vocab_size: int = Field(8192, ge=260, le=2**20, description="Target vocabulary, special tokens included.")
    min_frequency: int = Field(2, ge=1, description="Pairs seen fewer times are not merged.")
    max_train_bytes: int = Field(
        500_000_000,
        ge=1000,
        description="Train on a deterministic sample of the clean documents of at most about this many UTF-8 bytes "
        "(drawn by document id, independently of the validation split).",
    )
    eod_token: str = EOD
    pad_token: str = PAD
    extra_special_tokens: list[str] = Field(default_factory=list)

    @field_validator("path")
    @classmethod
    def _exists(cls, path: Path | None) -> Path | None:
        if path is not None and not path.is_file():
            raise ValueError(f"tokenizer file {path} does not exist")
        return path

    def fingerprint(self) -> dict[str, Any]:
        """A given tokenizer counts by its content, so editing the file reruns tokenize and pack."""
        identity = super().fingerprint()
        if self.path is not None:
            identity["file_sha256"] = file_sha256(self.path)
        return identity


def train_tokenizer(texts: Iterable[str], config: TokenizerConfig):  # -> tokenizers.Tokenizer
    """Byte-level BPE over `texts`, deterministic for one input."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=config.vocab_size,
        min_frequency=config.min_frequency,
        special_tokens=[config.eod_token, config.pad_token, *config.extra_special_tokens],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer)
    return tokenizer


def load_tokenizer(path: Path):  # -> tokenizers.Tokenizer
    """The tokenizer saved at `path`; a file `tokenizers` cannot load is one line, not its exception."""
    from tokenizers import Tokenizer

    try:
        return Tokenizer.from_file(str(path))
    except Exception as exc:  # tokenizers raises a bare Exception for any bad file
        detail = (str(exc).splitlines() or ["unreadable"])[0][:200]
        raise UserError(
            f"tokenizer {path} is not a tokenizer.json the `tokenizers` library can load ({detail})"
        ) from None


def special_ids(tokenizer, config: TokenizerConfig) -> tuple[int, int]:
    """(end-of-document id, padding id); a given tokenizer must define both tokens."""
    ids = []
    for token in (config.eod_token, config.pad_token):
        token_id = tokenizer.token_to_id(token)
        if token_id is None:
            raise UserError(f"tokenizer has no {token!r} token: set prep.tokenizer.eod_token/pad_token to its own")
        ids.append(token_id)
    return ids[0], ids[1]


# ---- steps ----------------------------------------------------------------------------------


def tokenizer_file(config: Any, train_folder: Path) -> Path:
    """The tokenizer of a prep run: the given file, or the one its train step wrote into `train_folder`."""
    return config.tokenizer.path or train_folder / TOKENIZER_FILE


def tokens_file(tokenize_folder: Path, task: int) -> Path:
    return tokenize_folder / f"tokens-{task:05d}.arrow"


def _batches(ctx: TaskContext, columns: list[str]) -> Iterator[pa.RecordBatch]:
    for i in range(len(ctx.shards)):
        yield from pq.ParquetFile(source_file(ctx, i)).iter_batches(batch_size=ctx.config.batch_size, columns=columns)


SAMPLE_SALT = b"tokenizer"  # the sample's own draw: pack's validation split (unsalted) must not pick the same documents


def in_sample(doc_id: str, rate: float) -> bool:
    """Whether the tokenizer trains on document `doc_id` when it samples at `rate`: fixed by the id,
    so every run draws the same sample, and independent of the validation split."""
    return rate >= 1.0 or uniform(doc_id, SAMPLE_SALT) < rate


class TrainingSample:
    """The clean documents the tokenizer trains on: all of them when they fit in `max_bytes`,
    else each with probability max_bytes / total (by its id), in corpus order, up to `max_bytes`.
    Streamed, so training never holds the corpus."""

    def __init__(self, ctx: TaskContext, max_bytes: int) -> None:
        self.ctx, self.max_bytes = ctx, max_bytes
        total = sum(pc.sum(pc.binary_length(b.column(0).cast(pa.binary()))).as_py() or 0 for b in _batches(ctx, [TEXT]))
        self.rate = max_bytes / total if total > max_bytes else 1.0
        self.documents = self.bytes = 0

    def __iter__(self) -> Iterator[str]:
        for batch in _batches(self.ctx, [ID, TEXT]):
            ids, texts = batch.column(0).to_pylist(), batch.column(1).to_pylist()
            for doc_id, text in zip(ids, texts):
                if self.bytes >= self.max_bytes:
                    return
                if not in_sample(doc_id, self.rate):
                    continue
                self.documents += 1
                self.bytes += len(text.encode())
                yield text


def run_train(ctx: TaskContext) -> dict[str, Any]:
    """Train the tokenizer on the clean documents (one task), or check the given one."""
    cfg = ctx.settings
    counts: dict[str, int] = {}
    if cfg.path is None:
        sample = TrainingSample(ctx, cfg.max_train_bytes)
        tokenizer = train_tokenizer(sample, cfg)
        with atomic_path(ctx.folder / TOKENIZER_FILE) as tmp:
            tokenizer.save(str(tmp))
        counts = {"tokenizer_train_documents": sample.documents, "tokenizer_train_bytes": sample.bytes}
    tokenizer = load_tokenizer(tokenizer_file(ctx.config, ctx.folder))
    special_ids(tokenizer, cfg)  # a given tokenizer must have the special tokens
    ctx.report(1)
    return {"tokens": {"vocab_size": tokenizer.get_vocab_size()} | counts}


_ENCODERS: dict[str, Any] = {}


def encoder(path: Path) -> Any:
    """The tokenizer at `path` for encoding documents, loaded once per worker process."""
    if str(path) not in _ENCODERS:
        tokenizer = load_tokenizer(path)
        tokenizer.encode_special_tokens = True  # "<|endoftext|>" typed in a document is just text
        _ENCODERS[str(path)] = tokenizer
    return _ENCODERS[str(path)]


def run_tokenize(ctx: TaskContext) -> dict[str, Any]:
    """Encode one shard's documents, each followed by the end-of-document token."""
    tokenizer = encoder(tokenizer_file(ctx.config, ctx.folder_of(TRAIN)))
    eod, _ = special_ids(tokenizer, ctx.settings)
    ids: list[str] = []
    langs: list[str | None] = []
    token_lists: list[np.ndarray] = []
    parquet = pq.ParquetFile(source_file(ctx))
    carry_lang = LANG in parquet.schema_arrow.names  # langid's label rides along, for pack's language split
    for batch in parquet.iter_batches(batch_size=ctx.config.batch_size, columns=[ID, TEXT, *[LANG] * carry_lang]):
        encodings = tokenizer.encode_batch_fast(batch.column(1).to_pylist(), add_special_tokens=False)
        ids.extend(batch.column(0).to_pylist())
        if carry_lang:
            langs.extend(batch.column(2).to_pylist())
        token_lists.extend(np.array(e.ids + [eod], dtype=np.uint32) for e in encodings)
        ctx.report(batch.num_rows)
    lengths = np.array([len(t) for t in token_lists], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    flat = np.concatenate(token_lists) if token_lists else np.zeros(0, np.uint32)
    table = pa.table(
        {
            ID: pa.array(ids, pa.string()),
            "tokens": pa.LargeListArray.from_arrays(pa.array(offsets), pa.array(flat)),
            **({LANG: pa.array(langs, pa.string())} if carry_lang else {}),
        }
    )
    with atomic_path(tokens_file(ctx.folder, ctx.task)) as tmp:
        with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
            writer.write_table(table)
    return {"tokens": {"documents": len(ids), "tokens": int(lengths.sum())}}


STAGE = StageSpec(
    TOKENIZE,
    TokenizerConfig,
    (
        StepSpec(".train", run_train, tasks=single, unit="task", units=tasks_done, publishes=(TOKEN_COUNTS, TOKENIZER)),
        StepSpec("", run_tokenize, reads=(TRAIN,), publishes=(TOKEN_COUNTS,)),
    ),
    section="tokenizer",
)
