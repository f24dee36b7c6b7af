"""exact_dedup: drop documents whose whitespace-normalized text was already seen.

Three steps so that it scales out like near-dedupe: hash each shard in parallel, find the
duplicates over all hashes in one task (the first occurrence in input order is kept, so the
result does not depend on worker count; across named sources, the copy in the highest-priority
source first), then filter each shard by the list of duplicates.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pydantic import Field

from data_prep.books import run_removals_filter, source_column, source_file, source_priorities, write_removals
from data_prep.stage import ID, TEXT, StageSpec, StepSpec, TaskContext, single
from pipeline.ground.atomic import write_npy
from pipeline.ground.schema import Section

HASH, FIND = "exact_dedup.hash", "exact_dedup.find"


class ExactDedupConfig(Section):
    """What "the same text" means."""

    lowercase: bool = Field(False, description="Treat texts that differ only in case as duplicates.")


def text_hashes(table: pa.Table, config: ExactDedupConfig) -> np.ndarray:
    """128-bit hashes (as two uint64 columns) of the whitespace-collapsed text of each document."""
    text = pc.utf8_trim_whitespace(pc.replace_substring_regex(table[TEXT], r"\s+", " "))
    if config.lowercase:
        text = pc.utf8_lower(text)
    digests = b"".join(
        hashlib.blake2b(value.encode(), digest_size=16).digest() for value in text.to_pylist()
    )
    return np.frombuffer(digests, dtype=np.uint64).reshape(-1, 2)


def first_occurrences(hashes: np.ndarray, priority: np.ndarray | None = None) -> np.ndarray:
    """For each document (in global order), the global index of the first one with its hash;
    with `priority` (per document), the first of the highest-priority ones."""
    if len(hashes) == 0:
        return np.zeros(0, dtype=np.int64)
    order = np.arange(len(hashes)) if priority is None else np.lexsort((np.arange(len(hashes)), -priority))
    _, first, inverse = np.unique(hashes[order], axis=0, return_index=True, return_inverse=True)
    keeper = np.empty(len(hashes), dtype=np.int64)
    keeper[order] = order[first[inverse.reshape(-1)]]
    return keeper


def _hash_file(ctx: TaskContext, task: int) -> Any:
    return ctx.work / HASH / f"hashes-{task:05d}.npy"


def run_hash(ctx: TaskContext) -> dict[str, Any]:
    """Hash one shard's documents."""
    table = pq.read_table(source_file(ctx), columns=[TEXT])
    write_npy(_hash_file(ctx, ctx.task), text_hashes(table, ctx.settings))
    ctx.report(table.num_rows)
    return {}


def run_find(ctx: TaskContext) -> dict[str, Any]:
    """Find every later copy over all shards' hashes (one task)."""
    hashes = np.concatenate([np.load(_hash_file(ctx, i)) for i in range(len(ctx.shards))])
    first = first_occurrences(hashes, source_priorities(ctx))
    removed = np.flatnonzero(first != np.arange(len(first)))
    write_removals(ctx, removed, first[removed], source_column(ctx, ID), None)
    ctx.report(len(first))
    return {"tally": {"exact_dedup": {"duplicates": int(len(removed))}}}


def run_filter(ctx: TaskContext) -> dict[str, Any]:
    return run_removals_filter(ctx, FIND, "exact_duplicate")


STAGE = StageSpec("exact_dedup", ExactDedupConfig, (
    StepSpec(".hash", run_hash),
    StepSpec(".find", run_find, tasks=single),
    StepSpec(".filter", run_filter, makes_docs=True),
))
