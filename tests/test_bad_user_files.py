"""Files a user names in settings or flags (eval sets, block lists, a tokenizer, fastText models, labelled
examples) with bad contents end in one line naming the file and the fault, status 2, never a traceback.

Unlike prep's inputs (quarantined record by record), these files decide what is protected, filtered
or measured, so a fault stops the command instead of being skipped.
"""

from __future__ import annotations

import gzip
import json
import subprocess
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.conftest import REPO, read_set, write_jsonl
from tests.conftest import crucible_in_process as crucible

NOT_UTF8 = b'{"text": "caf\xe9 au lait", "label": true}\n'


def assert_one_line(result: subprocess.CompletedProcess[str], *expected: str) -> None:
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr[-3000:]
    for part in expected:
        assert part in lines[0], lines[0]


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("bad_files")
    found = {"corpus": write_jsonl(folder / "corpus.jsonl", [{"text": r["text"]} for r in read_set("english", 8)])}
    contents = {
        "not_json.jsonl": b'{"text": "a first item"}\n{"text": "cut off\n',
        "array.json": b'[\n  {"text": "an item"},\n  {"text": "another"}\n]\n',
        "garbage.parquet": b"PAR1garbage",
        "latin1.jsonl": NOT_UTF8,
        "latin1_words.txt": b"caf\xe9\nword\n",
        "labelled.jsonl": b'{"text": "a good page", "label": true}\n{"text": "spam spam", "label": false}\n',
        "bad_tokenizer.json": b'{"version": "1.0", "model": 42}\n',
    }
    for name, data in contents.items():
        found[name] = folder / name
        found[name].write_bytes(data)
    found["not_a_model.bin"] = REPO / "README.md"
    return found


def prep(files: dict[str, Path], tmp_path: Path, stages: str, *settings: str) -> subprocess.CompletedProcess[str]:
    args = [
        "prep",
        "--input",
        str(files["corpus"]),
        "--output",
        str(tmp_path / "out"),
        "--no-progress",
        "--set",
        f"prep.stages=[normalize, {stages}]",
    ]
    return crucible(*args, *[arg for setting in settings for arg in ("--set", setting)])


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("not_json.jsonl", "not_json.jsonl:2: not JSON"),
        ("array.json", "array.json holds a JSON array; expected JSON Lines"),
        ("garbage.parquet", "garbage.parquet: not a readable Parquet file"),
        ("latin1.jsonl", "latin1.jsonl:1: not UTF-8 text"),
    ],
)
def test_a_broken_eval_set_is_one_line(files: dict[str, Path], tmp_path: Path, name: str, expected: str) -> None:
    result = prep(files, tmp_path, "decontaminate", f"prep.decontaminate.eval_sets=[{{path: {files[name]}}}]")
    assert_one_line(result, "decontaminate.index", expected)


def test_an_eval_set_without_the_fields_to_match_names_the_fields_it_has(
    files: dict[str, Path], tmp_path: Path
) -> None:
    """The shipped task file holds `context`/`choices`, not the default `text`: it would have protected nothing."""
    tasks = REPO / "data" / "tasks" / "debian_next_words.jsonl"
    result = prep(files, tmp_path, "decontaminate", f"prep.decontaminate.eval_sets=[{{path: {tasks}}}]")
    assert_one_line(result, "eval set debian_next_words", "no item has a field ['text']", "'choices'", "'context'")
    matched = prep(
        files,
        tmp_path / "fields",
        "decontaminate",
        f"prep.decontaminate.eval_sets=[{{path: {tasks}, fields: [context]}}]",
    )
    assert matched.returncode == 0, matched.stderr[-3000:]


@pytest.mark.parametrize("setting", ["word_lists={en: [PATH]}", "url_lists=[PATH]"])
def test_a_block_list_that_is_not_utf8_is_one_line(files: dict[str, Path], tmp_path: Path, setting: str) -> None:
    path = files["latin1_words.txt"]
    result = prep(files, tmp_path, "blocklist", "prep.blocklist." + setting.replace("PATH", str(path)))
    assert_one_line(result, f"{path}:1: not UTF-8 text")


def test_a_malformed_given_tokenizer_is_one_line(files: dict[str, Path], tmp_path: Path) -> None:
    path = files["bad_tokenizer.json"]
    result = prep(files, tmp_path, "tokenize", f"prep.tokenizer.path={path}")
    assert_one_line(result, f"tokenizer {path} is not a tokenizer.json")


@pytest.mark.parametrize(
    ("stages", "setting", "expected"),
    [
        ("langid", "prep.langid.model_path=PATH", "language-ID model PATH is not a fastText model"),
        (
            "quality_model",
            "prep.quality_model.classifiers=[{name: edu, model_path: PATH, threshold: 0.5}]",
            "classifier model PATH is not a fastText model",
        ),
    ],
)
def test_a_file_that_is_not_a_fasttext_model_is_one_line(
    files: dict[str, Path], tmp_path: Path, stages: str, setting: str, expected: str
) -> None:
    path = str(files["not_a_model.bin"])
    result = prep(files, tmp_path, stages, setting.replace("PATH", path))
    assert_one_line(result, expected.replace("PATH", path))


def test_classifier_verbs_refuse_bad_files_in_one_line(files: dict[str, Path], tmp_path: Path) -> None:
    latin1, labelled = files["latin1.jsonl"], files["labelled.jsonl"]
    assert_one_line(
        crucible(
            "classifier",
            "train",
            "--positive",
            str(latin1),
            "--negative",
            str(labelled),
            "--output",
            str(tmp_path / "model"),
        ),
        f"{latin1}:1: not UTF-8 text",
    )
    assert_one_line(
        crucible(
            "classifier",
            "train",
            "--positive",
            str(labelled),
            "--negative",
            str(latin1),
            "--output",
            str(tmp_path / "model"),
        ),
        f"{latin1}:1: not UTF-8 text",
    )
    model = str(files["not_a_model.bin"])
    assert_one_line(crucible("classifier", "eval", "--model", model, "--data", str(latin1)), f"{latin1}:1: not UTF-8")
    assert_one_line(
        crucible("classifier", "eval", "--model", model, "--data", str(labelled)),
        f"classifier model {model} is not a fastText model",
    )


def test_task_files_and_eval_sets_share_one_reader(tmp_path: Path) -> None:
    """JSON Lines (also .gz) and Parquet give the same records; blank lines and a BOM cost nothing."""
    from pipeline.ground.errors import UserError
    from pipeline.ground.records import read_records

    records = [{"context": "a b", "target": "c"}, {"context": "d", "target": "e f"}]
    (tmp_path / "t.jsonl").write_bytes(b"\xef\xbb\xbf" + "\n\n".join(json.dumps(r) for r in records).encode() + b"\n")
    (tmp_path / "t.jsonl.gz").write_bytes(gzip.compress((tmp_path / "t.jsonl").read_bytes()))
    pq.write_table(pa.Table.from_pylist(records), tmp_path / "t.parquet")
    for name in ("t.jsonl", "t.jsonl.gz", "t.parquet"):
        assert read_records(tmp_path / name) == records, name
    (tmp_path / "n.jsonl").write_text('{"context": "x"}\n42\n')
    with pytest.raises(UserError, match=r"n.jsonl:2: a number, not an object"):
        read_records(tmp_path / "n.jsonl")
