"""The base of every config section: unknown keys and wrong types are errors, not surprises."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    """A strict config section: extra keys are rejected, values are validated on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)

    def fingerprint(self) -> dict[str, Any]:
        """What identifies these settings' results: a change reruns the work that used them."""
        return self.model_dump(mode="json")
