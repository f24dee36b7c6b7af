"""`stats.json`: what a finished prep counted, the contract between publishing and its readers.

Publishing writes it last (a prep is done when it exists); the end-of-prep summary, the yield check,
the report and `crucible status` read it through `PrepStats`. Every stage's row balances:
docs_in = docs_out + dropped + quarantined, overall and per named source. Version 1 is the only one
written so far; a file from before the version field reads as version 1, and fields a newer writer
adds are kept.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


from pipeline.ground.contract import Record, read_versioned
from pipeline.ground.errors import UserError
from pipeline.ground.layout import PrepFolder
from pipeline.ground.storage import Location

SCHEMA_VERSION = 1


class StatsError(UserError):
    """A stats.json that is not one: damaged, hand-edited or of a newer version."""


class SourceRow(Record):
    """One stage's counts: documents in and out, and those removed, by reason."""

    docs_in: int = 0
    docs_out: int = 0
    dropped: dict[str, int] = {}
    quarantined: dict[str, int] = {}

    def removed(self) -> int:
        return sum(self.dropped.values()) + sum(self.quarantined.values())


class StageRow(SourceRow):
    """A stage's row: its counts, its seconds, what it tallied (languages, redactions, ...) and, where
    prep mixed named sources, the same counts per source."""

    name: str
    seconds: float = 0.0
    tally: dict[str, dict[str, Any]] | None = None
    sources: dict[str, SourceRow] | None = None

    def tallied(self, name: str) -> dict[str, Any]:
        return (self.tally or {}).get(name, {})


class PrepStats(Record):
    schema_version: int = SCHEMA_VERSION
    stages: list[StageRow]
    shards: int
    tokens: dict[str, Any] | None = None  # tokenize's and pack's totals: train_tokens, val_sequences, ...
    sources: dict[str, dict[str, int]] | None = None  # per named source, over all stages
    split_overlap: dict[str, Any] | None = None  # the overlap step's measure of validation text in training
    skipped_inputs: list[str] | None = None  # entries of input folders that are not regular files

    @property
    def read(self) -> int:
        return self.stages[0].docs_in if self.stages else 0

    @property
    def kept(self) -> int:
        return self.stages[-1].docs_out if self.stages else 0

    def stage(self, name: str) -> StageRow:
        return next(row for row in self.stages if row.name == name)

    def to_json(self) -> str:
        return json.dumps(self.model_dump(mode="json", exclude_none=True), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str, where: Path) -> PrepStats:
        return read_versioned(cls, text, where, SCHEMA_VERSION, StatsError, "stats.json", unversioned=1)


def read_prep_stats(folder: Location) -> PrepStats:
    """The stats.json of the prep published into `folder`."""
    path = PrepFolder(folder).local_stats
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise StatsError(f"{path} not found: has prep finished publishing into {folder}?") from None
    return PrepStats.from_json(text, path)
