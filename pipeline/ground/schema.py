"""The base of every config section: unknown keys and wrong types are errors, not surprises."""

from __future__ import annotations

import types
from typing import Any, Union, get_args, get_origin

from pydantic import BaseModel, ConfigDict, ValidationInfo, field_validator, model_validator


def _types_of(annotation: Any) -> set[Any]:
    """The plain types an annotation admits (`int | None` -> {int, NoneType})."""
    if get_origin(annotation) in (Union, types.UnionType):
        return set().union(*(_types_of(arg) for arg in get_args(annotation)))
    return {annotation}


class Section(BaseModel):
    """A strict config section: extra keys are rejected, values are validated on assignment, and a number
    that is not finite (`1.0e+999` reads as infinity) is refused."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False, allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _one_value_is_a_list_of_one(cls, values: Any) -> Any:
        """`--set prep.langid.keep_languages=en` means `[en]`: a lone value where a list goes is wrapped."""
        if not isinstance(values, dict):
            return values
        fixed = dict(values)
        for name, field in cls.model_fields.items():
            value = fixed.get(name)
            takes_list = any(get_origin(t) is list for t in _types_of(field.annotation))
            if isinstance(value, (str, int, float)) and not isinstance(value, bool) and takes_list:
                fixed[name] = [value]
        return fixed

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_for_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        """pydantic reads true as 1; `--set train.max_steps=true` is a mistake, not a step count."""
        if isinstance(value, bool) and info.field_name in cls.model_fields:
            admitted = _types_of(cls.model_fields[info.field_name].annotation)
            if bool not in admitted and admitted & {int, float}:
                raise ValueError(f"expected a number, not {str(value).lower()}")
        return value

    def fingerprint(self) -> dict[str, Any]:
        """What identifies these settings' results: a change reruns the work that used them."""
        return self.model_dump(mode="json")

    def missing(self) -> str | None:
        """What a stage with these settings lacks to do anything (its files), or None: a stage listed in
        `prep.stages` without them would pass every document through and look like it had checked them."""
        return None
