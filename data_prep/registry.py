"""The list of prep stages, in pipeline order: `DEFAULT`, and registries made from it with more stages.

The config's stage list and sections, the plan's steps and the executors' task table are all
derived from the registry they are given. Adding a stage to the project: write its module (a
`DocStage` with `doc_stage(...)`, or a `StageSpec` with its steps), add one line to `DEFAULT`,
and its settings become `prep.<section>`. A plugin or a test adds one without changing the
project: `DEFAULT.with_stage(STAGE, before="tokenize")`, then `load_config(..., stages=that)`.
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
from dataclasses import dataclass

from data_prep.stage import StageSpec

READ = readers.STAGE  # always the first step; not listed in `prep.stages`
UNIQUE_IDS = unique_ids.STAGE  # always right after read; not listed either
FIRST = (READ, UNIQUE_IDS)


@dataclass(frozen=True)
class Registry:
    """Prep's stages after read and unique_ids (which always come first), in pipeline order."""

    stages: tuple[StageSpec, ...]

    def names(self) -> list[str]:
        return [stage.name for stage in self.stages]

    def default_names(self) -> list[str]:
        """The stages a config that lists none runs: every stage but the opt-in ones."""
        return [stage.name for stage in self.stages if stage.default]

    def stage(self, name: str) -> StageSpec:
        """The stage called `name` (`read` and `unique_ids` included)."""
        for spec in [*FIRST, *self.stages]:
            if spec.name == name:
                return spec
        raise KeyError(f"no stage {name!r} (stages: {', '.join(self.names())})")

    def with_stage(self, stage: StageSpec, before: str) -> Registry:
        """This registry with `stage` added before the stage named `before`."""
        if stage.name in [spec.name for spec in [*FIRST, *self.stages]]:
            raise ValueError(f"a stage named {stage.name!r} is registered already")
        at = self.names().index(before)
        return Registry((*self.stages[:at], stage, *self.stages[at:]))


DEFAULT = Registry(
    (
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
    )
)
