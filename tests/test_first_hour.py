"""A new user's own data: prep that keeps nothing (or quarantines most of it) fails loudly, in one line that
names the fields it saw and the setting to change, and never points at training."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.conftest import read_set, write_jsonl
from tests.conftest import crucible_in_process as crucible

STAGES = "prep.stages=[normalize, exact_dedup, tokenize, pack]"
SMALL = ["prep.tokenizer.vocab_size=300", "prep.pack.seq_len=32"]


def prep(inputs: Path, output: Path, *sets: str, verb: str = "prep") -> subprocess.CompletedProcess[str]:
    flags = [arg for value in (STAGES, *SMALL, *sets) for arg in ("--set", value)]
    return crucible(verb, "--input", str(inputs), "--output", str(output), "--no-progress", *flags)


@pytest.fixture(scope="module")
def own_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Real documents under `content`, beside an id and a url: the shape of many exported corpora."""
    records = [
        {"id": r["id"], "content": r["text"], "url": f"https://example.org/{i}"}
        for i, r in enumerate(read_set("english", 60))
    ]
    return write_jsonl(tmp_path_factory.mktemp("own") / "docs.jsonl", records)


def test_prep_that_keeps_nothing_exits_2_naming_the_fields_and_the_setting(own_data: Path, tmp_path: Path) -> None:
    result = prep(own_data, tmp_path / "out")
    assert result.returncode == 2, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    line = result.stderr.strip()
    assert "kept no documents of the 60 it read (missing_text 60)" in line
    assert "the fields id, content, url but no 'text'" in line
    assert "--set prep.read.text_field=content" in line
    assert "next:" not in result.stdout
    fixed = prep(own_data, tmp_path / "out", "prep.read.text_field=content")
    assert fixed.returncode == 0, fixed.stderr
    assert "next: crucible train" in fixed.stdout


def test_parquet_without_the_text_column_names_its_columns(own_data: Path, tmp_path: Path) -> None:
    rows = [json.loads(line) for line in own_data.read_text().splitlines()]
    folder = tmp_path / "parquet"
    folder.mkdir()
    pq.write_table(pa.Table.from_pylist(rows), folder / "docs.parquet")
    result = prep(folder, tmp_path / "out")
    assert result.returncode == 2, result.stderr
    assert "no_text_column" in result.stderr and "the fields id, content, url but no 'text'" in result.stderr


def test_prep_that_quarantines_more_than_the_set_share_fails_and_the_share_can_be_raised(tmp_path: Path) -> None:
    good = [json.dumps({"id": r["id"], "text": r["text"]}) for r in read_set("english", 20)]
    broken = [line[: len(line) // 2] for line in good] * 2  # 40 of 60 lines cut mid-record: malformed JSON
    corpus = tmp_path / "in" / "mixed.jsonl"
    corpus.parent.mkdir()
    corpus.write_text("\n".join(good + broken) + "\n")
    result = prep(corpus.parent, tmp_path / "out")
    assert result.returncode == 2, result.stderr
    assert (
        "quarantined 67% of the 60 documents it read, more than prep.max_quarantined_share=0.5 (malformed_json 40)"
    ) in result.stderr
    allowed = prep(corpus.parent, tmp_path / "out", "prep.max_quarantined_share=0.7")
    assert allowed.returncode == 0, allowed.stderr


def test_run_takes_input_and_stops_before_training_when_prep_keeps_nothing(own_data: Path, tmp_path: Path) -> None:
    result = prep(own_data, tmp_path / "run", "train.max_steps=2", verb="run")
    assert result.returncode == 2, result.stderr
    assert "--set prep.read.text_field=content" in result.stderr
    assert "training:" not in result.stdout and not (tmp_path / "run" / "train" / "metrics.jsonl").exists()
    assert (tmp_path / "run" / "data" / "quarantine").is_dir()


@pytest.mark.slow
def test_run_without_the_toy_world_setting_trains_no_toy_world_and_times_each_phase(
    own_data: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    result = prep(
        own_data,
        run,
        "prep.read.text_field=content",
        "train.max_steps=2",
        "train.global_batch_size=2",
        "train.micro_batch_size=2",
        "train.eval_interval=2",
        "train.warmup_steps=1",
        "launch.nproc_per_node=1",
        "samples.max_new_tokens=2",
        verb="run",
    )
    assert result.returncode == 0, result.stderr[-2000:]
    times = json.loads((run / "run_times.json").read_text())
    assert set(times) == {"prep", "training"} and not (run / "toy_world").exists()
    assert f"run finished: prep {times['prep']:.0f} s, training {times['training']:.0f} s; report:" in result.stdout
    assert "## Toy world" not in (run / "report.md").read_text()
