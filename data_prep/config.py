"""`prep`'s config section: inputs, stage list, workers, and one sub-section per registered stage.

The stage sections are not written out here: they come from a stage registry (`data_prep.registry`),
so a new stage brings its settings with it. Each keeps its own schema (unknown keys rejected, values
validated). `PrepConfig` is the section of the default registry; `prep_config_for` makes the section
of another, which pickles (to worker processes) with its registry.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import Field, ValidationError, create_model, field_validator, model_validator

from data_prep import registry
from data_prep.langid import LangIdStage
from data_prep.readers import ReadConfig
from data_prep.sources import DEFAULT_SOURCE, SOURCE, SourceConfig, source_groups
from data_prep.unique_ids import UniqueIdsConfig
from pipeline.ground.schema import Section
from pipeline.ground.storage import Location, LocationValue, absolute

if TYPE_CHECKING:
    from data_prep.langid import LangIdConfig
    from data_prep.normalize import NormalizeConfig
    from data_prep.pack import PackConfig
    from data_prep.quality_model import QualityModelConfig
    from data_prep.tokenizer import TokenizerConfig


class RaySettings(Section):
    """Where and how `prep.executor: ray` runs its tasks: one Ray task per prep task."""

    address: str = Field(
        "auto",
        description="The Ray cluster to join (`ray start --head` prints it); `auto`: the "
        "running cluster RAY_ADDRESS or this machine names, else a new local "
        "one of prep.workers CPUs.",
    )
    max_parallel: int | None = Field(
        None, ge=1, description="Most tasks running at once; none: as many as the cluster's CPUs hold."
    )
    cpus_per_task: float = Field(1.0, gt=0, description="CPUs Ray reserves for each task.")
    memory_gb_per_task: float | None = Field(
        None,
        gt=0,
        description="Memory Ray reserves for each task (GiB), so a "
        "node runs no more tasks than fit; none: no "
        "reservation.",
    )
    max_retries: int = Field(3, ge=0, description="Tries after the first of a task that fails or whose worker dies.")


class PrepSettings(Section):
    """Data prep: which inputs, which stages, how many workers; each stage's section is added below."""

    inputs: list[LocationValue] = Field(
        default_factory=list, description="Files or folders to read, or their s3:// URLs (a prefix is a folder)."
    )
    stages: list[str] = Field(
        default_factory=registry.DEFAULT.default_names,
        description="Stages to run, in pipeline order; by default all but the opt-in filters.",
    )
    workers: int = Field(2, ge=1, description="Worker processes for per-shard steps.")
    executor: Literal["local", "ray"] = Field(
        "local",
        description="Where `prep` runs its tasks: `local`, worker processes on this machine; `ray`, a "
        "Ray cluster (prep.ray) that shares the output folder (`crucible submit` is Slurm's).",
    )
    ray: RaySettings = Field(default_factory=RaySettings)
    shard_mb: float = Field(16.0, gt=0, description="Target input shard size; large plain JSONL files are split.")
    batch_size: int = Field(1000, ge=1, description="Documents per Arrow batch inside a task.")
    max_quarantined_share: float = Field(
        0.5,
        ge=0,
        le=1,
        description="Prep fails (exit 2, no next step) when it keeps no document or quarantines "
        "more than this share of the documents it reads; 1: only when it keeps none.",
    )
    read: ReadConfig = Field(default_factory=ReadConfig)
    unique_ids: UniqueIdsConfig = Field(default_factory=UniqueIdsConfig)
    sources: list[SourceConfig] = Field(
        default_factory=list,
        description="Named sources, each with its inputs, dedupe priority and per-stage settings; "
        f"`inputs` beside them is one more source named {DEFAULT_SOURCE!r}. Empty: `inputs` only, untagged.",
    )

    if TYPE_CHECKING:  # sections of the registry's stages (added by `create_model` below) that code reads by name
        normalize: NormalizeConfig = Field(default_factory=NormalizeConfig)
        langid: LangIdConfig = Field(default_factory=LangIdConfig)
        quality_model: QualityModelConfig = Field(default_factory=QualityModelConfig)
        tokenizer: TokenizerConfig = Field(default_factory=TokenizerConfig)
        pack: PackConfig = Field(default_factory=PackConfig)

    stage_registry: ClassVar[registry.Registry] = registry.DEFAULT  # the one its stage sections come from

    @field_validator("stages")
    @classmethod
    def _pipeline_order(cls, stages: list[str]) -> list[str]:
        known = cls.stage_registry.names()
        unknown = [s for s in stages if s not in known]
        if unknown:
            raise ValueError(f"unknown stage(s) {unknown}; choose from {', '.join(known)}")
        if len(set(stages)) != len(stages):
            raise ValueError(f"stages are listed twice: {stages}")
        for name in stages:
            missing = [need for need in cls.stage_registry.stage(name).requires if need not in stages]
            if missing:
                raise ValueError(f"{name} needs {', '.join(missing)}: add it to the stages")
        return sorted(stages, key=known.index)

    @model_validator(mode="after")
    def _sources(self) -> PrepSettings:
        names = [name for name, _ in source_groups(self.inputs, self.sources) if name is not None]
        if len(set(names)) != len(names):
            raise ValueError(f"sources: names must be distinct ({DEFAULT_SOURCE!r} is `inputs` when given): {names}")
        if self.sources and SOURCE in self.read.keep_fields:
            raise ValueError(
                f"read.keep_fields: {SOURCE!r} is the column prep.sources sets; with named sources, "
                f"split the inputs by that field into sources instead of keeping it"
            )
        per_document = [s.name for s in self.stage_registry.stages if s.per_document]
        for source in self.sources:
            for stage in [*source.skip, *source.settings]:
                if stage not in per_document:
                    raise ValueError(
                        f"sources.{source.name}: {stage!r} is not a per-document stage "
                        f"(choose from {', '.join(per_document)})"
                    )
            for stage in source.settings:
                self.source_section(stage, source.name)  # raises on a bad key or value
        for stage in self.stages:
            sections = [self.section(stage), *(self.source_section(stage, s.name) for s in self.sources)]
            lacking = [section.missing() for section in sections if section is not None]
            if lacking and all(lacking):
                raise ValueError(
                    f"{stage} is in the stages but has {lacking[0]} (prep.{self.stage_registry.stage(stage).section_name}"
                    f"): give it its files, or leave it out of prep.stages"
                )
        if self.pack.split_by_language and LangIdStage.name not in self.stages:
            raise ValueError("pack.split_by_language needs the langid stage: add langid to prep.stages")
        return self

    def section(self, stage: str) -> Section:
        """The settings of stage `stage`."""
        return getattr(self, self.stage_registry.stage(stage).section_name)

    def all_inputs(self) -> list[Location]:
        """Every input path, of `inputs` and of every source."""
        return [path for _, paths in source_groups(self.inputs, self.sources) for path in paths]

    def priorities(self) -> dict[str, int]:
        """Dedupe priority by source name (`inputs` beside named sources has priority 0)."""
        return {DEFAULT_SOURCE: 0} | {source.name: source.priority for source in self.sources}

    def source_section(self, stage: str, source: str | None) -> Section | None:
        """The settings of per-document stage `stage` for documents of `source`; None: that source skips it."""
        base = self.section(stage)
        spec = next((s for s in self.sources if s.name == source), None)
        if spec is None:
            return base
        if stage in spec.skip:
            return None
        if stage not in spec.settings:
            return base
        try:
            return type(base).model_validate(base.model_dump() | spec.settings[stage])
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
            raise ValueError(f"sources.{source}.settings.{stage}: {problems}") from None

    def source_fingerprint(self, stage: str) -> dict[str, Any]:
        """What the sources change about stage `stage` (empty when nothing), for its fingerprint."""
        return {
            s.name: {"skip": stage in s.skip, "settings": s.settings.get(stage)}
            for s in self.sources
            if stage in s.skip or stage in s.settings
        }

    def with_absolute_paths(self) -> PrepSettings:
        """A copy whose file paths mean the same from any folder (job scripts, the shard manifest)."""
        copy = self.model_copy(deep=True)
        copy.inputs = [absolute(path) for path in copy.inputs]
        for source in copy.sources:
            source.inputs = [absolute(path) for path in source.inputs]
        for spec in self.stage_registry.stages:
            _resolve_paths(copy.section(spec.name))
        return copy

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickled with its registry, so that a worker process rebuilds the same class, however made."""
        return _unpickled, (self.stage_registry, self.__getstate__())


def _resolve_paths(section: Section) -> None:
    """Make the paths of `section` absolute, in lists, mappings and nested sections too."""

    def resolved(value: Any) -> Any:
        if isinstance(value, Path):
            return value.resolve()
        if isinstance(value, list):
            return [resolved(v) for v in value]
        if isinstance(value, dict):
            return {k: resolved(v) for k, v in value.items()}
        if isinstance(value, Section):
            _resolve_paths(value)
        return value

    for name, value in section:
        setattr(section, name, resolved(value))


_MADE: dict[tuple[tuple[str, str], ...], type[PrepSettings]] = {}


def prep_config_for(stages: registry.Registry) -> type[PrepSettings]:
    """The `prep` section of a registry: `PrepSettings` and a section per stage (one class per set of stages)."""
    key = tuple((spec.name, f"{spec.config.__module__}.{spec.config.__qualname__}") for spec in stages.stages)
    if key not in _MADE:
        sections: dict[str, Any] = {
            spec.section_name: (spec.config, Field(default_factory=spec.config)) for spec in stages.stages
        }
        stage_list: Any = (
            list[str],
            Field(default_factory=stages.default_names, description=PrepSettings.model_fields["stages"].description),
        )
        made = create_model("PrepConfig", __base__=PrepSettings, __module__=__name__, stages=stage_list, **sections)
        made.stage_registry = stages
        _MADE[key] = made
    return _MADE[key]


def _unpickled(stages: registry.Registry, state: dict[str, Any]) -> PrepSettings:
    made = prep_config_for(stages)
    config = made.__new__(made)
    config.__setstate__(state)
    return config


if TYPE_CHECKING:
    PrepConfig = PrepSettings  # for the type checker: the stage sections it reads are declared on PrepSettings
else:
    PrepConfig = prep_config_for(registry.DEFAULT)
