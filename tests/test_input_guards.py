"""Inputs that would fool prep: an output folder inside an input folder (a second run reads the first one's
outputs back in)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.cli import main
from tests.conftest import read_set, write_jsonl


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


@pytest.mark.parametrize(("verb", "output", "expected"), [
    ("prep", "in/out", "--output in/out is inside the input folder in (prep.inputs): prep would read its own outputs"),
    ("prep", "in", "--output in is the input folder in (prep.inputs)"),
    ("prep", "link/out", "--output link/out (that is {tmp}/in/out) is inside the input folder in (prep.inputs)"),
    ("prep", "in/../in/x", "--output in/../in/x is inside the input folder in"),
    ("run", "in/run", "--output in/run is inside the input folder in (prep.inputs)"),
    ("submit", "in/run", "--output in/run is inside the input folder in (prep.inputs)"),
    ("prep-task", "in/run", "--output in/run is inside the input folder in (prep.inputs)"),
])
def test_an_output_inside_an_input_folder_is_refused_before_any_work(
        verb: str, output: str, expected: str, corpus: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(corpus.parent)  # relative paths, resolved from here
    args = [verb, "--output", output, "--set", "prep.inputs=[in]"] + {"submit": ["--dry-run"],
                                                                       "prep-task": ["--prepare"]}.get(verb, [])
    message = refusal(args, capsys)
    assert message.startswith(f"crucible {verb}: " + expected.format(tmp=corpus.parent)), message
    assert "give an --output outside every input folder" in message
    assert sorted(p.name for p in corpus.iterdir()) == ["docs.jsonl"], "nothing was made in the input folder"


def test_an_input_inside_the_output_folder_is_refused(corpus: Path, capsys: pytest.CaptureFixture[str]) -> None:
    message = refusal(["prep", "--input", str(corpus / "docs.jsonl"), "--output", str(corpus.parent / "link")],
                      capsys)
    assert message == (f"crucible prep: input {corpus / 'docs.jsonl'} (prep.inputs) is inside --output "
                       f"{corpus.parent / 'link'} (that is {corpus}): prep would read back what it writes there; "
                       f"give an --output that holds no input")


def test_each_named_source_is_checked(corpus: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sources = json.dumps([{"name": "web", "inputs": [str(corpus.parent / "elsewhere")]},
                          {"name": "code", "inputs": [str(corpus)]}])
    message = refusal(["prep", "--set", f"prep.sources={sources}", "--output", str(corpus / "out")], capsys)
    assert f"is inside the input folder {corpus} (prep.sources[code].inputs)" in message
