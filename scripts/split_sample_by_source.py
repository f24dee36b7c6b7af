"""Split the sample corpus by origin into the three sources of configs/sources.yaml.

data/sample mixes every origin in every file; a record's `source` field says where it came from.
This writes one plain JSONL file per named source (records unchanged, in corpus order), so the
sources config can list each as its own input. The output is the same bytes on every run.
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
from collections.abc import Iterator
from pathlib import Path

import zstandard

GROUPS = {  # named source -> the corpus origins it holds
    "manpages": ["manpages"],
    "python-docs": ["python-docs", "python-docs-rst"],
    "debian": ["package-descriptions", "debian-changelog", "debian-copyright"],
}


def lines(path: Path) -> Iterator[str]:
    with open(path, "rb") as raw:
        decompressed = (
            gzip.GzipFile(fileobj=raw) if path.name.endswith(".gz") else zstandard.ZstdDecompressor().stream_reader(raw)
        )
        with io.TextIOWrapper(decompressed, encoding="utf-8") as handle:
            yield from handle


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input", type=Path, default=Path("data/sample"))
    parser.add_argument("--output", type=Path, default=Path("data/sample-by-source"))
    args = parser.parse_args()
    group_of = {origin: name for name, origins in GROUPS.items() for origin in origins}
    out = {name: [] for name in GROUPS}
    for path in sorted(args.input.glob("corpus-*.jsonl.*")):
        for line in lines(path):
            out[group_of[json.loads(line)["source"]]].append(line)
    for name, records in out.items():
        target = args.output / name / f"{name}.jsonl"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text("".join(records), encoding="utf-8")
        print(f"{target}: {len(records):,} records")


if __name__ == "__main__":
    main()
