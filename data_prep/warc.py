"""Web archives as documents: WARC files (`.warc`, `.warc.gz`) and WET files (`.warc.wet.gz`).

A `response` record with an HTML content type becomes a document whose `text` is the page's HTML,
decoded by `data_prep.charset` and flagged in the internal `_html` column until `extract` turns it
into text in place. The HTML goes in `text` rather than in a column of its own because it *is* the
document's content, in markup: the contract stays "every document has id, text, origin", lineage
keeps the HTML of a page that extract drops, and the stages after extract see no difference between
a page and a JSONL document. A plan with WARC inputs must run extract (`data_prep.extract`), so HTML
never reaches the text stages. A WET `conversion` record becomes a document with its text directly.
Every other record is counted as dropped with its reason: `warc_not_html`, `warc_http_status`
(not 2xx), `warc_request`, `warc_revisit`, `warc_metadata`, `warc_warcinfo`, ... The record's
`WARC-Target-URI`, `WARC-Date`, `WARC-Record-ID` and the charset used travel as the `url`, `date`,
`warc_record_id` and `charset` columns; the id is derived from the record id, so it is the same
whichever file or offset holds the record.

The file is cut into records here, and fastwarc parses each record (headers, the HTTP message,
chunked and compressed bodies). fastwarc alone reports damage late or not at all (a cut gzip
member reads as a record with truncated headers; a record cut short in a plain file swallows the
next) and stops at the first error. Here each gzip member is decoded whole before its bytes are
used, and checked by its CRC; each record must end where its Content-Length says. A damaged member
or record is one quarantine record naming the file and the byte offset (the compressed offset of
its gzip member, as Common Crawl's index gives it), and reading resumes at the next gzip member
that decodes to a WARC header, or the next WARC header line of a plain file.
"""

from __future__ import annotations

import io
import re
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import IO, Any

from fastwarc.warc import WarcRecord, WarcRecordType

from data_prep.charset import decode_page, decode_utf8
from data_prep.stage import CHARSET, DATE, URL, WARC_RECORD_ID

GZIP_MAGIC = b"\x1f\x8b\x08"
CHUNK = 1 << 20  # compressed (or plain) bytes read at a time
HOLD_BYTES = 8 << 20  # a gzip member's decoded bytes are held until its CRC is checked, up to this much
MAX_HEADER_BYTES = 1 << 16  # a WARC header block longer than this is damage, not a header
RAW_KEEP = 4096  # bytes of a damaged stretch kept in its quarantine record
HTML_TYPES = {"text/html", "application/xhtml+xml"}
RECORD_START = re.compile(rb"WARC/1\.[01]\r\n")  # anywhere: a record cut short leaves the next one mid-line
CONTENT_LENGTH = re.compile(rb"\r\ncontent-length:[ \t]*(\d+)[ \t]*\r", re.IGNORECASE)
BLANK = re.compile(rb"[\r\n]*")
SNIFF_HTML = re.compile(rb"\s*(<!--.*?-->\s*)*<(!doctype\s+html|html|head|body)\b", re.IGNORECASE | re.DOTALL)


@dataclass
class Damage:
    """A stretch of the file that holds no readable record: one quarantine record."""

    offset: str  # where in the file, as `_Cutter.offset` writes it
    reason: str  # truncated_input, corrupt_frame, bad_warc_record, record_too_large
    error: str
    raw: bytes = b""
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass
class Outcome:
    """What one record becomes: a document (text set) or a drop or quarantine (reason set)."""

    offset: str
    record_id: str | None
    fields: dict[str, str | None]
    text: str | None = None
    html: bool = False
    utf8_errors: int = 0
    reason: str | None = None
    quarantine: bool = False
    detail: dict[str, Any] = field(default_factory=dict)
    raw: bytes = b""


def _starts_warc_member(handle: IO[bytes], offset: int) -> bool:
    """Whether a gzip member starts at `offset` and its first decoded bytes are a WARC header."""
    handle.seek(offset)
    try:
        head = zlib.decompressobj(31).decompress(handle.read(1 << 16), 16)
    except zlib.error:
        return False
    return head.startswith(b"WARC/")


def next_member(handle: IO[bytes], start: int) -> int | None:
    """The offset of the first gzip member at or after `start` that decodes to a WARC header."""
    window, window_start = b"", start
    while True:
        handle.seek(window_start + len(window))
        chunk = handle.read(CHUNK)
        window += chunk
        found = window.find(GZIP_MAGIC)
        while found >= 0:
            if _starts_warc_member(handle, window_start + found):
                return window_start + found
            found = window.find(GZIP_MAGIC, found + 1)
        if not chunk:
            return None
        keep = len(GZIP_MAGIC) - 1  # the magic may straddle two reads
        window_start, window = window_start + len(window) - keep, window[-keep:]


def gzip_members(handle: IO[bytes]) -> Iterator[int | bytes | Damage]:
    """Each gzip member in turn: its compressed offset (an int), then its decoded bytes, or a Damage.

    A member's bytes are held until its end, where zlib checks its CRC and length, so a damaged
    member gives no bytes at all; only a member larger than HOLD_BYTES (a whole file gzipped as one)
    is passed on in pieces before its check.
    """
    offset, pending = 0, b""  # the compressed offset of pending[0]; bytes read, not yet decoded
    decoder: Any = None
    member, held_bytes = 0, 0
    held: list[bytes] = []
    while True:
        if not pending or decoder is None and len(pending) < len(GZIP_MAGIC):
            more = handle.read(CHUNK)
            if not more:
                if decoder is not None or pending.strip(b"\0"):
                    yield Damage(
                        str(member if decoder is not None else offset),
                        "truncated_input",
                        "the file ends inside a gzip member",
                        b"".join(held)[:RAW_KEEP],
                    )
                return
            pending += more
            continue
        if decoder is None:
            stripped = pending.lstrip(b"\0")  # padding between members
            offset, pending = offset + len(pending) - len(stripped), stripped
            if len(pending) < len(GZIP_MAGIC):
                continue
            if not pending.startswith(GZIP_MAGIC):
                resume = next_member(handle, offset)
                yield Damage(
                    str(offset),
                    "corrupt_frame",
                    "no gzip member starts here",
                    pending[:RAW_KEEP],
                    {"resumed_at": resume},
                )
                if resume is None:
                    return
                handle.seek(resume)
                offset, pending = resume, b""
                continue
            decoder, member, held, held_bytes = zlib.decompressobj(31), offset, [], 0
            yield member
        try:
            decoded = decoder.decompress(pending, HOLD_BYTES)
        except zlib.error as exc:
            resume = next_member(handle, member + 1)
            yield Damage(
                str(member), "corrupt_frame", f"gzip member: {exc}", b"".join(held)[:RAW_KEEP], {"resumed_at": resume}
            )
            if resume is None:
                return
            handle.seek(resume)
            offset, pending, decoder = resume, b"", None
            continue
        rest = decoder.unused_data if decoder.eof else decoder.unconsumed_tail
        offset, pending = offset + len(pending) - len(rest), rest
        if decoded:
            held.append(decoded)
            held_bytes += len(decoded)
        if decoder.eof or held_bytes >= HOLD_BYTES:
            if held:
                yield b"".join(held)
            held, held_bytes = [], 0
        if decoder.eof:
            decoder = None


def plain_chunks(handle: IO[bytes]) -> Iterator[int | bytes]:
    """An uncompressed file as one member at offset 0."""
    yield 0
    while chunk := handle.read(CHUNK):
        yield chunk


class _Cutter:
    """Cuts a stream of decoded bytes into WARC records, resynchronizing after damage."""

    def __init__(self, compressed: bool, max_bytes: int) -> None:
        self.compressed, self.max_bytes = compressed, max_bytes
        self.buffer = b""
        self.base = 0  # the stream position of buffer[0]
        self.members: list[tuple[int, int]] = []  # (stream position, compressed offset) of member starts
        self.lost = False  # after damage: pass over bytes up to the next record start
        self.skip = 0  # bytes of a record too large to hold, still to pass over

    def offset(self, position: int) -> str:
        """The file offset of stream `position`; in a gzip file the offset of the member holding it,
        then `+n` bytes into the member's decoded data when the record does not start the member."""
        if not self.compressed:
            return str(position)
        start, offset = next((m for m in reversed(self.members) if m[0] <= position), (0, 0))
        return f"{offset}" + (f"+{position - start}" if position > start else "")

    def member(self, compressed_offset: int) -> None:
        self.members.append((self.base + len(self.buffer), compressed_offset))

    def damaged(self) -> None:
        """A member was lost: what the buffer holds of its record goes with it."""
        self._consume(len(self.buffer))
        self.lost = True

    def feed(self, data: bytes) -> Iterator[tuple[str, bytes] | Damage]:
        """Add decoded bytes; yield the records (offset, bytes) and the damage they complete."""
        if self.skip:
            passed = min(self.skip, len(data))
            self.skip -= passed
            self.base += passed
            data = data[passed:]
        self.buffer += data
        yield from self._cut(final=False)

    def finish(self) -> Iterator[tuple[str, bytes] | Damage]:
        yield from self._cut(final=True)
        if self.buffer.strip(b"\r\n") and not self.lost and not self.skip:  # (a record too large was reported)
            yield Damage(
                self.offset(self.base), "truncated_input", "the file ends inside a record", self.buffer[:RAW_KEEP]
            )

    def _consume(self, n: int) -> None:
        self.base += n
        self.buffer = self.buffer[n:]
        while len(self.members) > 1 and self.members[1][0] <= self.base:
            self.members.pop(0)

    def _bad(self, error: str) -> Damage:
        """The bytes at the buffer's start are no record: report them and look for the next one."""
        damage = Damage(self.offset(self.base), "bad_warc_record", error, self.buffer[:RAW_KEEP])
        self._consume(1)
        self.lost = True
        return damage

    def _resync(self) -> bool:
        """Pass over bytes up to the next record start; False: none in the buffer yet."""
        match = RECORD_START.search(self.buffer)
        if match is None:
            self._consume(max(0, len(self.buffer) - len(b"WARC/1.0\r\n")))
            return False
        self._consume(match.start())
        self.lost = False
        return True

    def _cut(self, final: bool) -> Iterator[tuple[str, bytes] | Damage]:
        while True:
            if self.lost and not self._resync():
                return
            self._consume(BLANK.match(self.buffer).end())  # type: ignore[union-attr]
            buffer = self.buffer
            if not buffer:
                return
            if not buffer.startswith(b"WARC/"[: len(buffer)]):
                yield self._bad("no WARC header here")
                continue
            header_end = buffer.find(b"\r\n\r\n", 0, MAX_HEADER_BYTES)
            if header_end < 0:
                if len(buffer) >= MAX_HEADER_BYTES:
                    yield self._bad(f"no end of the WARC header in {MAX_HEADER_BYTES:,} bytes")
                    continue
                return
            if RECORD_START.search(buffer, 1, header_end):
                yield self._bad("a record cut off inside its header")
                continue
            length = CONTENT_LENGTH.search(buffer, 0, header_end + 2)
            if length is None:
                yield self._bad("the WARC header has no Content-Length")
                continue
            body_end = header_end + 4 + int(length.group(1))
            if body_end > self.max_bytes:
                yield Damage(
                    self.offset(self.base),
                    "record_too_large",
                    f"a record of {body_end:,} bytes",
                    buffer[:header_end],
                    {"limit_bytes": self.max_bytes},
                )
                self.skip = max(0, body_end - len(buffer))
                self._consume(min(body_end, len(buffer)))
                continue
            tail = buffer[body_end : body_end + 4]
            if len(tail) < 4 and not (final and len(buffer) >= body_end):
                return
            if tail != b"\r\n\r\n"[: len(tail)]:
                yield self._bad("the record does not end where its Content-Length says")
                continue
            yield self.offset(self.base), buffer[:body_end]
            self._consume(body_end + len(tail))


def warc_records(handle: IO[bytes], max_bytes: int) -> Iterator[tuple[str, bytes] | Damage]:
    """Every record of a WARC file as (offset, bytes), and every damaged stretch as a Damage, in file order.
    Whether the file is gzipped is read from its first bytes, not its name."""
    compressed = handle.read(len(GZIP_MAGIC)) == GZIP_MAGIC
    handle.seek(0)
    cutter = _Cutter(compressed, max_bytes)
    for event in gzip_members(handle) if compressed else plain_chunks(handle):
        if isinstance(event, int):
            cutter.member(event)
        elif isinstance(event, Damage):
            cutter.damaged()
            yield event
        else:
            yield from cutter.feed(event)
    yield from cutter.finish()


def _clean_uri(value: str | None) -> str | None:
    return value.strip().removeprefix("<").removesuffix(">") if value else None


def record_outcome(offset: str, data: bytes) -> Outcome:
    """What the record `data` (its bytes from `WARC/1.x` to the end of its block) becomes."""
    try:
        record = WarcRecord.from_reader(io.BytesIO(data))
    except OSError as exc:
        return Outcome(
            offset, None, {}, reason="bad_warc_record", quarantine=True, detail={"error": str(exc)}, raw=data[:RAW_KEEP]
        )
    headers = record.headers
    record_id = headers.get("WARC-Record-ID")
    fields = {
        URL: _clean_uri(headers.get("WARC-Target-URI")),
        DATE: headers.get("WARC-Date"),
        WARC_RECORD_ID: record_id,
    }
    kind = record.record_type
    if kind == WarcRecordType.conversion:
        text, errors = decode_utf8(record.reader.read())
        return Outcome(offset, record_id, fields | {CHARSET: "utf-8"}, text=text, utf8_errors=errors)
    if kind != WarcRecordType.response:
        return Outcome(offset, record_id, fields, reason=f"warc_{kind}")  # warc_request, ..., warc_unknown
    return _response(offset, record, record_id, fields, data)


def _response(
    offset: str, record: WarcRecord, record_id: str | None, fields: dict[str, str | None], data: bytes
) -> Outcome:
    """A response record: an HTML page, or a drop saying why not."""
    if not record.is_http:
        content_type = (record.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        return Outcome(offset, record_id, fields, reason="warc_not_html", detail={"content_type": content_type})
    try:
        record.parse_http(auto_decode="all")
        status = record.http_headers.status_code
        content_type = (record.http_content_type or "").lower()
        if status is None:
            raise OSError("no HTTP status line")
        if not 200 <= status < 300:
            return Outcome(offset, record_id, fields, reason="warc_http_status", detail={"status": status})
        if content_type and content_type not in HTML_TYPES:
            return Outcome(offset, record_id, fields, reason="warc_not_html", detail={"content_type": content_type})
        body = record.reader.read()
    except OSError as exc:  # a malformed HTTP message, or a body its Content- or Transfer-Encoding cannot decode
        return Outcome(
            offset,
            record_id,
            fields,
            reason="bad_http",
            quarantine=True,
            detail={"error": str(exc)},
            raw=data[:RAW_KEEP],
        )
    if not content_type and not SNIFF_HTML.match(body, 0, 1024):
        return Outcome(offset, record_id, fields, reason="warc_not_html", detail={"content_type": ""})
    text, charset = decode_page(body, record.http_charset)
    return Outcome(offset, record_id, fields | {CHARSET: charset}, text=text, html=True)
