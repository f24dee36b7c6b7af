"""The base of every config section: unknown keys and wrong types are errors, not surprises."""

from __future__ import annotations

import types
import typing
from typing import Any

from pydantic import BaseModel, ConfigDict, model_validator


def _takes_list(annotation: Any) -> bool:
    """Whether a field's type is a list (or a list or None)."""
    if typing.get_origin(annotation) is list:
        return True
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return any(typing.get_origin(arg) is list for arg in typing.get_args(annotation))
    return False


class Section(BaseModel):
    """A strict config section: extra keys are rejected, values are validated on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)

    @model_validator(mode="before")
    @classmethod
    def _one_value_is_a_list_of_one(cls, values: Any) -> Any:
        """`--set prep.langid.keep_languages=en` means `[en]`: a lone value where a list goes is wrapped."""
        if not isinstance(values, dict):
            return values
        fixed = dict(values)
        for name, field in cls.model_fields.items():
            value = fixed.get(name)
            if isinstance(value, (str, int, float)) and not isinstance(value, bool) and _takes_list(field.annotation):
                fixed[name] = [value]
        return fixed

    def fingerprint(self) -> dict[str, Any]:
        """What identifies these settings' results: a change reruns the work that used them."""
        return self.model_dump(mode="json")
