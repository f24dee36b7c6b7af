"""One schema for the whole pipeline, loaded from YAML and overridden with `--set key=value`.

Every section forbids unknown keys and validates values, and errors name the dotted key and
what is allowed, so a typo in a config fails at load time instead of hours into a run.
Stage sections live next to their stages; this module assembles them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError, field_validator

from data_prep.exact_dedup import ExactDedupConfig
from data_prep.langid import LangIdConfig
from data_prep.minhash.config import MinHashConfig
from data_prep.normalize import NormalizeConfig
from data_prep.pack import PackConfig
from data_prep.pii import PiiConfig
from data_prep.quality import QualityConfig
from data_prep.readers import ReadConfig
from data_prep.tokenizer import TokenizerConfig
from launch.config import LaunchConfig
from pipeline.ground.errors import UserError
from pipeline.ground.schema import Section
from training.config import PlanConfig, TrainingConfig

StageName = Literal["normalize", "exact_dedup", "minhash_dedup", "langid", "pii", "quality", "tokenize", "pack"]
STAGE_ORDER: tuple[str, ...] = (
    "normalize", "exact_dedup", "minhash_dedup", "langid", "pii", "quality", "tokenize", "pack"
)


class PrepConfig(Section):
    """Data prep: which inputs, which stages, how many workers, and each stage's settings."""

    inputs: list[Path] = Field(default_factory=list, description="Files or folders to read.")
    stages: list[StageName] = Field(default_factory=lambda: list(STAGE_ORDER))
    workers: int = Field(2, ge=1, description="Worker processes for per-shard steps.")
    shard_mb: float = Field(
        16.0, gt=0, description="Target input shard size; large plain JSONL files are split."
    )
    batch_size: int = Field(1000, ge=1, description="Documents per Arrow batch inside a task.")
    read: ReadConfig = Field(default_factory=ReadConfig)
    normalize: NormalizeConfig = Field(default_factory=NormalizeConfig)
    exact_dedup: ExactDedupConfig = Field(default_factory=ExactDedupConfig)
    minhash_dedup: MinHashConfig = Field(default_factory=MinHashConfig)
    langid: LangIdConfig = Field(default_factory=LangIdConfig)
    pii: PiiConfig = Field(default_factory=PiiConfig)
    quality: QualityConfig = Field(default_factory=QualityConfig)
    tokenizer: TokenizerConfig = Field(default_factory=TokenizerConfig)
    pack: PackConfig = Field(default_factory=PackConfig)

    @field_validator("stages")
    @classmethod
    def _pipeline_order(cls, stages: list[str]) -> list[str]:
        if len(set(stages)) != len(stages):
            raise ValueError(f"stages are listed twice: {stages}")
        if "pack" in stages and "tokenize" not in stages:
            raise ValueError("pack needs tokenize: add tokenize to the stages")
        return sorted(stages, key=STAGE_ORDER.index)

    def with_absolute_paths(self) -> PrepConfig:
        """A copy whose file paths mean the same from any folder (job scripts, the shard manifest)."""
        copy = self.model_copy(deep=True)
        copy.inputs = [path.resolve() for path in copy.inputs]
        if copy.tokenizer.path is not None:
            copy.tokenizer.path = copy.tokenizer.path.resolve()
        if copy.langid.model_path is not None:
            copy.langid.model_path = copy.langid.model_path.resolve()
        return copy


class CrucibleConfig(TrainingConfig):
    """The root of every config file: the training sections (model, parallel, train, checkpoint,
    rollback, hooks, samples) and the run's name, data prep, launch and plan."""

    run_name: str = "crucible"
    prep: PrepConfig = Field(default_factory=PrepConfig)
    launch: LaunchConfig = Field(default_factory=LaunchConfig)
    plan: PlanConfig = Field(default_factory=PlanConfig)


class ConfigError(UserError):
    """A config that cannot be used; the message says which key and why."""


def _format_validation_error(error: ValidationError, model: type[Section]) -> str:
    lines = []
    for item in error.errors():
        key = ".".join(str(part) for part in item["loc"])
        if item["type"] == "extra_forbidden":
            parent = _section_at(model, item["loc"][:-1])
            allowed = ", ".join(sorted(parent.model_fields)) if parent else "?"
            lines.append(f"{key}: unknown key (allowed here: {allowed})")
        else:
            lines.append(f"{key}: {item['msg']} (got {item.get('input')!r})")
    return "invalid config:\n  " + "\n  ".join(lines)


def _section_at(model: type[Section], loc: tuple[Any, ...]) -> type[Section] | None:
    for part in loc:
        field = model.model_fields.get(str(part))
        annotation = field.annotation if field else None
        if not (isinstance(annotation, type) and issubclass(annotation, Section)):
            return None
        model = annotation
    return model


def apply_override(tree: dict[str, Any], assignment: str) -> None:
    """Apply one `a.b.c=value` to a nested dict; the value is parsed as YAML (`[en, de]`, `0.5`)."""
    key, sep, raw = assignment.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set expects key=value, got {assignment!r}")
    parts = key.strip().split(".")
    node = tree
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"--set {key}: {part!r} is a value, not a section")
        node = child
    node[parts[-1]] = yaml.safe_load(raw) if raw.strip() else ""


def load_config(path: Path | None, overrides: list[str] = ()) -> CrucibleConfig:
    """Read YAML (or start from defaults), apply overrides, validate."""
    tree: dict[str, Any] = {}
    if path is not None:
        try:
            tree = yaml.safe_load(Path(path).read_text()) or {}
        except FileNotFoundError as exc:
            raise ConfigError(f"config file not found: {path}") from exc
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {path} is not valid YAML: {exc}") from exc
        if not isinstance(tree, dict):
            raise ConfigError(f"config file {path} must hold a mapping at the top level")
    for assignment in overrides:
        apply_override(tree, assignment)
    try:
        return CrucibleConfig.model_validate(tree)
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(exc, CrucibleConfig)) from None
