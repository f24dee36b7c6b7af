"""The training-data format: Arrow IPC shards of packed rows and the manifest that vouches for them.

Shards are uncompressed Arrow IPC files so the loader can memory-map them and read a row without
copying; each holds `tokens` (fixed-size list of seq_len + 1 token ids) and `segment_starts`
(where documents begin inside the row). `manifest.json` lists every shard with its row and
token counts, size and SHA-256, plus the tokenizer's hash and seq_len, so a trainer can refuse
data that does not match it: the sizes before it starts (a stat per file, whatever the number of
shards), a shard's hash when it first reads the shard. docs/FORMAT.md is the reference.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from pipeline.ground.contract import Record, read_versioned
from pipeline.ground.atomic import atomic_path
from pipeline.ground.errors import UserError
from pipeline.ground.hashing import file_sha256
from pipeline.ground.names import MANIFEST

SCHEMA_VERSION = 1
ROWS_PER_BATCH = 1024


class ShardError(UserError):
    """Training data that cannot be used as it is; the message names the file."""


def token_type(vocab_size: int) -> pa.DataType:
    return pa.uint16() if vocab_size <= 2**16 else pa.uint32()


def shard_schema(width: int, vocab_size: int, per_token: dict[str, np.dtype] | None = None) -> pa.Schema:
    """`per_token`: the name and type of further columns of one value per token (post-training's loss mask)."""
    return pa.schema(
        [
            ("tokens", pa.list_(token_type(vocab_size), width)),
            ("segment_starts", pa.list_(pa.int32())),
            *((name, pa.list_(pa.from_numpy_dtype(dtype), width)) for name, dtype in (per_token or {}).items()),
        ]
    )


def write_shard(
    path: Path,
    tokens: np.ndarray,
    segment_starts: list[np.ndarray],
    vocab_size: int,
    per_token: dict[str, np.ndarray] | None = None,
) -> ShardEntry:
    """Write rows as one IPC file (atomically); return its manifest entry. `per_token`: further columns,
    each an array shaped like `tokens`."""
    width = tokens.shape[1]
    per_token = per_token or {}
    schema = shard_schema(width, vocab_size, {name: values.dtype for name, values in per_token.items()})
    flat_type = schema.field("tokens").type.value_type
    with atomic_path(path) as tmp:
        with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, schema) as writer:
            for start in range(0, len(tokens), ROWS_PER_BATCH):
                rows = tokens[start : start + ROWS_PER_BATCH]
                flat = pa.array(rows.reshape(-1).astype(flat_type.to_pandas_dtype()), flat_type)
                starts = segment_starts[start : start + ROWS_PER_BATCH]
                offsets = np.concatenate([[0], np.cumsum([len(s) for s in starts])]).astype(np.int32)
                values = np.concatenate(starts).astype(np.int32) if starts else np.zeros(0, np.int32)
                writer.write_batch(
                    pa.record_batch(
                        [
                            pa.FixedSizeListArray.from_arrays(flat, width),
                            pa.ListArray.from_arrays(pa.array(offsets), pa.array(values)),
                            *(
                                pa.FixedSizeListArray.from_arrays(
                                    pa.array(column[start : start + ROWS_PER_BATCH].reshape(-1)), width
                                )
                                for column in per_token.values()
                            ),
                        ],
                        schema=schema,
                    )
                )
    return ShardEntry(
        file=path.name,
        sequences=int(len(tokens)),
        tokens=int(tokens.size),
        bytes=path.stat().st_size,
        sha256=file_sha256(path),
    )


class TokenizerRecord(Record):
    """The tokenizer the shards were made with (its file beside the manifest), which checkpoints carry too."""

    file: str
    sha256: str
    vocab_size: int
    eod_id: int
    pad_id: int


class ShardEntry(Record):
    """One shard file; `source` and `language` tag it where prep mixed named sources or split by language."""

    file: str
    sequences: int
    tokens: int
    bytes: int
    sha256: str
    source: str | None = None
    language: str | None = None


class Counts(Record):
    documents: int = 0
    tokens: int = 0
    sequences: int = 0


class SourceCounts(Counts):
    languages: dict[str, Counts] | None = None


class SplitIndex(Counts):
    """A split's shards, its totals and, where tagged, its counts per language and per source."""

    padding: int = 0
    remainder: int = 0
    shards: list[ShardEntry] = []
    languages: dict[str, Counts] | None = None
    sources: dict[str, SourceCounts] | None = None


class ShardManifest(Record):
    """`manifest.json`: what a shards folder holds, the contract between prep (or post-training's
    packing) and the trainer. Version 1 is the only one written so far."""

    schema_version: int = SCHEMA_VERSION
    seq_len: int
    row_width: int
    packing: str
    token_type: str
    tokenizer: TokenizerRecord
    splits: dict[str, SplitIndex]
    prep_config: dict[str, Any] = {}

    def to_json(self) -> str:
        fields = self.model_dump(mode="json", exclude_unset=True)
        return json.dumps({"schema_version": self.schema_version} | fields, indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str, where: Path) -> ShardManifest:
        return read_versioned(cls, text, where, SCHEMA_VERSION, ShardError, "manifest")

    def split(self, name: str) -> SplitIndex:
        return self.splits.get(name) or SplitIndex()


def write_manifest(folder: Path, manifest: ShardManifest) -> None:
    with atomic_path(folder / MANIFEST) as tmp:
        tmp.write_text(manifest.to_json())


def read_manifest(folder: Path) -> ShardManifest:
    path = folder / MANIFEST
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ShardError(f"{path} not found: is {folder} a shards folder made by `prep`?") from None
    return ShardManifest.from_json(text, path)


def manifest_path(folder: Path) -> Path:
    """Where a shards folder's manifest is, for messages about it."""
    return Path(folder) / MANIFEST


def open_shard(path: Path, width: int, expected_rows: int) -> pa.Table:
    """Memory-map one shard and check its shape; errors name the file."""
    try:
        table = pa.ipc.open_file(pa.memory_map(str(path), "r")).read_all()
    except FileNotFoundError:
        raise ShardError(f"shard {path} is missing") from None
    except (pa.ArrowInvalid, OSError) as exc:
        raise ShardError(f"shard {path} is corrupt or truncated: {exc}") from None
    tokens_type = table.schema.field("tokens").type if "tokens" in table.column_names else None
    if tokens_type is None or getattr(tokens_type, "list_size", None) != width:
        raise ShardError(f"shard {path} does not hold rows of {width} tokens")
    if table.num_rows != expected_rows:
        raise ShardError(f"shard {path} has {table.num_rows} rows, the manifest says {expected_rows}")
    return table


def check_shard(path: Path, entry: ShardEntry, full: bool) -> None:
    """Check one file against its manifest entry: its size (one stat) and, with `full`, its SHA-256,
    which reads the whole file; a loader checks sizes at start and each hash when it first uses the shard."""
    try:
        size = path.stat().st_size
        if size != entry.bytes:
            raise ShardError(
                f"shard {path} has {size:,} bytes, the manifest says {entry.bytes:,} (truncated or modified)"
            )
        if full and file_sha256(path) != entry.sha256:
            raise ShardError(f"shard {path} does not match its manifest hash (corrupt or modified)")
    except FileNotFoundError:
        raise ShardError(f"shard {path} listed in the manifest is missing") from None
