"""The one list of prep stages, in pipeline order.

The config's stage list and sections, the plan's steps and the executors' task table are all
derived from it. Adding a stage: write its module (a `DocStage` with `doc_stage(...)`, or a
`StageSpec` with its steps), add one line here, and its settings become `prep.<section>`.
"""

from __future__ import annotations

from data_prep import (
    blocklist,
    boilerplate,
    decontaminate,
    exact_dedup,
    extract,
    langid,
    line_filter,
    normalize,
    overlap,
    pack,
    pii,
    quality,
    quality_model,
    readers,
    tokenizer,
    unique_ids,
    url_dedup,
)
from data_prep.minhash import steps as minhash_dedup
from data_prep.stage import StageSpec

READ = readers.STAGE  # always the first step; not listed in `prep.stages`
UNIQUE_IDS = unique_ids.STAGE  # always right after read; not listed either
FIRST = (READ, UNIQUE_IDS)

STAGES: list[StageSpec] = [
    extract.STAGE,
    normalize.STAGE,
    url_dedup.STAGE,
    exact_dedup.STAGE,
    minhash_dedup.STAGE,
    boilerplate.STAGE,  # after dedupe: near copies go whole before their shared lines are cut
    langid.STAGE,
    blocklist.STAGE,
    line_filter.STAGE,
    pii.STAGE,
    quality.STAGE,
    quality_model.STAGE,
    decontaminate.STAGE,
    tokenizer.STAGE,
    pack.STAGE,
    overlap.STAGE,
]

_sealed = False


def register(stage: StageSpec, before: str) -> None:
    """Add a stage before the stage named `before`; only before `data_prep.config` builds the schema."""
    if _sealed:
        raise RuntimeError(f"register {stage.name!r} before data_prep.config is imported: the schema is built")
    if stage.name in names():
        raise ValueError(f"a stage named {stage.name!r} is registered already")
    STAGES.insert(names().index(before), stage)


def seal() -> None:
    """Called once the config schema is built from the list; later registrations would be missed."""
    global _sealed
    _sealed = True


def names() -> list[str]:
    return [stage.name for stage in STAGES]


def default_names() -> list[str]:
    """The stages a config that lists none runs: every stage but the opt-in ones."""
    return [stage.name for stage in STAGES if stage.default]


def stage(name: str) -> StageSpec:
    """The stage called `name` (`read` and `unique_ids` included)."""
    for spec in [*FIRST, *STAGES]:
        if spec.name == name:
            return spec
    raise KeyError(f"no stage {name!r} (stages: {', '.join(names())})")
