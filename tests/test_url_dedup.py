"""url_dedup: every spelling of a page is one key, and of a page's copies the newest, then the longest,
then the first stays, whichever shards and find tasks hold them."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from data_prep.url_dedup import TRACKING_PARAMS, UNDATED, TrackingParams, date_key, normalize_url
from pipeline.config import load_config
from pipeline.prep import run_prep
from tests.conftest import write_jsonl
from tests.sample_corpus import sample_records

TRACKING = TrackingParams(TRACKING_PARAMS)


@pytest.mark.parametrize(
    "spelling, plain",
    [
        ("HTTP://example.com/page", "http://example.com/page"),  # scheme case
        ("http://example.com/page", "https://example.com/page"),  # http and https are one page
        ("https://WWW.Example.COM/page", "https://www.example.com/page"),  # host case
        ("https://bücher.example/page", "https://xn--bcher-kva.example/page"),  # IDN, either spelling
        ("https://Bücher.example./page", "https://XN--BCHER-KVA.example/page"),  # and a trailing dot
        ("http://example.com:80/page", "https://example.com:443/page"),  # default ports
        ("https://example.com/page/", "https://example.com/page"),  # trailing slash
        ("https://example.com", "https://example.com/"),  # an empty path is the root
        ("https://example.com/page?utm_source=news&utm_MEDIUM=mail", "https://example.com/page"),  # utm_*
        ("https://example.com/page?fbclid=abc", "https://example.com/page"),
        ("https://example.com/page?GCLID=abc&id=3", "https://example.com/page?id=3"),
        ("https://example.com/page?b=2&a=1", "https://example.com/page?a=1&b=2"),  # sorted parameters
        ("https://example.com/page?q=a+b", "https://example.com/page?q=a%20b"),  # one spelling of a space
        ("https://example.com/page#section-2", "https://example.com/page"),  # fragment
        ("https://example.com/%7euser/a%2fb", "https://example.com/~user/a%2Fb"),  # percent escapes
        ("  example.com/page ", "https://example.com/page"),  # a bare host, spaces around
        ("https://user:secret@example.com/page", "https://example.com/page"),  # credentials
    ],
)
def test_spellings_of_one_page_share_a_key(spelling: str, plain: str) -> None:
    assert normalize_url(spelling, TRACKING) == normalize_url(plain, TRACKING) is not None


@pytest.mark.parametrize(
    "one, other",
    [
        ("https://example.com/Page", "https://example.com/page"),  # paths keep their case
        ("https://example.com:8080/page", "https://example.com/page"),  # a port of its own
        ("https://example.com/page?id=3", "https://example.com/page?id=4"),
        ("https://example.com/page?id=3", "https://example.com/page"),  # a parameter that is no tracker
        ("https://www.example.com/", "https://example.com/"),
        ("ftp://example.com/page", "https://example.com/page"),  # only http and https are one scheme
        ("https://example.com/a%2Fb", "https://example.com/a/b"),  # an escaped slash is no slash
    ],
)
def test_other_pages_keep_other_keys(one: str, other: str) -> None:
    assert normalize_url(one, TRACKING) != normalize_url(other, TRACKING)


@pytest.mark.parametrize(
    "url",
    [
        "mailto:someone@example.com",
        "javascript:void(0)",
        "https:///path",
        "http://[::1",
        "https://example.com:99999/",
        "",
    ],
)
def test_what_names_no_host_has_no_key(url: str) -> None:
    assert normalize_url(url, TRACKING) is None


def test_tracking_parameters_are_configurable() -> None:
    assert normalize_url("https://example.com/?ref=x&src=y", TrackingParams(["ref", "s*"])) == "example.com/"


def test_dates_in_iso_and_http_form_compare_as_instants() -> None:
    assert (
        date_key("2024-05-01T14:00:00+02:00")
        == date_key("2024-05-01T12:00:00Z")
        == date_key("Wed, 01 May 2024 12:00:00 GMT")
        == date_key("2024-05-01 12:00:00")
    )
    assert date_key("2024-05-01") < date_key("2024-05-01T00:00:01Z")
    assert date_key("yesterday") == date_key(None) == date_key("") == UNDATED < date_key("1900-01-01")


# (url, date, extra characters of text) per document; the groups' survivors are marked
PAGES = [
    ("http://Example.com/news/?utm_source=feed", "2023-01-05", 0),
    ("https://example.com/news#top", "2024-03-01T08:00:00Z", 0),  # newest: kept
    ("example.com/news/", None, 500),  # longest, but undated
    ("https://example.com/guide", "2024-01-01", 10),
    ("https://EXAMPLE.com/guide?fbclid=1", "2024-01-01", 300),  # same date, longest: kept
    ("https://example.com/faq", "2024-01-01", 0),  # same date and length: first kept
    ("https://example.com/faq/", "2024-01-01", 0),
    ("https://example.com/other", "2024-01-01", 0),  # alone
    (None, None, 0),  # no URL: passes
    (None, None, 0),
    ("mailto:webmaster@example.com", None, 0),  # no host: passes
]
KEPT = {1, 4, 5, 7, 8, 9, 10}


def web_corpus(path: Path) -> tuple[Path, list[str]]:
    """The pages above, spread through ~80 real documents so that copies of a page sit in different
    shards; each page's text is a document of its own (plus `extra` characters)."""
    fillers = sample_records(("package-descriptions",), limit=80)
    texts = sample_records(("python-docs",), limit=len(PAGES))
    records, ids = [], []
    for i, record in enumerate(fillers):
        records.append(
            {"id": f"filler-{i}", "text": record["text"], "url": f"https://filler.example/{i}", "date": "2024-01-01"}
        )
        if i % 7 == 0 and i // 7 < len(PAGES):
            url, date, extra = PAGES[i // 7]
            page = {"id": f"page-{i // 7}", "text": texts[i // 7]["text"][:400] + "x" * extra}
            records.append(page | {k: v for k, v in (("url", url), ("date", date)) if v is not None})
            ids.append(page["id"])
    return write_jsonl(path, records), ids


def dedup(corpus: Path, output: Path, *settings: str) -> dict:
    config = load_config(
        None, ["prep.stages=[normalize, url_dedup]", "prep.read.keep_fields=[url, date]", "prep.workers=1", *settings]
    )
    config.prep.inputs = [corpus]
    return run_prep(config.prep, output, show_progress=False)


def dropped(output: Path) -> dict[str, dict]:
    table = pa.concat_tables(pq.read_table(f) for f in sorted((output / "dropped").glob("*.parquet")))
    return {r["id"]: {"reason": r["reason"], **json.loads(r["detail"])} for r in table.to_pylist()}


def test_the_newest_then_longest_then_first_copy_stays_across_shards_and_tasks(tmp_path: Path) -> None:
    corpus, ids = web_corpus(tmp_path / "web.jsonl")
    many = dedup(corpus, tmp_path / "many", "prep.shard_mb=0.005", "prep.url_dedup.find_shards_per_task=1")
    dedup(corpus, tmp_path / "one")
    tasks = len(list((tmp_path / "many" / "work" / "url_dedup.find").glob("done-*.json")))
    assert len(list((tmp_path / "many" / "work" / "url_dedup.key").glob("done-*.json"))) >= 4 and tasks >= 4
    removed = dropped(tmp_path / "many")
    expected = {ids[i]: ids[keeper] for i, keeper in [(0, 1), (2, 1), (3, 4), (6, 5)]}
    assert {i: (d["reason"], d["duplicate_of"]) for i, d in removed.items()} == {
        i: ("duplicate_url", keeper) for i, keeper in expected.items()
    }
    assert removed[ids[0]]["url"] == PAGES[0][0]  # the kept fields travel into lineage
    assert removed == dropped(tmp_path / "one")
    assert (
        pq.read_table(tmp_path / "many" / "clean")
        .sort_by("id")
        .equals(pq.read_table(tmp_path / "one" / "clean").sort_by("id"))
    )
    row = {r.name: r for r in many.stages}["url_dedup"]
    assert row.docs_in == row.docs_out + 4 and row.dropped == {"duplicate_url": 4}
    assert row.tally["url_dedup"] == {"duplicates": 4, "without_url": 2, "unparsed_url": 1, "undated": 1}
    assert {ids[i] for i in KEPT} <= set(pq.read_table(tmp_path / "many" / "clean")["id"].to_pylist())


def test_across_sources_the_higher_priority_copy_stays(tmp_path: Path) -> None:
    texts = [r["text"] for r in sample_records(("python-docs",), limit=2)]
    crawl = write_jsonl(
        tmp_path / "crawl.jsonl",
        [{"id": "crawl", "text": texts[0] + "!" * 50, "url": "https://example.com/a", "date": "2025-01-01"}],
    )
    curated = write_jsonl(
        tmp_path / "curated.jsonl",
        [{"id": "curated", "text": texts[1], "url": "http://example.com/a/", "date": "2020-01-01"}],
    )
    config = load_config(
        None,
        [
            "prep.stages=[normalize, url_dedup]",
            "prep.read.keep_fields=[url, date]",
            f"prep.sources=[{{name: crawl, inputs: [{crawl}]}}, {{name: curated, inputs: [{curated}], priority: 1}}]",
        ],
    )
    run_prep(config.prep, tmp_path / "out", show_progress=False)
    assert {i: d["duplicate_of"] for i, d in dropped(tmp_path / "out").items()} == {"crawl": "curated"}


def test_documents_without_the_url_column_pass(tmp_path: Path) -> None:
    records = [{"id": f"d{i}", "text": r["text"]} for i, r in enumerate(sample_records(("manpages",), limit=5))]
    stats = dedup(write_jsonl(tmp_path / "plain.jsonl", records), tmp_path / "out", "prep.read.keep_fields=[]")
    row = {r.name: r for r in stats.stages}["url_dedup"]
    assert row.docs_out == 5 and row.tally["url_dedup"]["without_url"] == 5


def test_the_stage_is_opt_in() -> None:
    assert "url_dedup" not in load_config(None, []).prep.stages
