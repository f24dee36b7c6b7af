"""extract on the labelled pages of tests/data/extraction: the default engine keeps the main text and
removes the boilerplate; every engine records the title and the language hint; documents that are
not HTML pass untouched; a page without main text is dropped, one nested too deep is quarantined."""

from __future__ import annotations

import pyarrow as pa
import pytest

from data_prep.extract import MAX_DEPTH, ExtractConfig, ExtractStage
from data_prep.stage import HTML, TEXT
from tests.extraction_set import engine_scores, labelled_pages, page_html


def test_the_default_engine_keeps_main_text_and_removes_boilerplate() -> None:
    engine = ExtractConfig().engine
    scores = engine_scores(engine)
    assert scores.main == 110 and scores.boilerplate == 272, "the labelled set changed: rebuild and re-measure"
    assert scores.main_kept >= 0.95, scores
    assert scores.boilerplate_removed >= 0.85, scores
    assert all(main_kept >= 0.8 for _, main_kept, _ in scores.pages), scores  # no page loses a fifth of its text


def test_trafilatura_extracts_the_labelled_pages_too() -> None:
    scores = engine_scores("trafilatura")
    assert scores.main_kept >= 0.9 and scores.boilerplate_removed >= 0.9, scores


def pages_table(htmls: list[str], extra: list[str] = ()) -> pa.Table:
    """Pages as the reader leaves them (flagged HTML), then documents that are not HTML."""
    texts = [*htmls, *extra]
    return pa.table(
        {"id": [f"d{i}" for i in range(len(texts))], TEXT: texts, HTML: [True] * len(htmls) + [False] * len(extra)}
    )


@pytest.mark.parametrize("engine", ["resiliparse", "trafilatura"])
def test_title_and_language_hint_are_recorded_and_text_documents_pass_untouched(engine: str) -> None:
    records = [r for r in labelled_pages() if r["layout"] in ("blog", "german")]
    note = "A note that <b>looks</b> like markup\n\nbut came from a JSON file."
    decision = ExtractStage(ExtractConfig(engine=engine)).decide(pages_table([page_html(r) for r in records], [note]))
    table = decision.table
    assert not decision.drops and HTML not in table.column_names
    assert table["title"].to_pylist() == [r["title"] for r in records] + [None]
    assert table["html_lang"].to_pylist() == ["en", "de", None]
    assert table[TEXT].to_pylist()[-1] == note
    for record, text in zip(records, table[TEXT].to_pylist()):
        assert record["main"][0] in text and "Accept all cookies" not in text


def test_a_table_without_pages_is_returned_as_it_is() -> None:
    table = pa.table({"id": ["a"], TEXT: ["<p>not flagged as HTML, so not a page</p>"]})
    assert ExtractStage(ExtractConfig()).decide(table).table is table


def test_pages_without_main_text_are_dropped_and_pages_nested_too_deep_quarantined() -> None:
    menu_only = "<html><body><nav><ul><li><a href='/'>Home</a></li><li><a href='/a'>About</a></li></ul></nav></body>"
    short = "<html><body><main><p>Only a short line.</p></main></body></html>"
    deep = "<div>" * (MAX_DEPTH + 10) + "words " * 40 + "</div>" * (MAX_DEPTH + 10)
    decision = ExtractStage(ExtractConfig(min_chars=30)).decide(pages_table([menu_only, short, deep]))
    assert {row: (d.reason, d.quarantine) for row, d in decision.drops.items()} == {
        0: ("no_main_text", False),
        1: ("no_main_text", False),
        2: ("html_too_deep", True),
    }
    assert decision.drops[1].detail == {"chars": len("Only a short line."), "min_chars": 30}
    kept = ExtractStage(ExtractConfig(min_chars=10)).decide(pages_table([short]))
    assert not kept.drops and kept.table[TEXT].to_pylist() == ["Only a short line."]
