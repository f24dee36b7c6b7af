"""Reading completion markers and small JSON state files that may be absent or torn, and appending
to JSON Lines logs so that a line torn by a crash never glues onto the next record."""

from __future__ import annotations

import json
import stat
from pathlib import Path
from typing import Any

from pipeline.ground.errors import UserError


def read_marker(path: Path) -> dict[str, Any] | None:
    """The marker's payload, or None when it is missing, unreadable or not a plain file (treated as not done;
    a FIFO in its place would block the reader)."""
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


POINTER_BYTES = 256  # a pointer holds one short name; anything longer was not written by Crucible


def read_pointer(path: Path) -> str | None:
    """The name of a sibling that a pointer file (a run's checkpoints/latest) holds, or None when there is
    none yet. Anything else in its place (a folder, a FIFO that would block a reader, a link, a long file,
    a name with a path in it) is an error naming it."""
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return None
    if not stat.S_ISREG(mode):
        what = "a folder" if stat.S_ISDIR(mode) else "a link" if stat.S_ISLNK(mode) else "not a plain file"
        raise UserError(f"{path} is {what}, not the pointer file Crucible writes: remove it")
    with open(path, "rb") as handle:
        raw = handle.read(POINTER_BYTES + 1)
    try:
        name = raw.decode("utf-8").strip()
    except UnicodeDecodeError:
        name = None
    if len(raw) > POINTER_BYTES or name is None or "/" in name or "\\" in name or name in (".", ".."):
        raise UserError(f"{path} does not hold the one name of a sibling that Crucible writes there: remove it")
    return name or None


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
            raise UserError(
                f"{source} line {number} is not JSON ({exc.msg}): the file is damaged; repair or remove that line"
            ) from None
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
