"""`prep`'s config section: inputs, stage list, workers, and one sub-section per registered stage.

The stage sections are not written out here: they come from `data_prep.registry`, so a new stage
brings its settings with it. Each keeps its own schema (unknown keys rejected, values validated).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field, create_model, field_validator

from data_prep import registry
from data_prep.readers import ReadConfig
from pipeline.ground.schema import Section


class PrepSettings(Section):
    """Data prep: which inputs, which stages, how many workers; each stage's section is added below."""

    inputs: list[Path] = Field(default_factory=list, description="Files or folders to read.")
    stages: list[str] = Field(default_factory=registry.default_names, description="Stages to run, in pipeline order; by default all but the opt-in filters.")
    workers: int = Field(2, ge=1, description="Worker processes for per-shard steps.")
    shard_mb: float = Field(
        16.0, gt=0, description="Target input shard size; large plain JSONL files are split."
    )
    batch_size: int = Field(1000, ge=1, description="Documents per Arrow batch inside a task.")
    read: ReadConfig = Field(default_factory=ReadConfig)

    @field_validator("stages")
    @classmethod
    def _pipeline_order(cls, stages: list[str]) -> list[str]:
        known = registry.names()
        unknown = [s for s in stages if s not in known]
        if unknown:
            raise ValueError(f"unknown stage(s) {unknown}; choose from {', '.join(known)}")
        if len(set(stages)) != len(stages):
            raise ValueError(f"stages are listed twice: {stages}")
        for name in stages:
            missing = [need for need in registry.stage(name).requires if need not in stages]
            if missing:
                raise ValueError(f"{name} needs {', '.join(missing)}: add it to the stages")
        return sorted(stages, key=known.index)

    def section(self, stage: str) -> Section:
        """The settings of stage `stage`."""
        return getattr(self, registry.stage(stage).section_name)

    def with_absolute_paths(self) -> PrepSettings:
        """A copy whose file paths mean the same from any folder (job scripts, the shard manifest)."""
        copy = self.model_copy(deep=True)
        copy.inputs = [path.resolve() for path in copy.inputs]
        for spec in registry.STAGES:
            _resolve_paths(copy.section(spec.name))
        return copy


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


def _stage_sections() -> dict[str, Any]:
    return {spec.section_name: (spec.config, Field(default_factory=spec.config)) for spec in registry.STAGES}


PrepConfig = create_model("PrepConfig", __base__=PrepSettings, __module__=__name__, **_stage_sections())
registry.seal()
