"""The repository's own sample corpus (data/sample) as records, for tests that need real text by source."""

from __future__ import annotations

import gzip
import io
import json
from functools import cache
from pathlib import Path

import zstandard

SAMPLE = Path(__file__).resolve().parents[1] / "data" / "sample"


@cache
def _all_records() -> tuple[dict, ...]:
    records = []
    for path in sorted(SAMPLE.glob("corpus-*.jsonl.*")):
        raw = path.read_bytes()
        data = (
            gzip.decompress(raw)
            if path.suffix == ".gz"
            else zstandard.ZstdDecompressor().stream_reader(io.BytesIO(raw)).read()
        )
        records.extend(json.loads(line) for line in data.decode().splitlines())
    return tuple(records)


def sample_records(sources: tuple[str, ...], lang: str = "en", limit: int | None = None) -> list[dict]:
    """Records of the given `source` values and declared language, in file order."""
    found = [dict(r) for r in _all_records() if r["source"] in sources and r["lang"] == lang]
    return found[:limit]
