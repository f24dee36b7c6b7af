"""Fields named in `prep.read.keep_fields` become string columns, the same from JSONL and Parquet; none by default."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from data_prep.readers import ReadConfig, plan_shards, read_shard
from tests.conftest import write_jsonl
from tests.sample_corpus import sample_records


def read_columns(path: Path, config: ReadConfig) -> pa.Table:
    tables = [batch.table for shard in plan_shards([path], 2**30) for batch in read_shard(shard, config, 7)]
    return pa.concat_tables(tables)


def test_kept_fields_are_the_same_from_jsonl_and_parquet(tmp_path: Path) -> None:
    records = sample_records(("debian-changelog", "manpages"), limit=20)
    for i, record in enumerate(records):
        record["url"] = f"https://sources.example.org/{record['id']}" if i % 3 else None
        record["date"] = 2023 + i % 2
    jsonl = write_jsonl(tmp_path / "docs.jsonl", records)
    parquet = tmp_path / "docs.parquet"
    pq.write_table(pa.Table.from_pylist(records), parquet)
    config = ReadConfig(keep_fields=["url", "source", "date", "absent"])
    from_jsonl, from_parquet = read_columns(jsonl, config), read_columns(parquet, config)
    for name in ("url", "source", "absent"):
        assert from_jsonl[name].type == pa.string()
        assert from_jsonl[name].to_pylist() == from_parquet[name].to_pylist()
    assert from_jsonl["url"].to_pylist() == [r["url"] for r in records]
    assert from_jsonl["source"].to_pylist() == [r["source"] for r in records]
    assert from_jsonl["date"].to_pylist() == [str(r["date"]) for r in records]
    assert from_jsonl["absent"].null_count == len(records)


def test_no_field_is_kept_unless_configured(tmp_path: Path) -> None:
    jsonl = write_jsonl(tmp_path / "docs.jsonl", sample_records(("manpages",), limit=3))
    assert read_columns(jsonl, ReadConfig()).column_names == ["id", "text", "origin", "_utf8_errors"]


@pytest.mark.parametrize("fields", [["text"], ["url", "url"], ["_private"]])
def test_reserved_or_repeated_fields_are_refused(fields: list[str]) -> None:
    with pytest.raises(ValueError, match="keep_fields must be distinct"):
        ReadConfig(keep_fields=fields)
