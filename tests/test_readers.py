"""Every input format yields the same documents; shards split files without losing a line."""

from __future__ import annotations

import gzip
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from data_prep.readers import ReadConfig, plan_shards, read_shard
from tests.conftest import read_set, write_jsonl


def read_all(inputs: list[Path], shard_bytes: int = 2**30) -> tuple[list[str], list[str], list[dict]]:
    ids, texts, quarantined = [], [], []
    for shard in plan_shards(inputs, shard_bytes):
        for batch in read_shard(shard, ReadConfig(), batch_size=64):
            ids += batch.table["id"].to_pylist()
            texts += batch.table["text"].to_pylist()
            quarantined += batch.quarantined
    return ids, texts, quarantined


@pytest.fixture(scope="module")
def records() -> list[dict]:
    return [{"id": r["id"], "text": r["text"]} for r in read_set("multilingual", 300)]


def test_all_formats_give_the_same_documents(records: list[dict], tmp_path: Path) -> None:
    plain = write_jsonl(tmp_path / "docs.jsonl", records)
    (tmp_path / "docs.jsonl.gz").write_bytes(gzip.compress(plain.read_bytes()))
    (tmp_path / "docs.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(plain.read_bytes()))
    pq.write_table(pa.Table.from_pylist(records), tmp_path / "docs.parquet")
    expected = [r["text"] for r in records]
    for name in ("docs.jsonl", "docs.jsonl.gz", "docs.jsonl.zst", "docs.parquet"):
        ids, texts, quarantined = read_all([tmp_path / name])
        assert texts == expected, name
        assert ids == [r["id"] for r in records], name
        assert not quarantined


def test_text_folder_gives_one_document_per_file(records: list[dict], tmp_path: Path) -> None:
    folder = tmp_path / "texts"
    (folder / "sub").mkdir(parents=True)
    for i, record in enumerate(records[:20]):
        (folder / ("sub" if i % 2 else "") / f"{i:03d}.txt").write_text(record["text"])
    ids, texts, _ = read_all([folder])
    assert sorted(texts) == sorted(r["text"] for r in records[:20])
    assert len(set(ids)) == 20
    assert read_all([folder])[0] == ids, "derived ids are stable across runs"


def test_byte_range_shards_cover_every_line_once(records: list[dict], tmp_path: Path) -> None:
    plain = write_jsonl(tmp_path / "docs.jsonl", records)
    shards = plan_shards([plain], shard_bytes=20_000)
    assert len(shards) > 10
    assert read_all([plain], 20_000)[1] == [r["text"] for r in records]


def test_derived_ids_depend_on_content_and_position(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "noid.jsonl", [{"text": "same text"}, {"text": "same text"}, {"text": "other"}])
    ids, _, _ = read_all([path])
    assert len(set(ids)) == 3
    assert read_all([path])[0] == ids


def test_unknown_inputs_are_refused_with_the_path(tmp_path: Path) -> None:
    (tmp_path / "notes.docx").write_bytes(b"x")
    with pytest.raises(ValueError, match="notes.docx"):
        plan_shards([tmp_path / "notes.docx"], 1000)
    with pytest.raises(ValueError, match="does not exist"):
        plan_shards([tmp_path / "missing.jsonl"], 1000)
