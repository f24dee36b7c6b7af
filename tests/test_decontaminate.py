"""The decontaminate stage finds planted evaluation items and keeps documents sharing only short runs.

Evaluation items are passages of Python documentation from data/sample; training documents are
man pages and changelogs of the same corpus, some with an item pasted in verbatim or with its
case and spacing changed, others with a run of the item's words one shorter than the n-gram.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from data_prep.decontaminate import DecontaminateConfig, EvalSet, ngram_keys
from data_prep.words import words
from pipeline.config import load_config
from pipeline.prep import run_prep
from tests.conftest import write_jsonl
from tests.sample_corpus import sample_records

N = 13


def passage(text: str, start: int, length: int) -> str:
    return " ".join(text.split()[start : start + length])


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict:
    folder = tmp_path_factory.mktemp("decont")
    docs = [r["text"] for r in sample_records(("python-docs",), limit=12)]
    qa = [
        {"id": f"qa-{i}", "question": passage(t, 10, 30), "answer": passage(t, 60, 15), "choices": ["yes", "no"]}
        for i, t in enumerate(docs[:6])
    ]
    reading = [{"text": passage(t, 100, 40)} for t in docs[6:]]
    pq.write_table(pa.Table.from_pylist(qa), folder / "qa.parquet")
    write_jsonl(folder / "reading.jsonl", reading + [{"text": "too short to ever match"}])

    training = sample_records(("manpages", "debian-changelog"), limit=40)
    planted = {
        0: ("verbatim", qa[0]["question"], "qa", "qa-0"),
        1: ("answer", qa[1]["answer"], "qa", "qa-1"),
        2: ("case and spacing", "\n   ".join(reading[2]["text"].upper().split(" ")), "reading", "2"),
        3: ("punctuation", reading[4]["text"].replace(" ", ", "), "reading", "4"),
        4: ("short run", " ".join(words(qa[3]["question"])[: N - 1]), None, None),
        5: (
            "short runs",
            f"{' '.join(words(qa[4]['question'])[:8])} and then {' '.join(words(qa[4]['question'])[8:16])}",
            None,
            None,
        ),
    }
    for row, (_, text, _, _) in planted.items():
        training[row]["text"] = f"{training[row]['text']}\n\n{text}\n"
    corpus = write_jsonl(folder / "train.jsonl", [{"id": f"t{i}", "text": r["text"]} for i, r in enumerate(training)])
    return {"folder": folder, "corpus": corpus, "planted": planted, "n_docs": len(training)}


def prep(world: dict, output: Path, *overrides: str) -> dict:
    folder = world["folder"]
    config = load_config(
        None,
        [
            "prep.stages=[normalize, decontaminate]",
            "prep.shard_mb=0.02",
            "prep.workers=2",
            f"prep.decontaminate.eval_sets=[{{path: {folder / 'qa.parquet'}, fields: [question, answer, choices]}}, "
            f"{{path: {folder / 'reading.jsonl'}}}]",
            *overrides,
        ],
    )
    config.prep.inputs = [world["corpus"]]
    return run_prep(config.prep, output, show_progress=False)


def test_planted_items_are_dropped_and_named_in_lineage(world: dict, tmp_path: Path) -> None:
    stats = prep(world, tmp_path / "out")
    row = {r.name: r for r in stats.stages}["decontaminate"]
    contaminated = {i: p for i, p in world["planted"].items() if p[2] is not None}
    assert row.dropped == {"contaminated": len(contaminated)}
    assert row.tally["contamination"] == {"qa": 2, "reading": 2}
    assert row.tally["eval_items"] == {"qa": 6, "reading": 7}
    assert row.tally["short_items"] == {"reading": 1}
    lineage = pq.read_table(tmp_path / "out" / "dropped").to_pylist()
    found = {r["id"]: json.loads(r["detail"]) for r in lineage}
    assert {doc: (d["eval_set"], d["item"]) for doc, d in found.items()} == {
        f"t{i}": (p[2], p[3]) for i, p in contaminated.items()
    }
    assert all(d["shared_ngrams"] >= 1 for d in found.values())
    kept = set(pq.read_table(tmp_path / "out" / "clean")["id"].to_pylist())
    assert {"t4", "t5"} <= kept and len(kept) == world["n_docs"] - len(contaminated)
    stats_file = json.loads((tmp_path / "out" / "stats.json").read_text())
    assert {r["name"]: r for r in stats_file["stages"]}["decontaminate"]["tally"]["contamination"] == {
        "qa": 2,
        "reading": 2,
    }


def test_flag_mode_keeps_every_document_and_names_the_item(world: dict, tmp_path: Path) -> None:
    prep(world, tmp_path / "out", "prep.decontaminate.action=flag")
    clean = pq.read_table(tmp_path / "out" / "clean").to_pylist()
    flags = {r["id"]: r["contamination"] for r in clean if r["contamination"]}
    assert len(clean) == world["n_docs"]
    assert flags == {f"t{i}": f"{p[2]}:{p[3]}" for i, p in world["planted"].items() if p[2] is not None}


def test_a_shorter_ngram_catches_the_short_runs(world: dict, tmp_path: Path) -> None:
    stats = prep(world, tmp_path / "out", "prep.decontaminate.ngram=8")
    assert stats.stage("decontaminate").dropped == {"contaminated": 6}


def test_ngram_keys_ignore_case_spacing_and_punctuation() -> None:
    text = " ".join(sample_records(("python-docs",), limit=1)[0]["text"].split()[:40])
    assert list(ngram_keys(text, N)) == list(ngram_keys(text.upper().replace(" ", " ,\n\t"), N))
    assert len(ngram_keys(text, N)) == len(words(text)) - N + 1
    assert len(ngram_keys("one two three", N)) == 0


def test_an_eval_set_must_be_jsonl_or_parquet(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="expected a file ending in .jsonl"):
        DecontaminateConfig(eval_sets=[EvalSet(path=tmp_path / "items.csv")])


def test_the_report_lists_contamination_per_eval_set(world: dict, tmp_path: Path) -> None:
    from pipeline.report import build_report

    prep(world, tmp_path / "run" / "data")
    build_report(tmp_path / "run")
    assert "Contaminated documents per eval set: qa 2, reading 2" in (tmp_path / "run" / "report.md").read_text()
