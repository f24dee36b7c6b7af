"""Property-based fuzzing of the readers and PII redaction.

Random corruptions (truncation, flipped, zeroed, inserted and deleted bytes) of real sample
documents written as JSONL, .gz, .zst and Parquet go through read, normalize and pii as a prep
task runs them: nothing raises, the books balance in every stage, and no planted PII whose
surroundings survived the corruption reaches the kept text. Redaction is also fuzzed on its own:
planted PII in random prose always goes; hashes, UUIDs, dates, versions, MACs and CVE ids never
fire. 1,000 generated cases per run (EXAMPLES below), about 10 s.
"""

from __future__ import annotations

import gzip
import io
import json
import os
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from data_prep.books import DocBooks
from data_prep.normalize import NormalizeConfig, NormalizeStage
from data_prep.pii import PiiConfig, PiiRedactor, PiiStage
from data_prep.readers import ReadConfig, plan_shards, read_shard
from data_prep.stage import Decision
from pipeline.outputs import check_books
from tests.conftest import REPO

EXAMPLES = {"files": 100, "pii": 300, "decoys": 300}  # 4 formats x 100 + 300 + 300 = 1,000 cases
# New cases every run on a developer's machine; in CI (CI set) the same cases every run, so a red CI
# is a reproducible one.
FUZZ = settings(
    deadline=None,
    database=None,
    derandomize=bool(os.environ.get("CI")),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)

# Made-up PII of every kind, in the forms issue 18 found reaching clean/.
PLANTED = [
    "jane.doe@example.com",
    "jane.doe [at] example [dot] com",
    "jane.doe(at)example(dot)com",
    "jane.doe\uff20example.com",
    "+44 20 7946 0958",
    "415 555 2671",
    "(415) 555-0132",
    "123-45-6789",
    "123 45 6789",
    "93.184.216.34",
    "093.184.216.034",
    "4111 1111 1111 1111",
    "4111.1111.1111.1111",
    "GB82 WEST 1234 5698 7654 32",
    "gb82 west 1234 5698 7654 32",
    "AKIAIOSFODNN7EXAMPLE",
]


def planted_documents() -> list[dict]:
    raw = zstandard.ZstdDecompressor().decompress((REPO / "data" / "sample" / "corpus-00.jsonl.zst").read_bytes())
    docs = [json.loads(line) for line in raw.splitlines()[:40]]
    for i, doc in enumerate(docs):
        doc["text"] = doc["text"][:1500] + f" Contact: {PLANTED[i % len(PLANTED)]} today."
    return docs


DOCS = planted_documents()
JSONL = b"".join(json.dumps(doc, ensure_ascii=False).encode() + b"\n" for doc in DOCS)


def encoded(kind: str) -> bytes:
    if kind == "jsonl":
        return JSONL
    if kind == "jsonl.gz":
        return gzip.compress(JSONL, mtime=0)
    if kind == "jsonl.zst":
        return zstandard.ZstdCompressor().compress(JSONL)
    sink = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(DOCS), sink, row_group_size=10)
    return sink.getvalue()


CORRUPTION = st.one_of(
    st.tuples(st.just("truncate"), st.floats(0, 1)),
    st.tuples(st.just("flip"), st.floats(0, 1), st.integers(1, 255)),
    st.tuples(st.just("zero"), st.floats(0, 1), st.integers(1, 512)),
    st.tuples(st.just("insert"), st.floats(0, 1), st.binary(min_size=1, max_size=64)),
    st.tuples(st.just("delete"), st.floats(0, 1), st.integers(1, 512)),
)


def corrupt(data: bytes, corruptions: list[tuple]) -> bytes:
    buffer = bytearray(data)
    for kind, where, *arg in corruptions:
        at = int(where * len(buffer))
        if kind == "truncate":
            del buffer[at:]
        elif kind == "flip" and at < len(buffer):
            buffer[at] ^= arg[0]
        elif kind == "zero":
            buffer[at : at + arg[0]] = bytes(len(buffer[at : at + arg[0]]))
        elif kind == "insert":
            buffer[at:at] = arg[0]
        elif kind == "delete":
            del buffer[at : at + arg[0]]
    return bytes(buffer)


def run_task(path: Path, shard_bytes: int) -> tuple[list[dict], list[str], list[dict]]:
    """read -> normalize -> pii over every shard of `path`, booked as a prep task books them."""
    books = {name: DocBooks(name) for name in ("read", "normalize", "pii")}
    stages = {"normalize": NormalizeStage(NormalizeConfig()), "pii": PiiStage(PiiConfig())}
    kept: list[str] = []
    for shard in plan_shards([path], shard_bytes):
        for batch in read_shard(shard, ReadConfig(), batch_size=16):
            books["read"].quarantine_raw(batch.quarantined)
            table = books["read"].apply(batch.table, Decision(batch.table))
            for name, stage in stages.items():
                table = books[name].apply(table, stage.decide(table))
            kept += table["text"].to_pylist()
    stats = [
        {
            "name": name,
            "docs_in": b.docs_in,
            "docs_out": sum(t.num_rows for t in b.kept),
            "dropped": Counter(r["reason"] for r in b.dropped),
            "quarantined": Counter(r["reason"] for r in b.quarantined),
        }
        for name, b in books.items()
    ]
    return stats, kept, books["read"].quarantined


@pytest.mark.parametrize("kind", ["jsonl", "jsonl.gz", "jsonl.zst", "parquet"])
def test_corrupted_inputs_never_crash_balance_the_books_and_leak_no_planted_pii(kind: str, tmp_path: Path) -> None:
    original = encoded(kind)

    @settings(FUZZ, max_examples=EXAMPLES["files"])
    @given(corruptions=st.lists(CORRUPTION, min_size=1, max_size=3))
    def check(corruptions: list[tuple]) -> None:
        path = tmp_path / f"docs.{kind}"
        path.write_bytes(corrupt(original, corruptions))
        stats, kept, quarantined = run_task(path, shard_bytes=16_384)
        check_books(stats)
        assert all(record["origin"] and record["reason"] for record in quarantined)
        for pii in PLANTED:
            assert not any(f" {pii} " in text for text in kept), f"planted {pii!r} survived"

    check()


WORDS = st.lists(st.from_regex(r"[A-Za-z]{1,12}[,.;:!?]?", fullmatch=True), max_size=8)


@settings(FUZZ, max_examples=EXAMPLES["pii"])
@given(before=WORDS, pii=st.sampled_from(PLANTED), after=WORDS, newline=st.booleans())
def test_planted_pii_goes_in_any_prose(before: list[str], pii: str, after: list[str], newline: bool) -> None:
    text = " ".join(before) + ("\n" if newline else " ") + pii + " " + " ".join(after)
    redacted, counts = PiiRedactor().redact(text)
    assert pii not in redacted and counts


DECOYS = st.one_of(
    st.builds("{}.{}.{}".format, st.integers(0, 99), st.integers(0, 99), st.integers(0, 999)),
    st.dates().map(lambda d: d.isoformat()),
    st.dates().map(lambda d: d.strftime("%d.%m.%Y")),
    st.uuids().map(str),
    st.binary(min_size=16, max_size=16).map(bytes.hex),
    st.binary(min_size=20, max_size=20).map(bytes.hex),
    st.binary(min_size=6, max_size=6).map(lambda b: ":".join(f"{x:02x}" for x in b)),
    st.builds("CVE-{}-{}".format, st.integers(1999, 2030), st.integers(1000, 99999)),
    st.builds(
        "978-{}-{:02d}-{:06d}-{}".format,
        st.integers(0, 9),
        st.integers(0, 99),
        st.integers(0, 999999),
        st.integers(0, 9),
    ),
)


@settings(FUZZ, max_examples=EXAMPLES["decoys"])
@given(before=WORDS, decoy=DECOYS, after=WORDS)
def test_lookalikes_never_fire(before: list[str], decoy: str, after: list[str]) -> None:
    text = " ".join([*before, decoy, *after])
    assert PiiRedactor().redact(text) == (text, {})
