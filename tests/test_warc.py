"""WARC and WET inputs, on files written in the tests: every record is a document, a counted drop or a
quarantine record; damage is quarantined by offset and the records after it are read; pages are
decoded by the charset they declare where it fits; their URL, date, record id, charset, title and
language hint reach clean/ and lineage."""

from __future__ import annotations

import gzip
import json
import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from data_prep.readers import ReadConfig, plan_shards, read_shard
from pipeline.config import load_config
from pipeline.ground.errors import UserError
from pipeline.prep_graph import build_prep_graph
from pipeline.prep import run_prep
from tests.conftest import write_jsonl
from tests.extraction_set import labelled_pages, page_html
from tests.warc_files import (
    conversion,
    metadata,
    record_id,
    request,
    response,
    revisit,
    warcinfo,
    warc_record,
    write_warc,
)

UNIQUE_IDS_STEPS = ["unique_ids.hash", "unique_ids.find", "unique_ids"]  # every prep runs them after read
PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256))
DAMAGED_MEMBER = (lambda member: member[:200] + bytes(60) + member[260:])(
    gzip.compress(b"WARC/1.0\r\n" + random.Random(0).randbytes(5000), mtime=0)
)  # its CRC fails


def read(path: Path, config: ReadConfig | None = None) -> tuple[pa.Table, list[dict], list[dict]]:
    """Documents, quarantine records and drop records of one input file."""
    tables, quarantined, dropped = [], [], []
    for shard in plan_shards([path], 2**30):
        for batch in read_shard(shard, config or ReadConfig(), 4):
            tables.append(batch.table)
            quarantined += batch.quarantined
            dropped += batch.dropped
    return pa.concat_tables(tables), quarantined, dropped


def page(n: int) -> tuple[str, bytes]:
    """URL and HTML of a short page."""
    return f"https://site.example/page-{n}", f"<html><body><p>Page number {n}.</p></body></html>".encode()


def crawl(pages: range) -> list[bytes]:
    """Records as a crawler writes them: per page a request, the response and a metadata record."""
    records = [warcinfo()]
    for n in pages:
        url, body = page(n)
        records += [request(url), response(url, body), metadata(url)]
    return records


def prep(inputs: list[Path], output: Path, *overrides: str) -> dict:
    config = load_config(None, ["prep.workers=1", *overrides])
    config.prep.inputs = inputs
    return run_prep(config.prep, output, show_progress=False)


def rows(folder: Path) -> list[dict]:
    return [row for part in sorted(folder.glob("*.parquet")) for row in pq.read_table(part).to_pylist()]


def test_every_record_becomes_a_document_a_counted_drop_or_a_quarantine_record(tmp_path: Path) -> None:
    logo = response("https://site.example/logo.png", PNG, content_type="image/png")
    broken = response("https://site.example/broken", b"<html>" + b"x" * 500)  # its member is damaged below
    records = (
        crawl(range(3))
        + [
            logo,
            response("https://site.example/feed.json", b'{"items": []}', content_type="application/json"),
            response("https://site.example/gone", b"<html><body>Not here</body></html>", status="404 Not Found"),
            response("https://site.example/moved", b"", status="301 Moved Permanently", Location="/page-0"),
            revisit("https://site.example/page-0"),
            broken,
            response(
                "https://site.example/untyped",
                b"<!DOCTYPE html><html><body>No content type</body></html>",
                content_type="",
            ),
        ]
        + crawl(range(3, 5))
    )
    path = tmp_path / "crawl.warc.gz"
    offsets = write_warc(path, records)
    data = bytearray(path.read_bytes())
    damaged = offsets[records.index(broken)]
    data[damaged + 30 : damaged + 60] = bytes(30)  # zeroes in the middle of the deflate stream
    path.write_bytes(bytes(data))

    stats = prep([path], tmp_path / "out", "prep.stages=[extract, normalize]", "prep.extract.min_chars=5")
    read_stats = stats.stages[0]
    assert read_stats.docs_in == len(records)
    assert read_stats.dropped == {
        "warc_http_status": 2,
        "warc_metadata": 5,
        "warc_not_html": 2,
        "warc_request": 5,
        "warc_revisit": 1,
        "warc_warcinfo": 2,
    }
    assert read_stats.quarantined == {"corrupt_frame": 1}
    assert read_stats.docs_out == 6  # five pages and the untyped page sniffed as HTML
    for stage in stats.stages:
        removed = sum(stage.dropped.values()) + sum(stage.quarantined.values())
        assert stage.docs_in == stage.docs_out + removed
    dropped = rows(tmp_path / "out" / "dropped")
    assert len(dropped) == sum(sum(stage.dropped.values()) for stage in stats.stages)
    image = next(r for r in dropped if r["reason"] == "warc_not_html" and "logo" in r["detail"])
    assert json.loads(image["detail"]) == {
        "content_type": "image/png",
        "url": "https://site.example/logo.png",
        "date": "2024-05-17T08:30:00Z",
        "warc_record_id": record_id("response", "https://site.example/logo.png"),
    }
    assert image["origin"] == f"crawl.warc.gz:{offsets[records.index(logo)]}"
    (quarantined,) = rows(tmp_path / "out" / "quarantine")
    assert quarantined["origin"] == f"crawl.warc.gz:{damaged}" and quarantined["reason"] == "corrupt_frame"
    assert json.loads(quarantined["detail"])["resumed_at"] == damaged + len(gzip.compress(broken, mtime=0))
    urls = sorted(r["url"] for r in rows(tmp_path / "out" / "clean"))
    assert urls == sorted([page(n)[0] for n in range(5)] + ["https://site.example/untyped"])


@pytest.mark.parametrize("damage", ["cut_then_next", "flipped", "cut_at_end"])
def test_a_damaged_gzip_member_is_one_quarantine_record_and_the_records_after_it_are_read(
    tmp_path: Path, damage: str
) -> None:
    records = [response(*page(n)) for n in range(6)]
    path = tmp_path / "pages.warc.gz"
    offsets = write_warc(path, records)
    data = path.read_bytes()
    if damage == "cut_then_next":  # member 2 cut short, member 3 written straight after it
        data = data[: offsets[2] + 60] + data[offsets[3] :]
    elif damage == "flipped":
        start, end = offsets[2] + 40, offsets[2] + 70
        data = data[:start] + bytes(b ^ 0x55 for b in data[start:end]) + data[end:]
    else:
        data, offsets = data[: offsets[5] + 60], offsets[:6]
    path.write_bytes(data)
    table, quarantined, dropped = read(path)
    lost = 5 if damage == "cut_at_end" else 2
    assert table["url"].to_pylist() == [page(n)[0] for n in range(6) if n != lost]
    assert [(q["origin"], q["reason"]) for q in quarantined] == [
        (f"pages.warc.gz:{offsets[lost]}", "truncated_input" if damage == "cut_at_end" else "corrupt_frame")
    ]
    assert quarantined[0]["detail"]["offset"] == offsets[lost] and not dropped
    if damage == "cut_then_next":  # the origins after the damage are the offsets in the damaged file
        assert table["origin"].to_pylist()[2] == f"pages.warc.gz:{offsets[2] + 60}"


def test_a_plain_warc_record_cut_short_is_quarantined_and_the_next_ones_are_read(tmp_path: Path) -> None:
    records = [response(*page(n)) for n in range(5)]
    path = tmp_path / "pages.warc"
    offsets = write_warc(path, records)
    data = path.read_bytes()
    path.write_bytes(data[: offsets[1] + 100] + data[offsets[2] :] + records[0][:150])  # and a cut record at the end
    table, quarantined, _ = read(path)
    assert table["url"].to_pylist() == [page(n)[0] for n in (0, 2, 3, 4)]
    assert table["origin"].to_pylist()[1] == f"pages.warc:{offsets[1] + 100}"
    end = offsets[1] + 100 + len(data) - offsets[2]
    assert [(q["origin"], q["reason"]) for q in quarantined] == [
        (f"pages.warc:{offsets[1]}", "bad_warc_record"),
        (f"pages.warc:{end}", "truncated_input"),
    ]


def test_a_record_larger_than_the_limit_is_quarantined_unread(tmp_path: Path) -> None:
    big = response("https://site.example/big", b"<p>" + b"word " * 2000 + b"</p>")
    path = tmp_path / "pages.warc.gz"
    write_warc(path, [response(*page(0)), big, response(*page(1))])
    table, quarantined, _ = read(path, ReadConfig(max_record_mb=0.005))
    assert table["url"].to_pylist() == [page(0)[0], page(1)[0]]
    assert [q["reason"] for q in quarantined] == ["record_too_large"]
    assert quarantined[0]["raw"].startswith(b"WARC/1.0")


CAFE = "Caf\u00e9 cr\u00e8me \u2014 \u201cquoted\u201d"


@pytest.mark.parametrize(
    ("body", "content_type", "text", "charset"),
    [
        (f"<p>{CAFE}</p>".encode("cp1252"), "text/html; charset=ISO-8859-1", CAFE, "cp1252"),  # Latin-1 label
        (
            '<meta charset="iso-8859-15"><p>100 \u20ac</p>'.encode("iso-8859-15"),
            "text/html",
            "100 \u20ac",
            "iso8859-15",
        ),
        (
            '<meta http-equiv="Content-Type" content="text/html; charset=windows-1251"><p>\u041f\u0440\u0438</p>'.encode(
                "cp1251"
            ),
            "text/html",
            "\u041f\u0440\u0438",
            "cp1251",
        ),
        (f"<p>{CAFE}</p>".encode("cp1252"), "text/html; charset=utf-8", CAFE, "cp1252"),  # declared UTF-8, is not
        (
            f"<p>{CAFE}</p>".encode("utf-8"),
            "text/html; charset=iso-8859-1",
            CAFE,
            "utf-8",
        ),  # declared Latin-1, is UTF-8
        (f"<p>{CAFE}</p>".encode("utf-8"), 'text/html; charset="x-no-such-charset"', CAFE, "utf-8"),
        (b"<p>caf\xe9</p>", "text/html; charset=zlib", "caf\u00e9", "cp1252"),  # a codec, not a charset
        (b"<p>\x81\x8d caf\xe9</p>", "text/html", "\x81\x8d caf\u00e9", "iso8859-1"),  # not UTF-8, not Windows-1252
        (b"\xef\xbb\xbf<p>" + CAFE.encode() + b"</p>", "text/html; charset=cp1252", CAFE, "utf-8"),  # a BOM wins
    ],
)
def test_pages_are_decoded_by_the_charset_that_fits(
    tmp_path: Path, body: bytes, content_type: str, text: str, charset: str
) -> None:
    path = tmp_path / "page.warc"
    write_warc(path, [response("https://site.example/", body, content_type=content_type)])
    table, _, _ = read(path)
    assert text in table["text"][0].as_py()
    assert table["charset"].to_pylist() == [charset]


def test_wet_conversion_records_are_documents_with_their_text(tmp_path: Path) -> None:
    path = tmp_path / "crawl.warc.wet.gz"
    texts = ["First page\nwith two lines", "Zweite Seite mit \u00e4\u00f6\u00fc"]
    write_warc(path, [warcinfo()] + [conversion(f"https://site.example/{i}", t) for i, t in enumerate(texts)])
    table, _, dropped = read(path)
    assert table["text"].to_pylist() == texts and not any(table["_html"].to_pylist())
    assert table["charset"].to_pylist() == ["utf-8", "utf-8"]
    assert [d["reason"] for d in dropped] == ["warc_warcinfo"]
    config = load_config(None, ["prep.stages=[normalize]"])  # no HTML: extract is not needed
    config.prep.inputs = [path]
    assert [step.name for step in build_prep_graph(config.prep).steps] == ["read", *UNIQUE_IDS_STEPS, "normalize"]


def test_ids_come_from_the_record_ids_and_reading_is_deterministic(tmp_path: Path) -> None:
    records = crawl(range(4))
    plain, packed = tmp_path / "a.warc", tmp_path / "a.warc.gz"
    write_warc(plain, records)
    write_warc(packed, records)
    first, second = read(packed)[0], read(packed)[0]
    assert first.equals(second)
    assert first["id"].to_pylist() == read(plain)[0]["id"].to_pylist()
    assert len(set(first["id"].to_pylist())) == 4


def test_a_warc_input_needs_the_extract_stage(tmp_path: Path) -> None:
    path = tmp_path / "crawl.warc.gz"
    write_warc(path, crawl(range(2)))
    with pytest.raises(UserError, match="crawl.warc.gz is a WARC file.*add extract to prep.stages"):
        prep([path], tmp_path / "out", "prep.stages=[normalize]")

    def source(*skip: str) -> str:
        return "prep.sources=" + json.dumps([{"name": "web", "inputs": [str(path)], "skip": list(skip)}])

    assert [step.name for step in build_prep_graph(load_config(None, [source()]).prep).steps][:5] == [
        "read",
        *UNIQUE_IDS_STEPS,
        "extract",
    ]
    with pytest.raises(UserError, match="crawl.warc.gz is a WARC file"):
        build_prep_graph(load_config(None, [source("extract")]).prep)


def test_prep_from_warc_keeps_page_fields_in_clean_and_lineage(tmp_path: Path) -> None:
    """Pages through extract, normalize and exact_dedup beside a JSONL file, in one shard."""
    pages = labelled_pages()[:6]
    urls = [f"https://site.example/{p['page']}" for p in pages]
    records = [warcinfo()]
    for url, record in zip(urls, pages):
        records += [request(url), response(url, page_html(record).encode()), metadata(url)]
    copied = next(i for i, record in enumerate(pages) if _encodes(page_html(record), "cp1252"))
    copy_url = "https://mirror.example/copy.html"  # the same page again, in Windows-1252
    records.append(
        response(copy_url, page_html(pages[copied]).encode("cp1252"), content_type="text/html; charset=windows-1252")
    )
    records.append(response("https://site.example/empty", b"<html><body><nav><a href='/'>Home</a></nav></body></html>"))
    path = tmp_path / "crawl.warc.gz"
    write_warc(path, records)
    jsonl = write_jsonl(
        tmp_path / "notes.jsonl",
        [{"id": "note-1", "text": "A plain note.\n\nIt is not HTML.", "url": "https://notes.example/1"}],
    )

    stats = prep([path, jsonl], tmp_path / "out", "prep.stages=[extract, normalize, exact_dedup]")
    names = [s.name for s in stats.stages]
    assert names == ["read", "unique_ids", "extract", "normalize", "exact_dedup"]
    assert stats.stages[2].dropped == {"no_main_text": 1}
    assert stats.stages[4].dropped == {"exact_duplicate": 1}
    clean = {r["url"] or r["id"]: r for r in rows(tmp_path / "out" / "clean")}
    assert sorted(clean) == sorted(urls + ["note-1"])  # the copy came later: a duplicate
    for url, record in zip(urls, pages):
        page_row = clean[url]
        assert (page_row["title"], page_row["html_lang"], page_row["date"], page_row["charset"]) == (
            record["title"],
            record["lang"],
            "2024-05-17T08:30:00Z",
            "utf-8",
        )
        assert page_row["warc_record_id"] == record_id("response", url)
        assert all(paragraph in page_row["text"] for paragraph in record["main"])
    for url, record in zip(urls[:3], pages[:3]):  # blogs, a cookie banner and a cookie dialog: all boilerplate gone
        assert "\n\n".join(record["main"]) in clean[url]["text"]  # a blank line between paragraphs
        assert not any(b in clean[url]["text"] for b in record["boilerplate"])
    assert clean["note-1"]["text"] == "A plain note.\n\nIt is not HTML." and clean["note-1"]["url"] is None
    lineage = {r["reason"]: json.loads(r["detail"]) for r in rows(tmp_path / "out" / "dropped")}
    assert lineage["no_main_text"]["url"] == "https://site.example/empty"
    assert lineage["exact_duplicate"]["url"] == copy_url and lineage["exact_duplicate"]["charset"] == "cp1252"
    assert lineage["exact_duplicate"]["title"] == pages[copied]["title"]
    assert lineage["warc_request"]["url"] in urls and lineage["warc_request"]["warc_record_id"]


def _encodes(text: str, codec: str) -> bool:
    try:
        text.encode(codec)
    except UnicodeEncodeError:
        return False
    return True


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"this is neither gzip nor WARC " * 10, "bad_warc_record"),
        (gzip.compress(b"gzip, but no WARC inside " * 10, mtime=0), "bad_warc_record"),
        (DAMAGED_MEMBER, "corrupt_frame"),
        (
            warc_record("resource", "https://site.example/", b"abc", "text/plain")[:-4] + b"garbage tail",
            "bad_warc_record",
        ),
    ],
)
def test_bytes_that_are_no_warc_are_one_quarantine_record(tmp_path: Path, data: bytes, reason: str) -> None:
    path = tmp_path / "junk.warc.gz"  # gzip or not is read from the bytes, not the name
    path.write_bytes(data)
    table, quarantined, dropped = read(path)
    assert table.num_rows == 0 and not dropped
    assert [(q["origin"], q["reason"]) for q in quarantined] == [("junk.warc.gz:0", reason)]
