"""Named sources: groups of inputs (web, code, books, ...) that prep keeps apart and training mixes.

Each source has its inputs, a priority for cross-source dedupe (the copy in the higher-priority
source survives, then the stage's own keep rule decides) and optional per-source settings of the
per-document stages: skip one (a code source without language ID or the prose quality rules) or
override some of its keys. Every document of a source carries its name in the `source` column,
so lineage, stats, shards and the training mixture can break down by source. Without
`prep.sources` the flat `prep.inputs` is one untagged source, and nothing about the run changes.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from pydantic import Field, field_validator

from pipeline.ground.schema import Section
from pipeline.ground.storage import Location, LocationValue

SOURCE = "source"  # the column naming each document's source
DEFAULT_SOURCE = "default"  # the name `prep.inputs` takes when named sources are given beside it
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class SourceConfig(Section):
    """One named source: its inputs, its dedupe priority and per-stage settings of its own."""

    name: str = Field(description="Names the source in lineage, stats, shard manifests and `train.mixture`.")
    inputs: list[LocationValue] = Field(min_length=1, description="Files or folders of this source (or s3:// URLs).")
    priority: int = Field(
        0,
        description="Cross-source dedupe: of copies in several sources, the one in the "
        "highest-priority source is kept (ties: the stage's own keep rule).",
    )
    skip: list[str] = Field(
        default_factory=list, description="Per-document stages this source skips (e.g. [langid, quality] for code)."
    )
    settings: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="Per-document stage settings for this source, merged over `prep.<stage>` "
        "(e.g. {quality: {min_words: 20}}).",
    )

    @field_validator("name")
    @classmethod
    def _plain_name(cls, name: str) -> str:
        if not _NAME.match(name) or len(name) > 64:
            raise ValueError(f"source name {name!r}: use letters, digits, '.', '_' or '-' (at most 64)")
        return name


def source_groups(inputs: Sequence[Location], sources: list[SourceConfig]) -> list[tuple[str | None, list[Location]]]:
    """(source name, its inputs) in config order; one untagged group (name None) without named sources."""
    if not sources:
        return [(None, list(inputs))]
    groups: list[tuple[str | None, list[Location]]] = [(DEFAULT_SOURCE, list(inputs))] if inputs else []
    return groups + [(source.name, list(source.inputs)) for source in sources]
