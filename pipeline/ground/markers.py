"""Reading completion markers and small JSON state files that may be absent or torn, and appending
to JSON Lines logs so that a line torn by a crash never glues onto the next record."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pipeline.ground.errors import UserError


def read_marker(path: Path) -> dict[str, Any] | None:
    """The marker's payload, or None when it is missing or unreadable (treated as not done)."""
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def read_pointer(path: Path) -> str | None:
    """The name a pointer file (a run's checkpoints/latest) holds, or None when there is none yet."""
    try:
        return path.read_text().strip() or None
    except FileNotFoundError:
        return None


def parse_jsonl(text: str, source: Path) -> list[dict[str, Any]]:
    """The records of JSON Lines `text`. A torn last line (its writer killed mid-append, or a full
    disk) is left out; a bad line before it is corruption, an error naming `source` and the line."""
    lines = text.splitlines()
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as exc:
            if number == len(lines):
                break
            raise UserError(f"{source} line {number} is not JSON ({exc.msg}): the file is damaged; "
                            f"repair or remove that line") from None
    return records


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The records of a JSON Lines log (metrics, events); none when it does not exist yet."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return []
    return parse_jsonl(text, path)


def append_jsonl(path: Path, record: dict[str, Any]) -> None:
    """Append `record` as one line; a torn last line a killed writer left is cut off first, else the
    record would join it and damage a line in the middle of the log."""
    with open(path, "ab+") as handle:
        end = handle.seek(0, 2)
        if end:
            handle.seek(end - 1)
            if handle.read(1) != b"\n":
                handle.seek(0)
                handle.truncate(handle.read().rfind(b"\n") + 1)
        handle.write((json.dumps(record, sort_keys=True) + "\n").encode())
