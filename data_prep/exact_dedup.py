"""exact_dedup: drop documents whose whitespace-normalized text was already seen.

Three steps so that it scales out like near-dedupe: hash each shard in parallel, find the
duplicates by hash range (each find task reads only the hashes in its slice of the hash space,
so none holds the corpus; the first occurrence in input order is kept, so the result does not
depend on the task count; across named sources, the copy in the highest-priority source first),
then filter each shard by the lists of duplicates.
"""

from __future__ import annotations

import hashlib
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pydantic import Field

from data_prep.books import row_priorities, source_file
from data_prep.dedupe_files import by_range, range_tasks, read_range, run_removals_filter, write_ranged, write_removals
from data_prep.stage import ID, TEXT, StageSpec, StepSpec, TaskContext
from pipeline.ground.schema import Section

HASH, FIND = "exact_dedup.hash", "exact_dedup.find"


class ExactDedupConfig(Section):
    """What "the same text" means."""

    lowercase: bool = Field(False, description="Treat texts that differ only in case as duplicates.")
    find_shards_per_task: int = Field(
        64, ge=1, description="Input shards per find task: the hash space is split into ceil(shards / this) ranges."
    )


FIND_TASKS = range_tasks("exact_dedup", "find_shards_per_task")  # tasks of the range-split step


def text_hashes(table: pa.Table, config: ExactDedupConfig) -> np.ndarray:
    """128-bit hashes (as two uint64 columns) of the whitespace-collapsed text of each document."""
    text = pc.utf8_trim_whitespace(pc.replace_substring_regex(table[TEXT], r"\s+", " "))
    if config.lowercase:
        text = pc.utf8_lower(text)
    return hashes128(text.to_pylist())


def hashes128(values: list[str]) -> np.ndarray:
    """128-bit hashes of `values`, as two uint64 columns: keys whose collisions, at any corpus size, are
    too rare to count, grouped by range on their first column."""
    digests = b"".join(hashlib.blake2b(value.encode(), digest_size=16).digest() for value in values)
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


_HASHED = np.dtype([("hash", "<u8", (2,)), ("row", "<u4")])  # a hash and its row in the shard


def _hash_file(step_folder: Path, task: int) -> Path:
    return step_folder / f"hashes-{task:05d}.bin"


def write_hashes(ctx: TaskContext, hashes: np.ndarray, ranges: int) -> None:
    """Write this shard's 128-bit hashes (one per document) into one file, grouped by the hash range of
    the find task (of `ranges`) that will read them."""
    rows, bounds = by_range(hashes[:, 0], ranges)
    records = np.empty(len(rows), _HASHED)
    records["hash"], records["row"] = hashes[rows], rows
    write_ranged(_hash_file(ctx.folder, ctx.task), records, bounds)


def find_later_copies(ctx: TaskContext, hash_step: str, named_by: str = ID) -> int:
    """Record as removals every document whose hash an earlier one has (in corpus order, one of a
    higher-priority source first), among the hashes in this task's range; of each shard's file of
    `hash_step` (which the calling step declares it reads) only this range's slice is read. `named_by` is the
    keeper's column in `duplicate_of`."""
    records, rows = read_range(ctx, partial(_hash_file, ctx.folder_of(hash_step)), _HASHED)
    first = rows[first_occurrences(records["hash"], row_priorities(ctx, rows))]
    later = first != rows
    write_removals(ctx, rows[later], first[later], None, named_by)
    return int(later.sum())


def run_hash(ctx: TaskContext) -> dict[str, Any]:
    """Hash one shard's documents for the find tasks."""
    table = pq.read_table(source_file(ctx), columns=[TEXT])
    write_hashes(ctx, text_hashes(table, ctx.settings), FIND_TASKS(ctx.config, len(ctx.shards)))
    ctx.report(table.num_rows)
    return {}


def run_find(ctx: TaskContext) -> dict[str, Any]:
    """Find every later copy among the documents whose hash falls in this task's range."""
    return {"tally": {"exact_dedup": {"duplicates": find_later_copies(ctx, HASH)}}}


def run_filter(ctx: TaskContext) -> dict[str, Any]:
    return run_removals_filter(ctx, FIND, "exact_duplicate")


STAGE = StageSpec(
    "exact_dedup",
    ExactDedupConfig,
    (
        StepSpec(".hash", run_hash),
        StepSpec(".find", run_find, tasks=FIND_TASKS, unit="hash", reads=(HASH,)),
        StepSpec(".filter", run_filter, makes_docs=True, reads=(FIND,)),
    ),
)
