"""One bad input file never stops a run: each failure inside a file is one counted quarantine
record naming the file, the byte offset or row group and a reason; the records before it stay.

The broken files are cut from the shipped sample corpus (data/sample), as a careless copy or a
failing disk would leave them.
"""

from __future__ import annotations

import errno
import gzip
import json
import os
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from data_prep import readers
from data_prep.readers import ReadConfig, plan_shards, read_shard, skipped_entries
from tests.conftest import REPO, crucible_in_process

SAMPLE = REPO / "data" / "sample"


def read_all(*inputs: Path) -> tuple[list[str], list[str], list[dict]]:
    ids, texts, quarantined = [], [], []
    for shard in plan_shards(list(inputs), 2**30):
        for batch in read_shard(shard, ReadConfig(), batch_size=64):
            ids += batch.table["id"].to_pylist()
            texts += batch.table["text"].to_pylist()
            quarantined += batch.quarantined
    return ids, texts, quarantined


def sample_lines(name: str = "corpus-00.jsonl.zst") -> bytes:
    raw = (SAMPLE / name).read_bytes()
    return zstandard.ZstdDecompressor().decompress(raw) if name.endswith(".zst") else gzip.decompress(raw)


def whole_lines_before(data: bytes, offset: int) -> int:
    return data[:offset].count(b"\n")


def test_truncated_zst_keeps_what_it_read_and_records_the_rest(tmp_path: Path) -> None:
    raw = (SAMPLE / "corpus-00.jsonl.zst").read_bytes()
    n_docs = sample_lines().count(b"\n")
    (tmp_path / "half.jsonl.zst").write_bytes(raw[: len(raw) // 2])
    _, texts, quarantined = read_all(tmp_path / "half.jsonl.zst")
    assert 0 < len(texts) < n_docs
    assert [q["reason"] for q in quarantined] == ["truncated_input"]
    record = quarantined[0]
    assert record["detail"]["file"] == "half.jsonl.zst"
    assert record["origin"] == f"half.jsonl.zst:{record['detail']['offset']}"
    assert whole_lines_before(sample_lines(), record["detail"]["offset"]) == len(texts)
    assert record["raw"] and not record["raw"].endswith(b"\n"), "the cut-off record is kept"


def test_small_truncated_zst_is_one_quarantine_record_not_an_empty_file(tmp_path: Path) -> None:
    raw = (SAMPLE / "corpus-02.jsonl.zst").read_bytes()
    (tmp_path / "tiny.jsonl.zst").write_bytes(raw[:300])
    _, texts, quarantined = read_all(tmp_path / "tiny.jsonl.zst")
    assert texts == []
    assert [(q["reason"], q["origin"]) for q in quarantined] == [("truncated_input", "tiny.jsonl.zst:0")]


def test_truncated_gz_is_detected(tmp_path: Path) -> None:
    raw = (SAMPLE / "corpus-01.jsonl.gz").read_bytes()
    (tmp_path / "cut.jsonl.gz").write_bytes(raw[: len(raw) * 3 // 4])
    _, texts, quarantined = read_all(tmp_path / "cut.jsonl.gz")
    assert [q["reason"] for q in quarantined] == ["truncated_input"]
    assert whole_lines_before(sample_lines("corpus-01.jsonl.gz"), quarantined[0]["detail"]["offset"]) == len(texts)


def _zero_bytes_in_the_middle(name: str, folder: Path) -> Path:
    raw = bytearray((SAMPLE / name).read_bytes())
    middle = len(raw) // 2
    raw[middle : middle + 64] = bytes(64)
    (folder / name).write_bytes(bytes(raw))
    return folder / name


def test_corrupt_zst_frame_is_quarantined_with_its_offset(tmp_path: Path) -> None:
    _, texts, quarantined = read_all(_zero_bytes_in_the_middle("corpus-00.jsonl.zst", tmp_path))
    assert [q["reason"] for q in quarantined] == ["corrupt_frame"]
    assert "compressed stream read to byte" in quarantined[0]["detail"]["error"]
    assert whole_lines_before(sample_lines(), quarantined[0]["detail"]["offset"]) == len(texts)


def test_corrupt_gz_member_is_caught_by_its_checksum(tmp_path: Path) -> None:
    """Deflate may decode damage into garbage without noticing; the member's CRC catches it at its end."""
    _, texts, quarantined = read_all(_zero_bytes_in_the_middle("corpus-01.jsonl.gz", tmp_path))
    assert quarantined[-1]["reason"] == "corrupt_frame" and "incorrect data check" in quarantined[-1]["detail"]["error"]
    assert {q["reason"] for q in quarantined[:-1]} <= {"malformed_json"}
    assert len(texts) < sample_lines("corpus-01.jsonl.gz").count(b"\n") // 2 + 50


def test_plain_text_named_gz_is_a_corrupt_frame(tmp_path: Path) -> None:
    (tmp_path / "plain.jsonl.gz").write_bytes(sample_lines()[:5000])
    _, texts, quarantined = read_all(tmp_path / "plain.jsonl.gz")
    assert texts == [] and [q["reason"] for q in quarantined] == ["corrupt_frame"]


def test_gzip_members_and_zstd_frames_are_all_read(tmp_path: Path) -> None:
    data = sample_lines()
    cut = data.index(b"\n", len(data) // 2) + 1
    (tmp_path / "two.jsonl.gz").write_bytes(gzip.compress(data[:cut]) + gzip.compress(data[cut:]))
    zstd = zstandard.ZstdCompressor()
    (tmp_path / "two.jsonl.zst").write_bytes(zstd.compress(data[:cut]) + zstd.compress(data[cut:]))
    for name in ("two.jsonl.gz", "two.jsonl.zst"):
        _, texts, quarantined = read_all(tmp_path / name)
        assert len(texts) == data.count(b"\n") and not quarantined, name


def test_broken_records_inside_jsonl(tmp_path: Path) -> None:
    lines = [
        b'{"text": "before"}',
        b'{"text": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
        b'{"id": ' + b"7" * 5000 + b', "text": "huge id"}',
        b'{"id": "\\ud800", "text": "lone surrogate id"}',
        b'{"id": {"nested": 1}, "text": "object id"}',
        b'{"id": "' + b"x" * 5000 + b'", "text": "long id"}',
        b'{"id": 12, "text": "integer id"}',
        b'{"text": "after"}',
    ]
    (tmp_path / "bad.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    ids, texts, quarantined = read_all(tmp_path / "bad.jsonl")
    assert texts == ["before", "integer id", "after"] and ids[1] == "12"
    assert [q["reason"] for q in quarantined] == ["nesting_too_deep", "malformed_json", "bad_id", "bad_id", "bad_id"]
    assert all(q["origin"].startswith("bad.jsonl:") for q in quarantined)


def test_utf8_bom_does_not_cost_the_first_record(tmp_path: Path) -> None:
    (tmp_path / "bom.jsonl").write_bytes(b'\xef\xbb\xbf{"text": "first"}\n{"text": "second"}\n')
    bom = (tmp_path / "bom.jsonl").read_bytes()
    (tmp_path / "bom.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(bom))
    texts_dir = tmp_path / "texts"
    texts_dir.mkdir()
    (texts_dir / "a.txt").write_bytes(b"\xef\xbb\xbfplain text")
    for path in (tmp_path / "bom.jsonl", tmp_path / "bom.jsonl.zst"):
        assert read_all(path)[1:] == (["first", "second"], []), path.name
    assert read_all(texts_dir)[1] == ["plain text"]


@pytest.mark.parametrize("value", [[1, 2, 3], 42, 3.5, {"a": "b"}])
def test_parquet_text_of_another_type_is_quarantined_per_row(value: object, tmp_path: Path) -> None:
    pq.write_table(pa.table({"text": [value] * 5, "id": [f"r{i}" for i in range(5)]}), tmp_path / "odd.parquet")
    _, texts, quarantined = read_all(tmp_path / "odd.parquet")
    assert texts == []
    expected = [("text_not_string", f"odd.parquet:{i}") for i in range(5)]
    assert [(q["reason"], q["origin"]) for q in quarantined] == expected


def _sample_parquet(path: Path, rows: int = 400) -> list[str]:
    texts = [json.loads(line)["text"] for line in sample_lines().splitlines()[:rows]]
    pq.write_table(pa.table({"text": texts}), path, row_group_size=100, compression="snappy")
    return texts


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_unreadable_parquet_is_one_record(damage: str, tmp_path: Path) -> None:
    path = tmp_path / "docs.parquet"
    _sample_parquet(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] if damage == "truncated" else os.urandom(2000))
    _, texts, quarantined = read_all(path)
    assert texts == [] and [(q["reason"], q["origin"]) for q in quarantined] == [("bad_parquet", "docs.parquet:0")]


def test_damaged_parquet_row_group_is_quarantined_and_the_others_read(tmp_path: Path) -> None:
    path = tmp_path / "docs.parquet"
    texts = _sample_parquet(path)
    group = pq.ParquetFile(path).metadata.row_group(1).column(0)
    start = group.dictionary_page_offset or group.data_page_offset
    data = bytearray(path.read_bytes())
    data[start + 40 : start + 400] = bytes(360)
    path.write_bytes(bytes(data))
    _, read, quarantined = read_all(path)
    found = [(q["reason"], q["detail"]["row_group"], q["detail"]["rows"]) for q in quarantined]
    assert found == [("bad_parquet", 1, 100)]
    assert read == texts[:100] + texts[200:]


def test_parquet_without_the_text_column_is_one_record_and_the_next_file_read(tmp_path: Path) -> None:
    """A prep output's dropped/ part (id, reason, no text) among the inputs: recorded, not a stopped run."""
    pq.write_table(pa.table({"id": ["d1", "d2", "d3"], "reason": ["exact_duplicate"] * 3}), tmp_path / "a.parquet")
    (tmp_path / "b.jsonl").write_text('{"text": "read on"}\n')
    _, texts, quarantined = read_all(tmp_path)
    assert texts == ["read on"]
    assert [(q["reason"], q["origin"]) for q in quarantined] == [("no_text_column", f"{tmp_path.name}/a.parquet:0")]
    assert quarantined[0]["detail"]["rows"] == 3 and quarantined[0]["detail"]["columns"] == ["id", "reason"]


def test_unreadable_file_is_quarantined_and_the_next_file_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "a.jsonl").write_text('{"text": "one"}\n{"text": "two"}\n')
    (tmp_path / "b.jsonl").write_text('{"text": "three"}\n')
    real_open = readers._open_stream

    class FailingDisk:
        def __init__(self, stream):
            self.stream, self.calls = stream, 0

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.stream.close()

        def seek(self, offset):
            return self.stream.seek(offset)

        def readline(self, limit=-1):
            self.calls += 1
            if self.calls > 1:
                raise OSError(errno.EIO, os.strerror(errno.EIO))
            return self.stream.readline(limit)

    def open_stream(path: str):
        stream = real_open(path)
        return FailingDisk(stream) if path.endswith("a.jsonl") else stream

    monkeypatch.setattr(readers, "_open_stream", open_stream)
    _, texts, quarantined = read_all(tmp_path)
    assert texts == ["one", "three"]
    assert [(q["reason"], q["origin"], q["detail"]["error"]) for q in quarantined] == [
        ("unreadable_file", f"{tmp_path.name}/a.jsonl:16", os.strerror(errno.EIO))
    ]


def test_symlinks_in_input_folders_are_skipped_and_listed(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.jsonl").write_text('{"text": "not part of the corpus"}\n')
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "real.jsonl").write_text('{"text": "corpus"}\n')
    (folder / "link.jsonl").symlink_to(outside / "secret.jsonl")
    (folder / "loop").symlink_to(folder)
    assert read_all(folder)[1] == ["corpus"]
    assert skipped_entries([folder]) == [
        f"{folder / 'link.jsonl'} (symbolic link)",
        f"{folder / 'loop'} (symbolic link)",
    ]


def test_prep_goes_on_past_every_broken_file_and_counts_it(tmp_path: Path) -> None:
    """The case list of issue 18 as one folder: `crucible prep` exits 0, the table shows the quarantine."""
    folder = tmp_path / "in"
    folder.mkdir()
    zst = (SAMPLE / "corpus-00.jsonl.zst").read_bytes()
    (folder / "a-truncated.jsonl.zst").write_bytes(zst[: len(zst) // 8])
    gz = (SAMPLE / "corpus-01.jsonl.gz").read_bytes()
    (folder / "b-truncated.jsonl.gz").write_bytes(gz[: len(gz) // 8])
    (folder / "c-plain.jsonl.gz").write_bytes(sample_lines()[:3000])
    (folder / "d-garbage.parquet").write_bytes(b"PAR1 not really")
    pq.write_table(pa.table({"text": [1, 2]}), folder / "e-ints.parquet")
    pq.write_table(pa.table({"id": ["x"], "reason": ["exact_duplicate"]}), folder / "e-no-text.parquet")
    (folder / "f-records.jsonl").write_bytes(
        b'\xef\xbb\xbf{"text": "first record after a BOM"}\n'
        + b'{"text": '
        + b"[" * 100_000
        + b"]" * 100_000
        + b"}\n"
        + b'{"id": "\\ud800", "text": "bad id"}\n'
    )
    (folder / "g-link.jsonl").symlink_to(folder / "f-records.jsonl")
    output = tmp_path / "out"
    result = crucible_in_process(
        "prep",
        "--input",
        str(folder),
        "--output",
        str(output),
        "--stages",
        "normalize",
        "--no-progress",
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    stats = json.loads((output / "stats.json").read_text())
    read = stats["stages"][0]
    assert read["quarantined"] == {
        "bad_id": 1,
        "bad_parquet": 1,
        "corrupt_frame": 1,
        "nesting_too_deep": 1,
        "no_text_column": 1,
        "text_not_string": 2,
        "truncated_input": 2,
    }
    assert read["docs_in"] == read["docs_out"] + sum(read["quarantined"].values())
    assert stats["skipped_inputs"] == [f"{folder / 'g-link.jsonl'} (symbolic link)"]
    assert "g-link.jsonl" in result.stdout and "truncated_input" in result.stdout
    quarantine = [
        r for part in sorted((output / "quarantine").glob("*.parquet")) for r in pq.read_table(part).to_pylist()
    ]
    files = Counter(
        json.loads(r["detail"]).get("file") for r in quarantine if r["reason"] in ("truncated_input", "corrupt_frame")
    )
    assert files == {"in/a-truncated.jsonl.zst": 1, "in/b-truncated.jsonl.gz": 1, "in/c-plain.jsonl.gz": 1}
