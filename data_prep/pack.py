"""Sequence packing: documents of token ids -> fixed rows of seq_len + 1 tokens.

Rows hold seq_len + 1 tokens so a row gives both inputs (row[:-1]) and shifted targets
(row[1:]); rows do not overlap, so every token lands in exactly one row. Each row records where
its segments start (a document, or the continuation of one cut by a row boundary), which lets
the trainer reset positions and mask attention across documents.

- concat: documents back to back, cut every seq_len + 1 tokens; no padding, the tail that does
  not fill a row is the remainder (counted, not written).
- best_fit: documents no longer than a row are never split; they are placed whole into rows by
  best-fit decreasing, and rows are padded. Longer documents fill whole rows, and their tail is
  placed like a short document.
"""

from __future__ import annotations

from bisect import bisect_left, insort
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
from pydantic import Field

from data_prep import shards as shard_format
from data_prep.minhash.steps import CLUSTERS, MINHASH, split_groups
from data_prep.stage import ID, LANG, SHARD_FILES, TOKEN_COUNTS, StageSpec, StepSpec, TaskContext
from data_prep.tokenizer import TOKENIZE, TRAIN, encoder, load_tokenizer, special_ids, tokenizer_file, tokens_file
from pipeline.ground.hashing import hash64
from pipeline.ground.schema import Section

PACK = "pack"


@dataclass
class Packed:
    tokens: np.ndarray  # [rows, width]
    segment_starts: list[np.ndarray]  # per row, sorted offsets where a segment begins
    padding: int  # pad tokens written
    remainder: int  # tokens not written (concat's tail)


def pack_concat(docs: list[np.ndarray], width: int) -> Packed:
    lengths = np.array([len(d) for d in docs], dtype=np.int64)
    stream = np.concatenate(docs) if docs else np.zeros(0, dtype=np.uint32)
    rows = len(stream) // width
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]) if len(docs) else np.zeros(0, np.int64)
    starts = starts[starts < rows * width]
    row_of = starts // width
    bounds = np.searchsorted(row_of, np.arange(rows + 1))
    segments = []
    for row in range(rows):
        offsets = starts[bounds[row] : bounds[row + 1]] - row * width
        if len(offsets) == 0 or offsets[0] != 0:
            offsets = np.concatenate([[0], offsets])  # a row opening mid-document starts a segment
        segments.append(offsets.astype(np.int32))
    return Packed(stream[: rows * width].reshape(rows, width), segments, 0, len(stream) - rows * width)


def pack_best_fit(docs: list[np.ndarray], width: int, pad_id: int) -> Packed:
    full_rows: list[np.ndarray] = []
    pieces: list[np.ndarray] = []
    for doc in docs:
        n_full = len(doc) // width if len(doc) > width else 0
        full_rows.extend(doc[i * width : (i + 1) * width] for i in range(n_full))
        tail = doc[n_full * width :]
        if len(tail):
            pieces.append(tail)
    order = sorted(range(len(pieces)), key=lambda i: -len(pieces[i]))  # stable: ties keep input order
    bins: list[list[np.ndarray]] = []
    free: dict[int, list[int]] = {}  # remaining capacity -> bins with it (most recent last)
    capacities: list[int] = []  # sorted distinct capacities present in `free`
    for index in order:
        piece = pieces[index]
        slot = bisect_left(capacities, len(piece))
        if slot < len(capacities):
            capacity = capacities[slot]
            target = free[capacity].pop()
            if not free[capacity]:
                del free[capacity]
                capacities.pop(slot)
        else:
            capacity, target = width, len(bins)
            bins.append([])
        bins[target].append(piece)
        left = capacity - len(piece)
        if left:
            if left not in free:
                free[left] = []
                insort(capacities, left)
            free[left].append(target)
    tokens = np.full((len(full_rows) + len(bins), width), pad_id, dtype=docs[0].dtype if docs else np.uint32)
    segments = [np.zeros(1, np.int32) for _ in full_rows]
    for row, chunk in enumerate(full_rows):
        tokens[row] = chunk
    for offset_row, placed in enumerate(bins, start=len(full_rows)):
        lengths = np.array([len(p) for p in placed])
        tokens[offset_row, : lengths.sum()] = np.concatenate(placed)
        segments.append(np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int32))
    padding = len(bins) * width - sum(len(p) for p in pieces)
    return Packed(tokens, segments, padding, 0)


class PackConfig(Section):
    """Row length, packing method, the validation split and the shuffle seed."""

    seq_len: int = Field(256, ge=8, le=1 << 20, description="Tokens the model sees per row (rows hold seq_len + 1).")
    method: Literal["concat", "best_fit"] = "concat"
    val_fraction: float = Field(
        0.02,
        ge=0,
        lt=1,
        description="Share of documents held out for validation, "
        "near-duplicate groups whole (see minhash_dedup.split_group_threshold).",
    )
    seed: int = Field(1234, description="Seeds the document shuffle before packing.")
    max_shard_mb: float = Field(256, gt=0, le=4096, description="Largest shard file written.")
    split_by_language: bool = Field(
        False,
        description="Write each language's rows to shard files of their own, "
        "tagged `language` in the manifest (needs langid).",
    )


def is_validation(key: str, fraction: float) -> bool:
    """Hold out by a hash of a split key: stable, and independent of sharding."""
    return hash64(key) < fraction * 2**64  # unsalted, so earlier runs' splits stay as they were


UNDETERMINED = "und"  # ISO 639 "undetermined": the tag of documents langid did not label (a source skipping it)


def validation_rows(ctx: TaskContext, task: int, ids: list[str]) -> np.ndarray:
    """Which of shard `task`'s documents `ids` are held out. The key is a document's split group
    (near-duplicates, found by minhash_dedup, share one, so a group lands whole on one side), or
    its own id when it has none or minhash_dedup does not run. A step that calls it reads `SPLIT_READS`."""
    groups = split_groups(ctx.folder_of(CLUSTERS), task) if MINHASH in ctx.config.stages else {}
    return np.array([is_validation(groups.get(i, i), ctx.config.pack.val_fraction) for i in ids], dtype=bool)


SPLIT_READS = (CLUSTERS,)  # what `validation_rows` opens (where minhash_dedup runs)


def shard_file(pack_folder: Path, split: str, name: str) -> Path:
    """Where the pack step wrote shard `name` of `split` (publishing copies it from here)."""
    return pack_folder / split / name


def run_pack(ctx: TaskContext) -> dict[str, Any]:
    """Shuffle one shard's tokenized documents, split off validation, pack both splits into rows
    (with `split_by_language`, each language of the shard apart)."""
    cfg, tokenizer_path = ctx.settings, tokenizer_file(ctx.config, ctx.folder_of(TRAIN))
    vocab = load_tokenizer(tokenizer_path).get_vocab_size()
    _, pad = special_ids(encoder(tokenizer_path), ctx.config.tokenizer)
    table = pa.ipc.open_file(pa.memory_map(str(tokens_file(ctx.folder_of(TOKENIZE), ctx.task)))).read_all()
    ids = table[ID].to_pylist()
    lists = table["tokens"].combine_chunks()
    flat, offsets = lists.values.to_numpy(), lists.offsets.to_numpy()
    docs = [flat[offsets[i] : offsets[i + 1]] for i in range(len(ids))]
    order = np.random.default_rng([cfg.seed, ctx.task]).permutation(len(docs))
    held_out = validation_rows(ctx, ctx.task, ids)
    width = cfg.seq_len + 1
    rows_per_file = max(1, int(cfg.max_shard_mb * 2**20) // (width * shard_format.token_type(vocab).bit_width // 8))
    files: list[dict[str, Any]] = []
    counts: Counter[str] = Counter()
    per_language: dict[str, Counter[str]] = {}
    source = ctx.shards[ctx.task].source  # a shard holds one source: so does every file packed from it
    tag = {} if source is None else {"source": source}
    groups = _language_groups(table, order) if cfg.split_by_language else {None: order}
    for split in ("train", "val"):
        for language, members in groups.items():
            chosen = [docs[i] for i in members if held_out[i] == (split == "val")]
            packed = pack_best_fit(chosen, width, pad) if cfg.method == "best_fit" else pack_concat(chosen, width)
            stem = f"{split}-{ctx.task:05d}" + ("" if language is None else f"-{language}")
            for part, start in enumerate(range(0, len(packed.tokens), rows_per_file)):
                path = shard_file(ctx.folder, split, f"{stem}-{part:03d}.arrow")
                stop = start + rows_per_file
                entry = shard_format.write_shard(
                    path, packed.tokens[start:stop], packed.segment_starts[start:stop], vocab
                )
                files.append(
                    entry.model_dump(exclude_unset=True)
                    | {"split": split}
                    | tag
                    | ({} if language is None else {"language": language})
                )
            made = Counter(
                {
                    f"{split}_documents": len(chosen),
                    f"{split}_tokens": int(sum(len(d) for d in chosen)),
                    f"{split}_sequences": len(packed.tokens),
                    f"{split}_padding": packed.padding,
                    f"{split}_remainder": packed.remainder,
                }
            )
            counts.update(made)
            if language is not None:
                per_language.setdefault(language, Counter()).update(made)
            ctx.report(len(chosen))
    return (
        {"tokens": dict(counts), "files": files}
        | ({} if source is None else {"sources": {source: dict(counts)}})
        | ({"languages": {k: dict(v) for k, v in sorted(per_language.items())}} if cfg.split_by_language else {})
    )


def _language_groups(table: pa.Table, order: np.ndarray) -> dict[str | None, np.ndarray]:
    """The shuffled documents of each language (langid's `lang`; a source that skips langid has none),
    languages in sorted order."""
    found = table[LANG].to_pylist() if LANG in table.column_names else [None] * table.num_rows
    labels = np.array([lang or UNDETERMINED for lang in found], dtype=object)[order]
    return {lang: order[labels == lang] for lang in sorted(set(labels.tolist()))}


STAGE = StageSpec(
    PACK,
    PackConfig,
    (StepSpec("", run_pack, reads=(TRAIN, TOKENIZE, *SPLIT_READS), publishes=(TOKEN_COUNTS, SHARD_FILES)),),
    requires=(TOKENIZE,),
)
