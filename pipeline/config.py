"""One schema for the whole pipeline, loaded from YAML and overridden with `--set key=value`.

Every section forbids unknown keys and validates values, and errors name the dotted key and
what is allowed, so a typo in a config fails at load time instead of hours into a run.
Sections live next to what they configure (`prep` with the stage registry, `model` ... with the
trainer, `launch` with the launchers); this module assembles the root.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, cast

from pydantic import Field, ValidationError, create_model

from data_prep import registry
from data_prep.config import PrepConfig, prep_config_for
from data_prep.pack import PACK, PackConfig
from data_prep.tokenizer import TOKENIZE, TokenizerConfig
from launch.config import LaunchConfig
from pipeline.ground.errors import UserError
from pipeline.ground.schema import Section
from pipeline.ground.storage import StorageConfig
from pipeline.ground.user_yaml import YamlSyntaxError, load_yaml, load_yaml_file
from training.config import PlanConfig, TrainingConfig
from training.post_config import PostConfig


class RunSettings(Section):
    """What `crucible run` does after training, beside the samples and the report."""

    toy_world: bool = Field(
        False,
        description="Also train the toy world (ten words, a 4-wide model, about a minute "
        "on a CPU) and show its greedy generations in the report: a check "
        "that the whole path from shards to generation works.",
    )
    post_training: bool = Field(
        False,
        description="Then take the trained model on to chat: SFT on a table of 24 "
        "made-up facts, then DPO for the right answers (a few minutes on "
        "a CPU), scored before and after on held-out questions in the "
        "report (pipeline/post_demo.py).",
    )


class CrucibleConfig(TrainingConfig):
    """The root of every config file: the training sections (model, parallel, train, checkpoint,
    rollback, hooks, samples) and the run's name, data prep, launch, plan and what `run` adds."""

    run_name: str = "crucible"
    run: RunSettings = Field(default_factory=RunSettings)
    prep: PrepConfig = Field(default_factory=PrepConfig)
    launch: LaunchConfig = Field(default_factory=LaunchConfig)
    plan: PlanConfig = Field(default_factory=PlanConfig)
    post: PostConfig = Field(default_factory=PostConfig)
    storage: StorageConfig = Field(default_factory=StorageConfig)

    def plan_gpus(self) -> int:
        """The GPUs `plan` assumes: plan.gpus, else the launch's processes."""
        return self.plan.gpus or self.launch.nproc_per_node * self.launch.nnodes

    def plan_vocab_size(self) -> int:
        """The vocabulary `plan` assumes: plan.vocab_size, else the model's, else the one prep trains."""
        tokenizer = cast(TokenizerConfig, self.prep.section(TOKENIZE))
        return self.plan.vocab_size or self.model.vocab_size or tokenizer.vocab_size

    def plan_seq_len(self) -> int:
        """The sequence length `plan` assumes: plan.seq_len, else the training's, else prep's packing."""
        return self.plan.seq_len or self.train.seq_len or cast(PackConfig, self.prep.section(PACK)).seq_len


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
        else:  # a whole section's input says nothing its message does not
            given = "" if isinstance(item.get("input"), dict) else f" (got {_shortened(repr(item.get('input')))})"
            lines.append(f"{key}: {item['msg'].removeprefix('Value error, ')}{given}")
    return "invalid config:\n  " + "\n  ".join(lines)


def _shortened(text: str, limit: int = 80) -> str:
    """A value as an error shows it: a long one (a pasted document, a number of thousands of digits) cut."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text):,} characters)"


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
    try:
        value = load_yaml(raw, f"--set {key.strip()}", root=key.strip(), lines=False) if raw.strip() else ""
    except YamlSyntaxError as exc:
        raise ConfigError(
            f"--set {key.strip()}: {raw!r} is not a valid YAML value ({exc.problem}); "
            f"quote strings that hold [ ] {{ }} : or #"
        ) from None
    except UserError as exc:
        raise ConfigError(str(exc)) from None
    _assign(tree, key.strip(), value)


def _assign(tree: dict[str, Any], key: str, value: Any) -> None:
    """`tree[a][b][c] = value` for the key `a.b.c`, making the sections on the way."""
    parts = key.split(".")
    node = tree
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"--set {key}: {part!r} is a value, not a section")
        node = child
    node[parts[-1]] = value


def config_for(stages: registry.Registry) -> type[CrucibleConfig]:
    """The root schema whose `prep` section is that of `stages` (a registry with a stage of a plugin's)."""
    if stages is registry.DEFAULT:
        return CrucibleConfig
    prep = prep_config_for(stages)
    return create_model(
        "CrucibleConfig", __base__=CrucibleConfig, __module__=__name__, prep=(prep, Field(default_factory=prep))
    )


def load_config(
    path: Path | None,
    overrides: Sequence[str] = (),
    replaced: Mapping[str, Any] | None = None,
    stages: registry.Registry = registry.DEFAULT,
) -> CrucibleConfig:
    """Read YAML (or start from defaults), apply overrides, then the keys a verb's flags replace
    (`--stages` is `prep.stages`), and validate all of it together, with the stage sections of `stages`."""
    tree: dict[str, Any] = {}
    if path is not None:
        if Path(path).is_dir():
            raise ConfigError(f"--config {path} is a folder: give a YAML file (examples in configs/)")
        try:
            tree = load_yaml_file(Path(path), f"--config {path}") or {}
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {path}") from None
        except UserError as exc:
            raise ConfigError(str(exc)) from None
        if not isinstance(tree, dict):
            raise ConfigError(f"config file {path} must hold a mapping at the top level")
    for assignment in overrides:
        apply_override(tree, assignment)
    for key, value in (replaced or {}).items():
        _assign(tree, key, value)
    schema = config_for(stages)
    try:
        return schema.model_validate(tree)
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(exc, schema)) from None
