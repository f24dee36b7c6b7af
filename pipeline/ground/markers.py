"""Reading completion markers and small JSON state files that may be absent or torn."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def read_marker(path: Path) -> dict[str, Any] | None:
    """The marker's payload, or None when it is missing or unreadable (treated as not done)."""
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The records of a JSON Lines log (metrics, events); none when it does not exist yet."""
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []
