"""Files a stage's settings name (word lists, URL lists, eval sets, models): checked and fingerprinted.

A stage's results depend on what these files say, not only on their names, so their digests go
into the stage's fingerprint: edit a list and the stage reruns. A missing file is a config
mistake, reported before any task starts.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from pipeline.ground.errors import UserError
from pipeline.ground.hashing import file_sha256
from pipeline.ground.records import text_lines


def file_digests(paths: Iterable[Path], key: str) -> dict[str, str]:
    """sha256 of each file, by path; `key` (e.g. "prep.blocklist.url_lists") names the setting in errors."""
    digests = {}
    for path in paths:
        if not Path(path).is_file():
            raise UserError(f"{key}: file {path} not found")
        digests[str(path)] = file_sha256(Path(path))
    return digests


def read_entries(path: Path) -> list[str]:
    """The entries of a one-entry-a-line UTF-8 list, stripped; blank lines and `#` comment lines are skipped."""
    return [entry for _, line in text_lines(path) if (entry := line.strip()) and not entry.startswith("#")]
