"""The files of the split dedupe steps, apart from the books: keys by range, and removals per shard.

A global dedupe step is split into tasks by key range: each shard's task writes its keys in range
slices (`write_ranged`), and each range task reads its slice of every shard's file (`read_range`),
so no task reads the whole corpus. The verdicts go into removals tables (shard, row, duplicate_of),
one per task, that a per-shard filter step applies with the books (`run_removals_filter`); ids are
looked up for the rows that need them only, so no task's memory grows with the corpus.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from data_prep.books import run_stage_on_source, shard_offsets, source_file
from data_prep.stage import ID, Decision, DocStage, Drop, TaskContext
from pipeline.ground.atomic import atomic_path, write_parquet

REMOVALS_SCHEMA = pa.schema(
    [("shard", pa.int32()), ("row", pa.int64()), ("duplicate_of", pa.string()), ("jaccard", pa.float32())]
)


class ShardRowFilter(DocStage):
    """Drops the rows a global step chose, by position in this shard (batches arrive in order)."""

    name: ClassVar[str] = "row_filter"

    def __init__(self, drops: dict[int, Drop]) -> None:
        self.drops = drops
        self.offset = 0

    def decide(self, table: pa.Table) -> Decision:
        start, self.offset = self.offset, self.offset + table.num_rows
        return Decision(table, {r - start: d for r, d in self.drops.items() if start <= r < self.offset})


def shards_per_task(n_shards: int, shards: int) -> int:
    """Tasks of a global step that gives each task the work of about `shards` input shards."""
    return max(1, -(-n_shards // shards))


def range_tasks(section: str, setting: str) -> Callable[[Any, int], int]:
    """The task rule of a range-split step: a task per `prep.<section>.<setting>` input shards."""

    def tasks(config: Any, n_shards: int) -> int:
        return shards_per_task(n_shards, getattr(getattr(config, section), setting))

    return tasks


def key_range(keys: np.ndarray, ranges: int) -> np.ndarray:
    """Which of `ranges` equal slices of the uint64 key space each key falls in."""
    return ((keys >> np.uint64(32)) * np.uint64(ranges) >> np.uint64(32)).astype(np.int64)


def by_range(keys: np.ndarray, ranges: int) -> tuple[np.ndarray, np.ndarray]:
    """The rows of `keys` grouped by key range, and where each range starts (ranges + 1 entries),
    so that the task of one range later reads its slice of a shard's file and nothing else."""
    part = key_range(keys, ranges)
    order = np.argsort(part, kind="stable")
    return order.astype(np.int64), np.searchsorted(part[order], np.arange(ranges + 1))


def write_ranged(path: Path, records: np.ndarray, bounds: np.ndarray) -> None:
    """One file of `records` in slices, slice i being records[bounds[i]:bounds[i + 1]]: the bound
    count, the bounds (int64), then the records' raw bytes, so a task reads the slices it needs
    with one open and two plain reads (see `read_ranged`)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        handle.write(np.int64(len(bounds)).tobytes())
        handle.write(np.ascontiguousarray(bounds, dtype="<i8").tobytes())
        handle.write(np.ascontiguousarray(records).tobytes())


def read_ranged(path: Path, dtype: np.dtype, first: int, last: int) -> tuple[np.ndarray, np.ndarray]:
    """Slices `first` to `last` (exclusive) of a file `write_ranged` wrote: their records, and
    where each slice starts among them (last - first + 1 entries, from 0)."""
    with open(path, "rb") as handle:
        count = int(np.frombuffer(handle.read(8), "<i8")[0])
        handle.seek(8 * (1 + first))
        bounds = np.frombuffer(handle.read(8 * (last - first + 1)), "<i8")
        handle.seek(8 * (1 + count) + int(bounds[0]) * dtype.itemsize)
        records = np.frombuffer(handle.read(int(bounds[-1] - bounds[0]) * dtype.itemsize), dtype)
    return records, bounds - bounds[0]


def read_range(ctx: TaskContext, path: Callable[[int], Path], dtype: np.dtype) -> tuple[np.ndarray, np.ndarray]:
    """This range task's slice of every shard's ranged file (`path(shard)`, records with a `row` field:
    the row in the shard), in corpus order: the records, and the corpus row of each."""
    offsets = shard_offsets(ctx)
    parts, rows = [], []
    for shard in range(len(ctx.shards)):
        records, _ = read_ranged(path(shard), dtype, ctx.task, ctx.task + 1)
        parts.append(records)
        rows.append(records["row"].astype(np.int64) + offsets[shard])
        ctx.report(len(records))
    corpus_rows = np.concatenate(rows)
    order = np.argsort(corpus_rows, kind="stable")
    return np.concatenate(parts)[order], corpus_rows[order]


def gather_rows(files: list[Path], offsets: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Rows `rows` (corpus order, sorted) of per-shard .npy arrays, each file mapped, not read whole."""
    parts = []
    bounds = np.searchsorted(rows, offsets)
    for shard, path in enumerate(files):
        if bounds[shard] < bounds[shard + 1]:
            mapped = np.load(path, mmap_mode="r")
            parts.append(np.asarray(mapped[rows[bounds[shard] : bounds[shard + 1]] - offsets[shard]]))
            del mapped
    if not parts:  # no rows: an empty array of the files' row shape
        parts.append(np.load(files[0], mmap_mode="r")[:0].copy())
    return np.concatenate(parts)


def resolve_ids(ctx: TaskContext, rows: np.ndarray, column: str = ID) -> np.ndarray:
    """The ids (or another string `column`) of corpus rows `rows` (sorted), reading only that column of the
    shards that hold them."""
    offsets = shard_offsets(ctx)
    ids = np.empty(len(rows), dtype=object)
    bounds = np.searchsorted(rows, offsets)
    for shard in range(len(ctx.shards)):
        lo, hi = bounds[shard], bounds[shard + 1]
        if lo < hi:
            values = pq.ParquetFile(source_file(ctx, shard)).read(columns=[column])[column]
            ids[lo:hi] = values.take(pa.array(rows[lo:hi] - offsets[shard])).to_pylist()
            del values
            pa.default_memory_pool().release_unused()  # else the pool keeps every shard's pages: RSS grows with N
    return ids


def removals_file(step_folder: Path, task: int) -> Path:
    return step_folder / f"removals-{task:05d}.parquet"


def write_removals(
    ctx: TaskContext, removed: np.ndarray, keepers: np.ndarray, jaccard: np.ndarray | None, named_by: str = ID
) -> None:
    """Record corpus rows `removed` (sorted), each a duplicate of the row at the same place in
    `keepers`, which `duplicate_of` names by their `named_by` column (looked up for the keepers only)."""
    offsets = shard_offsets(ctx)
    shard = np.searchsorted(offsets, removed, side="right") - 1
    order = np.argsort(keepers, kind="stable")
    duplicate_of = np.empty(len(keepers), dtype=object)
    duplicate_of[order] = resolve_ids(ctx, keepers[order], named_by)
    table = pa.table(
        {
            "shard": pa.array(shard.astype(np.int32)),
            "row": pa.array((removed - offsets[shard]).astype(np.int64)),
            "duplicate_of": pa.array(duplicate_of.tolist(), pa.string()),
            "jaccard": pa.array(
                jaccard.astype(np.float32) if jaccard is not None else [None] * len(removed), pa.float32()
            ),
        },
        schema=REMOVALS_SCHEMA,
    )
    write_parquet(removals_file(ctx.folder, ctx.task), table)


def run_removals_filter(ctx: TaskContext, removals_step: str, reason: str, quarantine: bool = False) -> dict[str, Any]:
    """Drop (or quarantine) this shard's rows listed in the removals tables of `removals_step`'s tasks,
    with `reason`; the calling step declares it reads `removals_step`."""
    files = sorted(ctx.folder_of(removals_step).glob("removals-[0-9][0-9][0-9][0-9][0-9].parquet"))
    tables = (pq.ParquetFile(f).read() for f in files)  # plain reads: cheaper than a dataset scan per file
    table = pa.concat_tables([t.filter(pc.equal(t["shard"], ctx.task)) for t in tables])
    drops = {}
    for row, duplicate_of, jaccard in zip(*(table[c].to_pylist() for c in ("row", "duplicate_of", "jaccard"))):
        detail = {"duplicate_of": duplicate_of} | ({} if jaccard is None else {"jaccard": round(jaccard, 4)})
        drops[row] = Drop(reason, detail, quarantine)
    return run_stage_on_source(ctx, ShardRowFilter(drops))
