"""unique_ids: one document per id, so lineage, dedupe verdicts and clean/ can name a document by its id.

Ids come from the records (`prep.read.id_field`) or are derived from where a record sits and
what it says, so two records share one only when the data says so: two files numbering their
records alike, the same file given twice. Of documents with one id the first keeps it, by the
rule of cross-source dedupe: the highest-priority source first, then input order (sources in
config order, files sorted, records in file order), whatever the task count. Each later one is
quarantined as `duplicate_id` with its raw text, its `duplicate_of` naming the first one's
origin. Renaming them instead would give ids that match nothing the user holds. The check runs
every prep, right after read, and finds the repeats corpus-wide with exact_dedup's machinery:
each find task holds the ids of one hash range only, so no task's memory grows with the corpus.
"""

from __future__ import annotations

from typing import Any

import pyarrow.parquet as pq
from pydantic import Field

from data_prep.books import source_file
from data_prep.dedupe_files import range_tasks, run_removals_filter
from data_prep.exact_dedup import find_later_copies, hashes128, write_hashes
from data_prep.stage import ID, ORIGIN, StageSpec, StepSpec, TaskContext
from pipeline.ground.schema import Section

NAME = "unique_ids"
HASH, FIND = f"{NAME}.hash", f"{NAME}.find"
REASON = "duplicate_id"
FIND_TASKS = range_tasks(NAME, "find_shards_per_task")  # tasks of the range-split step


class UniqueIdsConfig(Section):
    """How the corpus-wide id check splits its work."""

    find_shards_per_task: int = Field(
        64, ge=1, description="Input shards per find task: ids are split into ceil(shards / this) hash ranges."
    )


def run_hash(ctx: TaskContext) -> dict[str, Any]:
    """Hash one shard's ids (its id column only) for the find tasks."""
    ids = pq.read_table(source_file(ctx), columns=[ID])[ID].to_pylist()
    write_hashes(ctx, hashes128(ids), FIND_TASKS(ctx.config, len(ctx.shards)))
    ctx.report(len(ids))
    return {}


def run_find(ctx: TaskContext) -> dict[str, Any]:
    """Every later holder of an id in this task's hash range, named by the first holder's origin."""
    find_later_copies(ctx, HASH, named_by=ORIGIN)
    return {}


def run_filter(ctx: TaskContext) -> dict[str, Any]:
    return run_removals_filter(ctx, FIND, REASON, quarantine=True)


STAGE = StageSpec(
    NAME,
    UniqueIdsConfig,
    (
        StepSpec(".hash", run_hash),
        StepSpec(".find", run_find, tasks=FIND_TASKS, unit="hash", reads=(HASH,)),
        StepSpec("", run_filter, makes_docs=True, reads=(FIND,)),
    ),
)
