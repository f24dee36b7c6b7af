"""The labelled pages of tests/data/extraction (built by scripts/build_extraction_set.py), and how an
extraction engine scores on them: the share of main-text paragraphs it keeps and the share of
boilerplate blocks it removes. A block counts as kept when its text, whitespace collapsed, appears
in the extracted text, whitespace collapsed."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from data_prep.extract import ENGINES, Page

EXTRACTION = Path(__file__).resolve().parent / "data" / "extraction"


def labelled_pages() -> list[dict]:
    """One record per page: `page` (file name), `layout`, `lang`, `title`, `main` and `boilerplate` texts."""
    return [json.loads(line) for line in (EXTRACTION / "labels.jsonl").read_text(encoding="utf-8").splitlines()]


def page_html(record: dict) -> str:
    return (EXTRACTION / record["page"]).read_text(encoding="utf-8")


def _flat(text: str) -> str:
    return " ".join(text.split())


@dataclass
class Scores:
    main_kept: float  # share of main-text paragraphs found in the output
    boilerplate_removed: float  # share of boilerplate blocks not found in it
    main: int
    boilerplate: int
    pages: list[tuple[str, float, float]]  # per page: (file name, main kept, boilerplate removed)


def score(pages: list[dict], outputs: list[Page]) -> Scores:
    kept = removed = main = boilerplate = 0
    per_page = []
    for record, page in zip(pages, outputs):
        text = _flat(page.text)
        page_kept = sum(_flat(p) in text for p in record["main"])
        page_removed = sum(_flat(b) not in text for b in record["boilerplate"])
        kept, removed = kept + page_kept, removed + page_removed
        main, boilerplate = main + len(record["main"]), boilerplate + len(record["boilerplate"])
        per_page.append(
            (
                record["page"],
                page_kept / len(record["main"]),
                page_removed / len(record["boilerplate"]) if record["boilerplate"] else 1.0,
            )
        )
    return Scores(kept / main, removed / boilerplate, main, boilerplate, per_page)


def engine_scores(engine: str) -> Scores:
    pages = labelled_pages()
    return score(pages, [ENGINES[engine](page_html(record)) for record in pages])
