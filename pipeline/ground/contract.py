"""Reading a typed, versioned JSON artifact (the shard manifest, prep's stats.json): one way to refuse a bad one.

A file that is not JSON, of another schema version, or whose fields do not validate is refused with
one line naming the file and the first problem; the owner of each artifact says what kind it is.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from pipeline.ground.errors import UserError

Model = TypeVar("Model", bound=BaseModel)


class Record(BaseModel):
    """A part of a contract: its fields typed, and fields it does not name (a newer writer's) kept."""

    model_config = ConfigDict(extra="allow")


def first_problem(exc: ValidationError) -> str:
    """The first problem of a failed validation, as `field.path: message`."""
    problem = exc.errors()[0]
    return ".".join(str(part) for part in problem["loc"]) + f": {problem['msg']}"


def read_versioned(
    model: type[Model],
    text: str,
    where: Path,
    version: int,
    error: type[UserError],
    kind: str,
    unversioned: int | None = None,
) -> Model:
    """`text`, the file `where`, as `model` of schema `version`; a file without a version reads as `unversioned`
    (its writer predates the field). Anything else raises `error` in one line."""
    try:
        fields = json.loads(text)
    except json.JSONDecodeError as exc:
        raise error(f"{where} is not valid JSON ({exc})") from None
    found = fields.get("schema_version", unversioned) if isinstance(fields, dict) else None
    if found != version:
        raise error(f"{where}: schema_version {found} is not {version}")
    try:
        return model.model_validate(fields)
    except ValidationError as exc:
        raise error(f"{where}: {first_problem(exc)} (a damaged or hand-edited {kind})") from None
