"""Shared fixtures: real text from the team's shared corpora, written as pipeline inputs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def shared_file(name: str) -> Path:
    path = SHARED_DATA / name
    if not path.exists():
        pytest.skip(f"shared corpus {name} is not available next to the repository")
    return path


def read_jsonl(path: Path, limit: int | None = None) -> list[dict]:
    records = []
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            records.append(json.loads(line))
            if limit is not None and len(records) >= limit:
                break
    return records


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    return path


@pytest.fixture(scope="session")
def mixed_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """~900 real documents: multilingual, near-duplicates, English prose, as one JSONL file."""
    records = (
        read_jsonl(shared_file("multilingual.jsonl"), 400)
        + read_jsonl(shared_file("neardup.jsonl"), 400)
        + read_jsonl(shared_file("english.jsonl"), 100)
    )
    keep = [{"id": r["id"], "text": r["text"]} for r in records]
    return write_jsonl(tmp_path_factory.mktemp("corpus") / "mixed.jsonl", keep)
