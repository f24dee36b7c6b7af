"""extract: a web page's HTML to its main text, before any stage that reads text.

The reader leaves a page's HTML in `text` with the internal `_html` flag (see `data_prep.warc`);
this stage replaces it, in place, by the page's main text, blocks (paragraphs, headings, list
items, table rows) separated by a blank line, without navigation, menus, cookie banners, sidebars,
footers or comment threads. It records the page's `<title>` and its `<html lang>` attribute (a
hint, not a detection: langid decides) as the `title` and `html_lang` columns. A page with less
than `min_chars` of main text is dropped as `no_main_text`; a page the engine fails on is
quarantined as `extract_error`, and one nested too deep to extract in good time as `html_too_deep`,
with its HTML.

It is in the default stage list because it costs nothing where there is nothing to do: documents
that are not HTML (JSONL, Parquet, WET text) pass untouched, and a shard without pages is copied
file to file. A plan whose WARC inputs would skip it is refused (`check_pages_extracted`), so
HTML never reaches the text stages. The default engine, resiliparse, was chosen by measurement:
see the README's extraction table (tests/data/extraction) and `bench/warc_bench.py`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal, cast

import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import Field

from data_prep.books import copy_source, run_doc_step, source_file
from data_prep.stage import (
    HTML,
    HTML_LANG,
    TEXT,
    TITLE,
    Decision,
    DocStage,
    Drop,
    StageSpec,
    StepSpec,
    TaskContext,
    replace_column,
)
from pipeline.ground.errors import UserError
from pipeline.ground.schema import Section

if TYPE_CHECKING:
    from trafilatura.settings import Document

EXTRACT = "extract"
MAX_DEPTH = 512  # resiliparse's main-content pass grows with the square of nesting: 20,000 nested divs take a minute
TOO_DEEP = " > ".join(["*"] * MAX_DEPTH)
XML_DECLARATION = re.compile(r"\s*<\?xml[^>]*>")  # lxml refuses a str that declares an encoding
PROSE_LIST_CHARS = 40  # a <ul> whose items hold this much text outside links, on average, is prose, not a menu
BLANK_LINES = re.compile(r"[ \t]*\n(?:[ \t]*\n)+")
TRAILING_SPACE = re.compile(r"[ \t]+\n")


class ExtractConfig(Section):
    """HTML pages (from WARC response records) to main text; other documents pass as they are."""

    engine: Literal["resiliparse", "trafilatura"] = Field(
        "resiliparse",
        description="resiliparse: fast DOM heuristics; trafilatura: slower, its own scoring "
        "(see the README's extraction table).",
    )
    min_chars: int = Field(50, ge=0, description="A page with less main text than this is dropped (no_main_text).")


@dataclass(frozen=True)
class Page:
    text: str
    title: str | None
    lang: str | None


class TooDeep(Exception):
    """Markup nested deeper than MAX_DEPTH elements: broken or hostile, and too slow to extract."""


def _attribute(value: str | None) -> str | None:
    """An attribute or element text, whitespace-collapsed; None when empty."""
    value = " ".join(value.split()) if value else ""
    return value or None


def _blocks(text: str) -> str:
    """One blank line between blocks, no trailing spaces, no blank lines at the ends."""
    return BLANK_LINES.sub("\n\n", TRAILING_SPACE.sub("\n", text)).strip()


def _keep_prose_lists(tree: Any) -> None:
    """resiliparse's main-content rules drop every <ul> as if it were a menu, bulleted paragraphs of an
    article included; it keeps <ol>. So a <ul> of prose (items long in text outside links) becomes an <ol>."""
    for bullets in tree.body.query_selector_all("ul") if tree.body is not None else []:
        items, chars = len(bullets.query_selector_all("li")), len(bullets.text or "")
        if not items or chars < PROSE_LIST_CHARS * items:  # a menu's items are short: no need to look at links
            continue
        if chars - sum(len(link.text or "") for link in bullets.query_selector_all("a")) >= PROSE_LIST_CHARS * items:
            numbered = tree.create_element("ol")
            for child in list(bullets.child_nodes):
                numbered.append_child(child)
            bullets.parent.replace_child(numbered, bullets)


def resiliparse_page(html: str) -> Page:
    from resiliparse.extract.html2text import extract_plain_text
    from resiliparse.parse.html import HTMLTree

    tree = HTMLTree.parse(html)
    if tree.document is not None and tree.document.query_selector(TOO_DEEP) is not None:
        raise TooDeep()
    _keep_prose_lists(tree)
    root = tree.document.query_selector("html") if tree.document is not None else None
    text = extract_plain_text(
        tree,
        preserve_formatting=True,
        main_content=True,
        list_bullets=True,
        alt_texts=False,
        links=False,
        form_fields=False,
        noscript=False,
        comments=False,
    )
    return Page(_blocks(text), _attribute(tree.title), _attribute(root.getattr("lang") if root is not None else None))


def _trafilatura_block(element: Any) -> str:
    """The text of one block of trafilatura's output tree: a list an item a line, a table a row a line."""
    for line_break in element.iter("lb"):
        line_break.text = "\n"
    if element.tag == "list":
        return "\n".join("".join(item.itertext()).strip() for item in element.iter("item"))
    if element.tag == "table":
        return "\n".join(
            " | ".join("".join(cell.itertext()).strip() for cell in row.iter("cell")) for row in element.iter("row")
        )
    return "".join(element.itertext()).strip()


def trafilatura_page(html: str) -> Page:
    import trafilatura

    tree = trafilatura.load_html(XML_DECLARATION.sub("", html, count=1))
    if tree is None:
        return Page("", None, None)
    title, lang = _attribute(tree.findtext(".//title")), _attribute(tree.get("lang"))
    document = cast(
        "Document | None",
        trafilatura.bare_extraction(  # a Document, not a dict: as_dict is off
            tree,
            include_comments=False,
            include_tables=True,
            include_images=False,
            include_links=False,
            deduplicate=False,
            with_metadata=False,
        ),
    )
    blocks = [] if document is None or document.body is None else [_trafilatura_block(e) for e in document.body]
    return Page(_blocks("\n\n".join(blocks)), title, lang)


ENGINES: dict[str, Callable[[str], Page]] = {"resiliparse": resiliparse_page, "trafilatura": trafilatura_page}


def _column(table: pa.Table, name: str) -> list[Any]:
    return table[name].to_pylist() if name in table.column_names else [None] * table.num_rows


class ExtractStage(DocStage):
    name: ClassVar[str] = EXTRACT

    def __init__(self, config: ExtractConfig) -> None:
        self.config = config
        self.engine = ENGINES[config.engine]

    def decide(self, table: pa.Table) -> Decision:
        if HTML not in table.column_names:
            return Decision(table)
        texts, titles, langs = table[TEXT].to_pylist(), _column(table, TITLE), _column(table, HTML_LANG)
        drops: dict[int, Drop] = {}
        for row, is_html in enumerate(table[HTML].to_pylist()):
            if not is_html:
                continue
            try:
                page = self.engine(texts[row])
            except TooDeep:
                drops[row] = Drop("html_too_deep", {"max_depth": MAX_DEPTH}, quarantine=True)
                continue
            except Exception as exc:  # a third-party parser on hostile input: one page, not the run
                drops[row] = Drop(
                    "extract_error", {"engine": self.config.engine, "error": repr(exc)[:300]}, quarantine=True
                )
                continue
            texts[row], titles[row], langs[row] = page.text, page.title, page.lang
            if len(page.text) < self.config.min_chars:
                drops[row] = Drop("no_main_text", {"chars": len(page.text), "min_chars": self.config.min_chars})
        table = replace_column(table, TEXT, pa.array(texts, pa.string()))
        table = replace_column(table, TITLE, pa.array(titles, pa.string()))
        table = replace_column(table, HTML_LANG, pa.array(langs, pa.string()))
        return Decision(table.drop_columns([HTML]), drops)


def run_extract(ctx: TaskContext) -> dict[str, Any]:
    """Extract the pages of this shard; a shard without pages (or a source that skips the stage) is copied."""
    if ctx.settings is None or HTML not in pq.read_schema(source_file(ctx)).names:
        return copy_source(ctx)
    return run_doc_step(ExtractStage, ctx)


def check_pages_extracted(config: Any, shards: Sequence[Any]) -> None:
    """Refuse a plan (`config`: the prep config) in which WARC pages would reach the text stages as HTML."""
    for shard in shards:
        warc = next((piece for piece in shard.pieces if piece.kind == "warc"), None)
        if warc is not None and (EXTRACT not in config.stages or config.source_section(EXTRACT, shard.source) is None):
            raise UserError(
                f"input {warc.path} is a WARC file, whose pages are HTML: the {EXTRACT} stage must run "
                f"on it (add {EXTRACT} to prep.stages, or give its WET files)"
            )


STAGE = StageSpec(EXTRACT, ExtractConfig, (StepSpec("", run_extract, makes_docs=True),), per_document=True)
