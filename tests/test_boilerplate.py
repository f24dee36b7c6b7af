"""boilerplate: a unit in min_docs documents goes from all of them, one in min_docs - 1 stays, counted
exactly however the documents are spread over shards and count tasks."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from data_prep.boilerplate import BoilerplateConfig, BoilerplateRemoval, UnitSplitter
from pipeline.config import load_config
from pipeline.ground.errors import UserError
from pipeline.prep import run_prep
from tests.conftest import write_jsonl
from tests.sample_corpus import sample_records

MIN_DOCS = 4
FOOTER = "This page was generated from the project's documentation sources; report mistakes on the tracker."
NOTICE = "Copyright 2024 The Authors. Licensed under the Apache License, Version 2.0."
# A footer in exactly MIN_DOCS documents, a notice in MIN_DOCS - 1 (one of them twice, which counts once).
FOOTER_DOCS, NOTICE_DOCS = (0, 19, 38, 57), (5, 30, 56)


def corpus(path: Path) -> tuple[Path, list[dict]]:
    records = [{"id": f"doc-{i}", "text": r["text"]} for i, r in enumerate(sample_records(("manpages",), limit=60))]
    for i in FOOTER_DOCS:
        records[i]["text"] += "\n\n" + FOOTER.upper().replace(" ", "  ")  # another case and spacing: the same unit
    for i in NOTICE_DOCS:
        records[i]["text"] += "\n\n" + NOTICE + ("\n\n" + NOTICE if i == 5 else "")
    records[57]["text"] = "A short page.\n\n" + FOOTER  # little left once the footer goes
    return write_jsonl(path, records), records


def prep(inputs: Path, output: Path, *settings: str) -> dict:
    config = load_config(
        None,
        ["prep.stages=[normalize, boilerplate]", "prep.workers=1", f"prep.boilerplate.min_docs={MIN_DOCS}", *settings],
    )
    config.prep.inputs = [inputs]
    return run_prep(config.prep, output, show_progress=False)


def whole_corpus_removal(records: list[dict], config: BoilerplateConfig) -> dict[str, tuple[str, int]]:
    """id -> (text, units removed) by counting every document's units in one process."""
    splitter = UnitSplitter(config)
    counts = Counter(key for r in records for key in {k for k in splitter.keys(r["text"]) if k is not None})
    common = {key for key, n in counts.items() if n >= config.min_docs}
    stage = BoilerplateRemoval(config, {})
    return {r["id"]: stage.rewrite(r["text"], common) for r in records}


def test_a_unit_in_min_docs_documents_goes_across_shards_and_tasks(tmp_path: Path) -> None:
    inputs, records = corpus(tmp_path / "docs.jsonl")
    stats = prep(inputs, tmp_path / "many", "prep.shard_mb=0.05", "prep.boilerplate.count_shards_per_task=1")
    work = tmp_path / "many" / "work"
    shards = len(list((work / "boilerplate.hash").glob("done-*.json")))
    assert shards >= 4 and len(list((work / "boilerplate.count").glob("done-*.json"))) == shards

    clean = {r["id"]: r for r in pq.read_table(tmp_path / "many" / "clean").to_pylist()}
    for i in FOOTER_DOCS[:-1]:
        assert FOOTER.lower() not in clean[f"doc-{i}"]["text"].lower()
    for i in NOTICE_DOCS:
        assert clean[f"doc-{i}"]["text"].count(NOTICE) == (2 if i == 5 else 1)
    expected = whole_corpus_removal(records, BoilerplateConfig(min_docs=MIN_DOCS))
    assert {i: (r["text"], r["boilerplate_units"]) for i, r in clean.items()} == {
        i: value for i, value in expected.items() if i != "doc-57"
    }
    assert all(r["boilerplate_chars"] == len(records[int(i[4:])]["text"]) - len(r["text"]) for i, r in clean.items())
    assert sum(1 for _, units in expected.values() if units) > len(FOOTER_DOCS), "real man pages share units too"

    lineage = pq.read_table(tmp_path / "many" / "dropped").to_pylist()
    assert [(r["id"], r["reason"]) for r in lineage] == [("doc-57", "boilerplate_only")]
    assert json.loads(lineage[0]["detail"]) == {
        "units_removed": 1,
        "chars_removed": len(FOOTER) + 2,
        "chars_left": len("A short page."),
        "min_chars": 100,
    }
    row = {r.name: r for r in stats.stages}["boilerplate"]
    assert row.docs_in == 60 == row.docs_out + 1 and row.dropped == {"boilerplate_only": 1}
    changed = [units for i, (_, units) in expected.items() if units and i != "doc-57"]
    assert row.tally["boilerplate"]["documents_changed"] == len(changed)
    assert row.tally["boilerplate"]["units_removed"] == sum(changed)

    one = prep(inputs, tmp_path / "one")  # one shard, one count task: the same result
    assert one.stage("boilerplate").dropped == row.dropped
    assert (
        pq.read_table(tmp_path / "one" / "clean")
        .sort_by("id")
        .equals(pq.read_table(tmp_path / "many" / "clean").sort_by("id"))
    )


def rewriter(common: list[str], **settings: object) -> Callable[[str], tuple[str, int]]:
    """The rewrite of a document that loses the units `common`."""
    config = BoilerplateConfig(**settings)  # type: ignore[arg-type]
    gone = {UnitSplitter(config).key(unit) for unit in common}
    return lambda text: BoilerplateRemoval(config, {}).rewrite(text, gone)  # type: ignore[arg-type]


def test_removal_keeps_the_other_units_and_their_separators() -> None:
    rewrite = rewriter(["Skip to the main content of this page", "Accept all cookies on this website"])
    text = (
        "Skip to the main content of this page\n\nFirst paragraph.\n \n\nAccept  all cookies on this website\n\nLast."
    )
    assert rewrite(text) == ("First paragraph.\n\nLast.", 2)
    assert rewrite("Body.\n\n\nAccept all cookies on this website") == ("Body.", 1)
    assert rewrite("Nothing common here, nothing at all.") == ("Nothing common here, nothing at all.", 0)


def test_lines_as_units_and_digits_ignored() -> None:
    rewrite = rewriter(["Last updated on 2024-05-01 by the site editors"], unit="line", ignore_digits=True)
    text = "Intro line\nLast updated on 2023-11-30 by the site editors\nBody line"
    assert rewrite(text) == ("Intro line\nBody line", 1)
    strict = rewriter(["Last updated on 2024-05-01 by the site editors"], unit="line")
    assert strict("Last updated on 2023-11-30 by the site editors")[1] == 0


def test_short_units_are_never_counted() -> None:
    heading, paragraph = UnitSplitter(BoilerplateConfig(min_unit_chars=20)).keys("OPTIONS\n\nA paragraph long enough.")
    assert heading is None and paragraph is not None


@pytest.mark.parametrize("setting", ["prep.boilerplate.min_docs=1", "prep.boilerplate.unit=sentence"])
def test_bad_settings_are_config_errors(setting: str) -> None:
    with pytest.raises(UserError, match="prep.boilerplate"):
        load_config(None, [setting])
