"""The stage contract: a stage only decides, the framework keeps the books.

A stage receives a batch of documents as an Arrow table and returns a `Decision`: the same rows
(possibly with rewritten or added columns) and, for the rows it rejects, a `Drop` with a reason.
Counting, timing, lineage records and quarantine files are the executor's job, so no stage can
forget them and every document that enters a stage leaves it kept, dropped or quarantined.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

import pyarrow as pa

# Columns every document carries between stages. Stages may add more (lang, lang_score, ...).
ID = "id"
TEXT = "text"


@dataclass(frozen=True)
class Drop:
    """Why one document leaves the stream; `quarantine` marks malformed input, not a filter."""

    reason: str
    detail: dict[str, Any] = field(default_factory=dict)
    quarantine: bool = False


@dataclass
class Decision:
    """A stage's verdict on one batch: `table` has the input's rows, `drops` maps row -> Drop."""

    table: pa.Table
    drops: dict[int, Drop] = field(default_factory=dict)


class DocStage(ABC):
    """A per-document stage; subclasses set `name` and implement `decide`."""

    name: ClassVar[str]

    def setup(self) -> None:
        """Load models or tables once per worker process, before the first batch."""

    @abstractmethod
    def decide(self, table: pa.Table) -> Decision:
        """Return the decision for `table`; must not change the number or order of rows."""

    def tally(self, kept: pa.Table) -> dict[str, dict[str, int]]:
        """Counts worth reporting over the kept documents (e.g. languages); summed over tasks."""
        return {}


def replace_column(table: pa.Table, name: str, values: pa.Array | list[Any]) -> pa.Table:
    """Set column `name` to `values`, adding it at the end when it is new."""
    array = values if isinstance(values, (pa.Array, pa.ChunkedArray)) else pa.array(values)
    index = table.schema.get_field_index(name)
    if index < 0:
        return table.append_column(name, array)
    return table.set_column(index, name, array)
