"""The step graph: which steps a prep run executes, in what order, with how many tasks.

A stage is one or more steps (`data_prep.registry` lists them); a step is `n_tasks` independent
tasks, by the step's own rule (one per input shard, one for the corpus, one per LSH band). The
graph is a pure function of the config and the inputs, so any process (a local worker, a Slurm
array task) can rebuild it and run task i of step s alone. Each step's fingerprint chains its
stage's settings with everything upstream: change a quality threshold and only the quality
step, and what follows it, reruns.

Each step reads the documents of its `source` and the files of the steps its spec declares
(`StepSpec.reads`); its tasks can open no others (`TaskContext.folder_of`). The executors seal a
finished step with the seals of what it read, and rerun it when one of those has changed since.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from data_prep import registry
from data_prep.config import PrepConfig
from data_prep.extract import check_pages_extracted
from data_prep.readers import InputShard, plan_shards
from data_prep.sources import source_groups
from data_prep.stage import StageSpec, StepSpec, TaskContext
from pipeline.ground import storage
from pipeline.ground.errors import UserError
from pipeline.ground.schema import Section


@dataclass(frozen=True)
class Step:
    name: str  # e.g. "normalize", "minhash_dedup.buckets": also its folder in the work folder
    stage: str  # the stage (and stats row) this step belongs to
    n_tasks: int
    source: str | None  # the step whose per-shard documents this step reads
    reads: tuple[str, ...]  # every step whose files it opens: its source, then what its spec declares
    fingerprint: str
    makes_docs: bool  # writes per-shard documents (and counts them for the stage table)
    stage_spec: StageSpec = field(compare=False, repr=False)  # from the registry the plan was built with

    @property
    def spec(self) -> StepSpec:
        return self.stage_spec.step(self.name)


@dataclass(frozen=True)
class PrepGraph:
    config: PrepConfig
    shards: tuple[InputShard, ...]
    steps: tuple[Step, ...]

    def step(self, name: str) -> Step:
        for step in self.steps:
            if step.name == name:
                return step
        raise KeyError(f"no step {name!r} in this plan (steps: {[s.name for s in self.steps]})")

    def publishing(self, kind: str) -> list[Step]:
        """The steps whose `kind` of output (`data_prep.stage.TOKEN_COUNTS`, ...) publishing takes."""
        return [step for step in self.steps if kind in step.spec.publishes]

    @property
    def last_docs_step(self) -> Step:
        return [s for s in self.steps if s.makes_docs][-1]

    def context(self, work: Path, step: Step, task: int, report: Callable[[int], None]) -> TaskContext:
        """What task `task` of `step` is given to run."""
        settings: Section | None
        if step.stage == registry.READ.name:
            settings = self.config.read
        elif step.stage_spec.per_document:  # a named source may skip it or set its own settings
            settings = self.config.source_section(step.stage, self.shards[task].source)
        else:
            settings = self.config.section(step.stage)
        return TaskContext(
            config=self.config,
            shards=self.shards,
            work=work,
            stage=step.stage,
            settings=settings,
            step=step.name,
            source=step.source,
            task=task,
            report=report,
            reads=step.reads,
        )


def _digest(*parts: object) -> str:
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def _input_identity(shards: list[InputShard]) -> list[tuple[Any, ...]]:
    identity: list[tuple[Any, ...]] = []
    for shard in shards:
        for piece in shard.pieces:
            tag = () if shard.source is None else (shard.source,)
            identity.append(
                (piece.label, piece.start, piece.end, *storage.identity(storage.as_location(piece.path)), *tag)
            )
    return identity


def _shards(config: PrepConfig) -> list[InputShard]:
    """Input shards, source by source: a shard never mixes two sources."""
    shard_bytes = int(config.shard_mb * 2**20)
    groups = source_groups(list(config.inputs), list(config.sources))
    return [shard for name, inputs in groups for shard in plan_shards(inputs, shard_bytes, name)]


def build_prep_graph(config: PrepConfig) -> PrepGraph:
    shards = _shards(config)
    check_pages_extracted(config, shards)
    n = len(shards)
    read_fp = _digest(_input_identity(shards), config.read.model_dump(mode="json"), config.batch_size)
    read = registry.READ.name
    steps = [Step(read, read, n, None, (), read_fp, True, registry.READ)]
    source, fingerprint = read, read_fp
    stages = [config.stage_registry.stage(name) for name in [registry.UNIQUE_IDS.name, *config.stages]]
    planned = {stage.step_name(spec) for stage in stages for spec in stage.steps}
    for stage in stages:
        settings = config.section(stage.name).fingerprint()
        if config.source_fingerprint(stage.name):
            settings = {"settings": settings, "sources": config.source_fingerprint(stage.name)}
        for spec in stage.steps:
            step_name = stage.step_name(spec)
            reads = _reads(step_name, source, spec.reads, planned, {s.name for s in steps})
            fingerprint = _digest(fingerprint, step_name, settings)
            steps.append(
                Step(step_name, stage.name, spec.tasks(config, n), source, reads, fingerprint, spec.makes_docs, stage)
            )
        if steps[-1].makes_docs:
            source = steps[-1].name
    return PrepGraph(config, tuple(shards), tuple(steps))


def _reads(step: str, source: str, declared: tuple[str, ...], planned: set[str], before: set[str]) -> tuple[str, ...]:
    """The steps `step` reads in this plan: its source and the declared steps the plan runs (a declared step
    of a stage the config leaves out is not read); one that would run after it is a stage put in the wrong place."""
    later = [name for name in declared if name in planned and name not in before]
    if later:
        raise UserError(
            f"step {step} reads {', '.join(later)}, which the plan runs after it: register its stage after "
            f"the stage of {later[0].split('.')[0]} (Registry.with_stage(..., before=...))"
        )
    return tuple(dict.fromkeys([source, *(name for name in declared if name in planned)]))
