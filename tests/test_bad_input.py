"""Bad input is quarantined with a reason and counted, never a crash, never silently lost."""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq

from tests.conftest import read_set
from tests.test_prep_pipeline import prep, read_dir


def build_bad_input(folder: Path) -> tuple[list[Path], Counter]:
    """Real documents interleaved with every kind of broken record; returns expected quarantine reasons."""
    folder.mkdir(parents=True)
    good = [json.dumps({"text": r["text"]}, ensure_ascii=False).encode() for r in read_set("english", 30)]
    rng = random.Random(7)
    junk_text = "".join(chr(rng.randrange(0, 32)) for _ in range(2000))
    bad = {
        "malformed_json": [
            b'{"text": "unterminated',
            b"not json at all",
            bytes(rng.randrange(256) for _ in range(300)).replace(b"\n", b" "),
        ],
        "missing_text": [b'{"id": "x1", "body": "text in the wrong field"}'],
        "text_not_string": [b'{"text": 42}'],
        "not_an_object": [b'["a", "list"]'],
        "empty_text": [b'{"text": ""}', b'{"text": "   \\n\\t  "}'],
        "binary_junk": [json.dumps({"text": junk_text}).encode()],
        "too_long": [json.dumps({"text": "word " * 4_200_000}).encode()],  # ~20 MB
    }
    lines = list(good)
    for records in bad.values():
        for record in records:
            lines.insert(rng.randrange(len(lines) + 1), record)
    invalid_utf8 = b'{"text": "caf\xe9 au lait is a ' + b"drink of coffee with milk " * 10 + b'"}'
    lines.insert(5, invalid_utf8)
    (folder / "bad.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    texts = folder / "texts"
    texts.mkdir()
    (texts / "junk.txt").write_bytes(bytes(rng.randrange(256) for _ in range(5000)))
    (texts / "fine.txt").write_text(read_set("english", 31)[-1]["text"])
    expected = Counter({reason: len(records) for reason, records in bad.items()})
    expected["binary_junk"] += 1  # the .txt of random bytes
    return [folder / "bad.jsonl", texts], expected


def test_bad_records_are_quarantined_and_counted(tmp_path: Path) -> None:
    inputs, expected = build_bad_input(tmp_path / "in")
    stats = prep(inputs, tmp_path / "out")
    quarantined = Counter()
    for stage in stats.stages:
        quarantined.update(stage.quarantined)
        assert stage.docs_in == stage.docs_out + sum(stage.dropped.values()) + sum(stage.quarantined.values())
    assert quarantined == expected
    records = read_dir(tmp_path / "out" / "quarantine")
    assert Counter(r["reason"] for r in records) == expected
    assert all(r["origin"] and r["stage"] in ("read", "normalize") for r in records)
    too_long = next(r for r in records if r["reason"] == "too_long")
    assert len(too_long["raw"]) > 20_000_000, "the raw input is kept whole"
    jsonl_records = (tmp_path / "in" / "bad.jsonl").read_bytes().count(b"\n")
    assert stats.stages[0].docs_in == jsonl_records + 2  # two .txt files


def test_invalid_utf8_is_repaired_by_default_and_quarantined_on_request(tmp_path: Path) -> None:
    inputs, _ = build_bad_input(tmp_path / "in")
    prep(inputs, tmp_path / "repair", "prep.stages=[normalize]")
    texts = [r["text"] for r in read_dir(tmp_path / "repair" / "clean")]
    repaired = [t for t in texts if t.startswith("caf au lait")]
    assert len(repaired) == 1 and "\ufffd" not in repaired[0]
    stats = prep(inputs, tmp_path / "strict", "prep.stages=[normalize]", "prep.normalize.invalid_utf8=quarantine")
    normalize = next(row for row in stats.stages if row.name == "normalize")
    assert normalize.quarantined["invalid_utf8"] == 1
    clean = pq.read_table(tmp_path / "strict" / "clean").column("text").to_pylist()
    assert not any(t.startswith("caf") for t in clean)
