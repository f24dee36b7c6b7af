"""line_filter: each C4 and FineWeb rule removes the lines or drops the documents it names, with its
reason, and the removed lines are counted per document and per rule."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from data_prep.line_filter import LineFilterConfig, LineFilterStage
from pipeline.config import load_config
from pipeline.ground.errors import UserError
from pipeline.prep import run_prep
from tests.conftest import write_jsonl
from tests.sample_corpus import sample_records

PAGE = "\n".join(
    [
        "Home | About | Contact",
        "The river rises in the hills and reaches the sea after two hundred kilometres.",
        "Please enable JavaScript to view the comments.",
        "",
        "Its valley was farmed for centuries; the old mills still stand.",
        "By using this site you agree to our Terms of Use and Privacy Policy.",
        "var x = {a: 1};",
        'He called it "the quiet river."',
    ]
)


def decide(texts: list[str], **settings: object) -> tuple[list[str | None], dict[int, tuple[str, dict]], pa.Table]:
    """Texts kept (None where dropped), the drops as (reason, detail), and the decided table."""
    stage = LineFilterStage(LineFilterConfig(**settings))  # type: ignore[arg-type]
    decision = stage.decide(pa.table({"id": [str(i) for i in range(len(texts))], "text": texts}))
    kept = [None if row in decision.drops else text for row, text in enumerate(decision.table["text"].to_pylist())]
    return kept, {row: (d.reason, d.detail) for row, d in decision.drops.items()}, decision.table


def test_terminal_punctuation_keeps_sentences_and_blank_lines() -> None:
    kept, drops, table = decide([PAGE], lorem_ipsum=False, terminal_punctuation=True)
    assert (
        kept[0]
        == "\n".join(
            [
                "The river rises in the hills and reaches the sea after two hundred kilometres.",
                "Please enable JavaScript to view the comments.",
                "",
                "Its valley was farmed for centuries; the old mills still stand.",
                "By using this site you agree to our Terms of Use and Privacy Policy.",
                'He called it "the quiet river."',
            ]
        )
        and not drops
    )
    assert table["lines_removed"].to_pylist() == [2]
    assert json.loads(table["lines_removed_by"][0].as_py()) == {"terminal_punctuation": 2}


def test_policy_lines_go_in_any_case_and_each_line_counts_for_its_first_rule() -> None:
    kept, _, table = decide(
        [PAGE], lorem_ipsum=False, policy_lines=True, curly_braces="line", terminal_punctuation=True
    )
    assert "JavaScript" not in kept[0] and "Terms of Use" not in kept[0] and "{" not in kept[0]  # type: ignore
    assert json.loads(table["lines_removed_by"][0].as_py()) == {
        "curly_braces": 1,
        "policy": 2,
        "terminal_punctuation": 1,
    }
    assert table["lines_removed"].to_pylist() == [4]


def test_document_rules_drop_with_their_reasons() -> None:
    texts = [
        "Lorem ipsum dolor sit amet, consectetur adipiscing elit.",
        "int main(void) {\n    return 0;\n}",
        "A plain sentence with nothing odd in it.",
    ]
    kept, drops, _ = decide(texts, curly_braces="document")
    assert drops == {0: ("lorem_ipsum", {"lines_removed": 0}), 1: ("curly_braces", {"lines_removed": 0})}
    assert kept[2] == texts[2]


def test_lorem_ipsum_is_the_only_rule_on_by_default() -> None:
    kept, drops, table = decide([PAGE, "LOREM IPSUM placeholder."])
    assert kept[0] == PAGE and list(drops) == [1] and table["lines_removed"].to_pylist() == [0, 0]


def test_a_page_of_removed_lines_is_dropped() -> None:
    _, drops, _ = decide(["Home\nAbout us\nContact"], terminal_punctuation=True)
    assert drops == {0: ("no_lines_left", {"lines_removed": 3})}


def test_fineweb_ratios_drop_with_value_and_threshold() -> None:
    menu = "\n".join(["Home", "News", "Sport", "Weather", "A full sentence that ends properly, as prose does."])
    unpunctuated = "\n".join(["a line of words without an end mark at all here"] * 3 + ["One ends."] + ["x" * 40] * 6)
    subscribe, unique = "Subscribe to our newsletter for weekly updates now.", "The only line of content here."
    repeated = "\n".join([subscribe] * 3 + [unique])
    fine = "A first full sentence of reasonable length.\nAnd a second one, also long enough to count."
    _, drops, _ = decide(
        [menu, unpunctuated, repeated, fine],
        min_line_punct_ratio=0.12,
        max_short_line_ratio=0.67,
        max_dup_line_chars=0.1,
    )
    assert drops[0] == ("short_line_ratio", {"value": 0.8, "threshold": 0.67, "lines_removed": 0})
    assert drops[1] == ("line_punct_ratio", {"value": 0.1, "threshold": 0.12, "lines_removed": 0})
    repeated_share = 2 * len(subscribe) / (3 * len(subscribe) + len(unique))
    assert drops[2] == ("dup_line_chars", {"value": round(repeated_share, 4), "threshold": 0.1, "lines_removed": 0})
    assert 3 not in drops


def test_all_rules_off_is_a_config_error() -> None:
    with pytest.raises(UserError, match="line_filter is in the stages but has no rule turned on"):
        load_config(None, ["prep.stages=[normalize, line_filter]", "prep.line_filter.lorem_ipsum=false"])


def test_a_web_source_turns_rules_on_and_the_counts_add_up(tmp_path: Path) -> None:
    docs = sample_records(("python-docs",), limit=20)
    web = write_jsonl(
        tmp_path / "web.jsonl", [{"id": f"web-{i}", "text": f"{PAGE}\n\n{r['text']}"} for i, r in enumerate(docs[:10])]
    )
    prose = write_jsonl(
        tmp_path / "docs.jsonl",
        [{"id": f"docs-{i}", "text": f"{PAGE}\n\n{r['text']}"} for i, r in enumerate(docs[10:])],
    )
    config = load_config(
        None,
        [
            "prep.stages=[normalize, line_filter]",
            "prep.workers=1",
            f"prep.sources=[{{name: docs, inputs: [{prose}]}}, {{name: web, inputs: [{web}], "
            "settings: {line_filter: {policy_lines: true, terminal_punctuation: true, "
            "max_short_line_ratio: 0.67}}}]",
        ],
    )
    stats = run_prep(config.prep, tmp_path / "out", show_progress=False)
    row = {r.name: r for r in stats.stages}["line_filter"]
    assert row.docs_in == 20 == row.docs_out + sum(row.dropped.values())
    clean = pq.read_table(tmp_path / "out" / "clean").to_pylist()
    for record in clean:
        assert ("Terms of Use" in record["text"]) == record["id"].startswith("docs-")
        assert (record["lines_removed"] > 0) == record["id"].startswith("web-")
    tally = row.tally["line_filter"]
    assert (
        tally["lines_removed"]
        == sum(r["lines_removed"] for r in clean)
        == tally["lines_removed/policy"] + tally["lines_removed/terminal_punctuation"]
    )
    assert row.sources and row.sources["docs"].docs_out == 10
