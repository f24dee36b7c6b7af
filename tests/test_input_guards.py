"""Inputs that would fool prep: an output folder inside an input folder (a second run reads the first one's
outputs back in), a FIFO among the inputs (opening it blocks), and documents that share an id (lineage
could not tell them apart)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from pipeline.cli import main
from pipeline.config import load_config
from pipeline.prep import run_prep
from tests.conftest import REPO, read_set, write_jsonl
from tests.test_outputs_unchanged import folder_digest


def refusal(args: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    assert main(args) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    folder = tmp_path / "in"
    write_jsonl(folder / "docs.jsonl", [{"id": r["id"], "text": r["text"]} for r in read_set("english", 5)])
    (tmp_path / "link").symlink_to(folder)
    return folder


@pytest.mark.parametrize(
    ("verb", "output", "expected"),
    [
        (
            "prep",
            "in/out",
            "--output in/out is inside the input folder in (prep.inputs): prep would read its own outputs",
        ),
        ("prep", "in", "--output in is the input folder in (prep.inputs)"),
        ("prep", "link/out", "--output link/out (that is {tmp}/in/out) is inside the input folder in (prep.inputs)"),
        ("prep", "in/../in/x", "--output in/../in/x is inside the input folder in"),
        ("run", "in/run", "--output in/run is inside the input folder in (prep.inputs)"),
        ("submit", "in/run", "--output in/run is inside the input folder in (prep.inputs)"),
        ("prep-task", "in/run", "--output in/run is inside the input folder in (prep.inputs)"),
    ],
)
def test_an_output_inside_an_input_folder_is_refused_before_any_work(
    verb: str,
    output: str,
    expected: str,
    corpus: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(corpus.parent)  # relative paths, resolved from here
    args = [verb, "--output", output, "--set", "prep.inputs=[in]"] + {
        "submit": ["--dry-run"],
        "prep-task": ["--prepare"],
    }.get(verb, [])
    message = refusal(args, capsys)
    assert message.startswith(f"crucible {verb}: " + expected.format(tmp=corpus.parent)), message
    assert "give an --output outside every input folder" in message
    assert sorted(p.name for p in corpus.iterdir()) == ["docs.jsonl"], "nothing was made in the input folder"


def test_an_input_inside_the_output_folder_is_refused(corpus: Path, capsys: pytest.CaptureFixture[str]) -> None:
    message = refusal(["prep", "--input", str(corpus / "docs.jsonl"), "--output", str(corpus.parent / "link")], capsys)
    assert message == (
        f"crucible prep: input {corpus / 'docs.jsonl'} (prep.inputs) is inside --output "
        f"{corpus.parent / 'link'} (that is {corpus}): prep would read back what it writes there; "
        f"give an --output that holds no input"
    )


def test_each_named_source_is_checked(corpus: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sources = json.dumps(
        [{"name": "web", "inputs": [str(corpus.parent / "elsewhere")]}, {"name": "code", "inputs": [str(corpus)]}]
    )
    message = refusal(["prep", "--set", f"prep.sources={sources}", "--output", str(corpus / "out")], capsys)
    assert f"is inside the input folder {corpus} (prep.sources[code].inputs)" in message


@pytest.mark.parametrize("special", ["fifo", "/dev/null"])
def test_a_fifo_or_device_given_as_input_is_not_a_regular_file(
    special: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "pipe.jsonl" if special == "fifo" else Path(special)
    if special == "fifo":
        os.mkfifo(path)
    kind = "FIFO" if special == "fifo" else "character device"
    message = refusal(["prep", "--input", str(path), "--output", str(tmp_path / "out")], capsys)
    assert message == f"crucible prep: input {path} is a {kind}, not a regular file: give a file or a folder of files"


@pytest.fixture(scope="module")
def shared_ids(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two sources whose records share ids: within `books` (two files numbered alike) and across sources
    (`web`, of higher priority, reuses one id of `books`); a FIFO sits in the `books` folder."""
    root = tmp_path_factory.mktemp("ids")
    texts = [r["text"] for r in read_set("english", 21)]
    write_jsonl(root / "books" / "a.jsonl", [{"id": str(i), "text": texts[i]} for i in range(10)])
    write_jsonl(root / "books" / "b.jsonl", [{"id": str(i), "text": texts[5 + i]} for i in range(5, 15)])
    write_jsonl(root / "web" / "c.jsonl", [{"id": "3", "text": texts[20]}])
    os.mkfifo(root / "books" / "pipe.jsonl")
    return {"root": root, "books": root / "books", "web": root / "web"}


SHARED_ID_SOURCES = [{"name": "books", "inputs": ["books"]}, {"name": "web", "inputs": ["web"], "priority": 1}]


@pytest.fixture(scope="module")
def two_runs(shared_ids: dict[str, Path]) -> dict[str, object]:
    """The same inputs prepped twice: on the command line with two workers and one find task, and in this
    process with one worker and a find task per two shards. Cut into many shards either way."""
    root = shared_ids["root"]
    sources = json.dumps([s | {"inputs": [str(root / s["inputs"][0])]} for s in SHARED_ID_SOURCES])
    settings = ["prep.stages=[normalize]", f"prep.sources={sources}", "prep.shard_mb=0.02"]
    many = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipeline",
            "prep",
            "--output",
            str(root / "many"),
            "--no-progress",
            *[arg for s in [*settings, "prep.workers=2"] for arg in ("--set", s)],
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )  # a FIFO opened would block: fails
    assert many.returncode == 0, many.stderr[-2000:]
    config = load_config(None, [*settings, "prep.workers=1", "prep.unique_ids.find_shards_per_task=2"])
    return {
        "many": root / "many",
        "many_stdout": many.stdout,
        "one": root / "one",
        "stats": run_prep(config.prep, root / "one", show_progress=False),
    }


def read_dir(folder: Path) -> list[dict]:
    return [row for part in sorted(folder.glob("*.parquet")) for row in pq.read_table(part).to_pylist()]


def test_duplicate_ids_are_quarantined_keeping_the_first_by_priority_then_input_order(two_runs: dict) -> None:
    stats, output = two_runs["stats"], two_runs["one"]
    assert stats.shards > 4, "several shards and find tasks"
    row = next(row for row in stats.stages if row.name == "unique_ids")
    assert (row.docs_in, row.docs_out, row.quarantined) == (21, 15, {"duplicate_id": 6})
    assert row.sources and row.sources["books"].quarantined == {"duplicate_id": 6}
    assert row.sources["web"].docs_out == 1
    clean = read_dir(output / "clean")
    assert sorted(int(r["id"]) for r in clean) == list(range(15)) and len({r["id"] for r in clean}) == 15
    assert next(r for r in clean if r["id"] == "3")["source"] == "web", "the higher-priority source keeps its id"
    quarantined = {r["origin"]: r for r in read_dir(output / "quarantine")}
    assert {r["id"] for r in quarantined.values()} == {"3", "5", "6", "7", "8", "9"}
    assert all(r["reason"] == "duplicate_id" and r["stage"] == "unique_ids" for r in quarantined.values())
    first_of = {r["id"]: json.loads(r["detail"])["duplicate_of"] for r in quarantined.values()}
    assert first_of["3"] == "web/c.jsonl:0" and first_of["5"].startswith("books/a.jsonl:")
    assert all(origin.startswith("books/b.jsonl:") for origin, r in quarantined.items() if r["id"] != "3")
    books_b = {str(i): r["text"] for i, r in enumerate(read_set("english", 21)[10:15], 5)}
    assert all(r["raw"].decode() == books_b[r["id"]] for r in quarantined.values() if r["id"] != "3"), "raw text kept"


def test_duplicate_ids_give_the_same_bytes_for_any_worker_and_task_count(two_runs: dict) -> None:
    for folder in ("clean", "quarantine"):
        assert folder_digest(two_runs["one"] / folder) == folder_digest(two_runs["many"] / folder), folder


def test_a_fifo_in_an_input_folder_is_named_and_never_opened(two_runs: dict, shared_ids: dict[str, Path]) -> None:
    stats = json.loads((two_runs["many"] / "stats.json").read_text())
    assert stats["skipped_inputs"] == [f"{shared_ids['books'] / 'pipe.jsonl'} (FIFO)"]
    printed = " ".join(two_runs["many_stdout"].split())
    assert "skipped 1 entry of input folders that are not regular files" in printed and "pipe.jsonl (FIFO)" in printed
