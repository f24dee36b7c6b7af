"""WARC and WET files written record by record, as crawlers write them, for the tests and the bench.

Each record is `WARC/1.0`, its headers, a blank line, its block and two line ends; a `.warc.gz`
holds one gzip member per record, as Common Crawl ships them. Record ids are derived from the
record's kind and URL, so a rebuilt file has the same bytes.
"""

from __future__ import annotations

import gzip
import uuid
from pathlib import Path


def record_id(kind: str, url: str) -> str:
    return f"<urn:uuid:{uuid.uuid5(uuid.NAMESPACE_URL, kind + ' ' + url)}>"


def warc_record(kind: str, url: str | None, block: bytes, content_type: str, **headers: str) -> bytes:
    lines = [
        b"WARC/1.0",
        f"WARC-Type: {kind}".encode(),
        f"WARC-Record-ID: {record_id(kind, url or '')}".encode(),
        b"WARC-Date: 2024-05-17T08:30:00Z",
    ]
    if url is not None:
        lines.append(f"WARC-Target-URI: {url}".encode())
    lines += [f"{name.replace('_', '-')}: {value}".encode() for name, value in headers.items()]
    lines += [f"Content-Type: {content_type}".encode(), f"Content-Length: {len(block)}".encode()]
    return b"\r\n".join(lines) + b"\r\n\r\n" + block + b"\r\n\r\n"


def response(
    url: str, body: bytes, content_type: str = "text/html; charset=utf-8", status: str = "200 OK", **http_headers: str
) -> bytes:
    head = [f"HTTP/1.1 {status}".encode()]
    if content_type:
        head.append(f"Content-Type: {content_type}".encode())
    head += [f"{name.replace('_', '-')}: {value}".encode() for name, value in http_headers.items()]
    head.append(f"Content-Length: {len(body)}".encode())
    http = b"\r\n".join(head) + b"\r\n\r\n" + body
    return warc_record("response", url, http, "application/http; msgtype=response")


def request(url: str) -> bytes:
    http = f"GET / HTTP/1.1\r\nHost: {url.split('/')[2]}\r\nUser-Agent: test-crawler\r\n\r\n".encode()
    return warc_record("request", url, http, "application/http; msgtype=request")


def metadata(url: str) -> bytes:
    return warc_record("metadata", url, b"fetchTimeMs: 120\r\n", "application/warc-fields")


def revisit(url: str) -> bytes:
    http = b"HTTP/1.1 304 Not Modified\r\n\r\n"
    return warc_record(
        "revisit",
        url,
        http,
        "application/http; msgtype=response",
        WARC_Profile="http://netpreserve.org/warc/1.0/revisit/identical-payload-digest",
    )


def warcinfo() -> bytes:
    return warc_record(
        "warcinfo", None, b"software: test-crawler\r\nformat: WARC File Format 1.0\r\n", "application/warc-fields"
    )


def conversion(url: str, text: str) -> bytes:
    return warc_record("conversion", url, text.encode("utf-8"), "text/plain")


def write_warc(path: Path, records: list[bytes]) -> list[int]:
    """Write `records` (one gzip member each when the name ends in .gz); return where each starts."""
    offsets, position = [], 0
    with open(path, "wb") as handle:
        for record in records:
            data = gzip.compress(record, mtime=0) if path.name.endswith(".gz") else record
            offsets.append(position)
            handle.write(data)
            position += len(data)
    return offsets
