"""Words as the list filters see them: lower-cased `\\w+` runs, so case, spacing and punctuation never matter."""

from __future__ import annotations

import re

WORD = re.compile(r"\w+")


def words(text: str) -> list[str]:
    return WORD.findall(text.lower())
