"""The books every document step keeps, and the files a step task writes.

Per-document steps share one runner that applies a stage's decisions and keeps the books: kept
rows go on, dropped rows become lineage records, quarantined rows keep their raw text, and
docs_in = docs_out + dropped + quarantined by construction. The files of the split dedupe steps
(keys by range, removals per shard) are `data_prep.dedupe_files`'.
"""

from __future__ import annotations

import json
import shutil
from collections import Counter
from collections.abc import Iterator, Sequence
from functools import partial
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from data_prep.sources import SOURCE
from data_prep.stage import (
    ID,
    LANG,
    ORIGIN,
    PAGE_FIELDS,
    TEXT,
    Decision,
    DocStage,
    StageSpec,
    StepSpec,
    TaskContext,
)
from pipeline.ground.atomic import atomic_path, write_parquet
from pipeline.ground.markers import read_marker
from pipeline.ground.schema import Section

DROPPED_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("stage", pa.string()),
        ("reason", pa.string()),
        ("detail", pa.string()),
        ("origin", pa.string()),
    ]
)
QUARANTINE_SCHEMA = pa.schema(
    [
        ("origin", pa.string()),
        ("id", pa.string()),
        ("stage", pa.string()),
        ("reason", pa.string()),
        ("detail", pa.string()),
        ("raw", pa.binary()),
    ]
)
DETAIL_COLUMNS = (LANG, "lang_score", SOURCE, *PAGE_FIELDS)


def data_file(work: Path, step: str, task: int) -> Path:
    return work / step / f"data-{task:05d}.parquet"


def dropped_file(work: Path, step: str, task: int) -> Path:
    return work / step / f"dropped-{task:05d}.parquet"


def quarantine_file(work: Path, step: str, task: int) -> Path:
    return work / step / f"quarantine-{task:05d}.parquet"


MARKER_PREFIX = "done-"  # a task's completion marker: its counts, and times that differ from run to run


def marker_file(work: Path, step: str, task: int) -> Path:
    return work / step / f"{MARKER_PREFIX}{task:05d}.json"


def _detail_json(detail: dict[str, Any]) -> str:
    return json.dumps(detail, sort_keys=True, ensure_ascii=False, default=str)


class DocBooks:
    """Accumulates one task's kept documents, lineage and counts."""

    def __init__(self, stage: str, metadata: Sequence[str] = ()) -> None:
        self.stage = stage
        self.detail_columns = (*DETAIL_COLUMNS, *metadata)  # copied into each lineage record's detail
        self.kept: list[pa.Table] = []
        self.dropped: list[dict[str, Any]] = []
        self.quarantined: list[dict[str, Any]] = []
        self.docs_in = 0
        self.tally: dict[str, Counter[str]] = {}
        self.sources: dict[str, Counter[str]] = {}  # per named source: docs_in, docs_out, dropped/<reason>, ...

    def _count(self, source: str | None, key: str, n: int = 1) -> None:
        if source is not None:
            self.sources.setdefault(source, Counter())[key] += n

    def quarantine_raw(self, records: list[dict[str, Any]]) -> None:
        """Records that never became documents (reader rejects)."""
        self._book_raw(records, self.quarantined, "quarantined")

    def drop_raw(self, records: list[dict[str, Any]]) -> None:
        """Records that are no documents by design (a web archive's requests, its images)."""
        self._book_raw(records, self.dropped, "dropped")

    def _book_raw(self, records: list[dict[str, Any]], books: list[dict[str, Any]], kind: str) -> None:
        self.docs_in += len(records)
        for record in records:
            books.append({**record, "stage": self.stage, "detail": _detail_json(record["detail"])})
            self._count(record["detail"].get(SOURCE), "docs_in")
            self._count(record["detail"].get(SOURCE), f"{kind}/{record['reason']}")

    def apply(self, incoming: pa.Table, decision: Decision) -> pa.Table:
        """Book a decision on `incoming`; return the kept rows."""
        table, drops = decision.table, decision.drops
        if table.num_rows != incoming.num_rows:
            raise RuntimeError(f"stage {self.stage} changed the number of rows in a batch")
        self.docs_in += table.num_rows
        sources = table[SOURCE].to_pylist() if SOURCE in table.column_names else None
        if sources is not None:
            for name, n in Counter(sources).items():
                self._count(name, "docs_in", n)
        if drops:
            ids = table[ID].to_pylist()
            origins = table[ORIGIN].to_pylist() if ORIGIN in table.column_names else [None] * len(ids)
            extras = {c: table[c].to_pylist() for c in self.detail_columns if c in table.column_names}
            raw_texts = incoming[TEXT]
            for row in sorted(drops):
                drop = drops[row]
                detail = {c: values[row] for c, values in extras.items()} | drop.detail
                record = {
                    "id": ids[row],
                    "stage": self.stage,
                    "reason": drop.reason,
                    "detail": _detail_json(detail),
                    "origin": origins[row],
                }
                if drop.quarantine:
                    record["raw"] = raw_texts[row].as_py().encode()
                    self.quarantined.append(record)
                else:
                    self.dropped.append(record)
                if sources is not None:
                    self._count(sources[row], f"{'quarantined' if drop.quarantine else 'dropped'}/{drop.reason}")
            mask = np.ones(table.num_rows, dtype=bool)
            mask[list(drops)] = False
            table = table.filter(pa.array(mask))
        if sources is not None:
            for name, n in Counter(table[SOURCE].to_pylist()).items():
                self._count(name, "docs_out", n)
        self.kept.append(table)
        return table

    def add_tally(self, counts: dict[str, dict[str, int]]) -> None:
        for name, values in counts.items():
            self.tally.setdefault(name, Counter()).update(values)

    def write(
        self, work: Path, step: str, task: int, empty_schema: pa.Schema | None, write_data: bool = True
    ) -> dict[str, Any]:
        """Write the kept documents (unless the caller wrote them), lineage and quarantine; return the counts."""
        kept = [t for t in self.kept if t.num_rows] or self.kept[:1]
        if kept:
            data = pa.concat_tables(kept, promote_options="permissive")
        else:
            data = (empty_schema or pa.schema([(ID, pa.string()), (TEXT, pa.string())])).empty_table()
        if write_data:
            write_parquet(data_file(work, step, task), data)
        write_parquet(dropped_file(work, step, task), pa.Table.from_pylist(self.dropped, DROPPED_SCHEMA))
        write_parquet(quarantine_file(work, step, task), pa.Table.from_pylist(self.quarantined, QUARANTINE_SCHEMA))
        counts = {
            "docs_in": self.docs_in,
            "docs_out": data.num_rows,
            "dropped": dict(Counter(r["reason"] for r in self.dropped)),
            "quarantined": dict(Counter(r["reason"] for r in self.quarantined)),
            "tally": {name: dict(values) for name, values in self.tally.items()},
        }
        if self.sources:
            counts["sources"] = {name: dict(sorted(values.items())) for name, values in sorted(self.sources.items())}
        return counts


# ---- reading a step's documents -----------------------------------------------------------


def source_file(ctx: TaskContext, task: int | None = None) -> Path:
    """The documents this step reads: its source step's output for `task` (default: its own task)."""
    return data_file(ctx.work, ctx.source, ctx.task if task is None else task)  # type: ignore[arg-type]


def source_batches(ctx: TaskContext) -> Iterator[pa.Table]:
    parquet = pq.ParquetFile(source_file(ctx))
    for batch in parquet.iter_batches(batch_size=ctx.config.batch_size):
        yield pa.Table.from_batches([batch])


def row_priorities(ctx: TaskContext, rows: np.ndarray) -> np.ndarray | None:
    """The source priority of corpus rows `rows` (None without named sources): a shard holds one
    source, so a row takes its shard's."""
    if not ctx.config.sources:
        return None
    priority = ctx.config.priorities()
    by_shard = np.array([priority[shard.source] for shard in ctx.shards])
    return by_shard[np.searchsorted(shard_offsets(ctx), rows, side="right") - 1]


def shard_offsets(ctx: TaskContext) -> np.ndarray:
    """Where each shard's documents start in corpus order (from the source step's markers)."""
    counts = [
        read_marker(marker_file(ctx.work, ctx.source, i))["docs_out"]  # type: ignore[arg-type, index]
        for i in range(len(ctx.shards))
    ]
    return np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)


# ---- per-document steps -------------------------------------------------------------------


def run_stage_on_source(ctx: TaskContext, stage: DocStage) -> dict[str, Any]:
    """Apply `stage` to this task's documents in batches and write kept rows and lineage."""
    books = DocBooks(ctx.stage, ctx.config.read.keep_fields)
    for table in source_batches(ctx):
        kept = books.apply(table, stage.decide(table))
        books.add_tally(stage.tally(kept))
        ctx.report(table.num_rows)
    return books.write(ctx.work, ctx.step, ctx.task, pq.read_schema(source_file(ctx)))


_STAGE_CACHE: dict[tuple[str, str], DocStage] = {}


class PassThrough(DocStage):
    """A per-document stage for a source that skips it: every document is kept as it is."""

    name: ClassVar[str] = "pass_through"

    def decide(self, table: pa.Table) -> Decision:
        return Decision(table)


def run_doc_step(stage: type[DocStage], ctx: TaskContext) -> dict[str, Any]:
    """The step of a per-document stage; one stage object per worker and config, so models load once.
    No settings: this task's source skips the stage."""
    if ctx.settings is None:
        return run_stage_on_source(ctx, PassThrough())
    key = (ctx.stage, ctx.settings.model_dump_json())
    if key not in _STAGE_CACHE:
        instance = stage(ctx.settings)  # type: ignore[call-arg]
        instance.setup()
        _STAGE_CACHE[key] = instance
    return run_stage_on_source(ctx, _STAGE_CACHE[key])


def copy_source(ctx: TaskContext) -> dict[str, Any]:
    """The step of a per-document stage with nothing to decide on this shard: every document is
    kept as it is, and its file copied instead of decoded and written again."""
    source = source_file(ctx)
    rows = pq.ParquetFile(source).metadata.num_rows
    with atomic_path(data_file(ctx.work, ctx.step, ctx.task)) as tmp:
        shutil.copyfile(source, tmp)
    counts = DocBooks(ctx.stage).write(ctx.work, ctx.step, ctx.task, None, write_data=False)
    counts |= {"docs_in": rows, "docs_out": rows}
    name = ctx.shards[ctx.task].source
    if name is not None and rows:
        counts["sources"] = {name: {"docs_in": rows, "docs_out": rows}}
    ctx.report(rows)
    return counts


def doc_stage(stage: type[DocStage], config: type[Section], default: bool = True) -> StageSpec:
    """The spec of a per-document stage: one per-shard step that applies `stage.decide`."""
    return StageSpec(
        stage.name,
        config,
        (StepSpec("", partial(run_doc_step, stage), makes_docs=True),),
        default=default,
        per_document=True,
    )
