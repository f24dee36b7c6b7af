"""Bytes as text: UTF-8 with its damage counted, and web pages in whatever charset they are in.

Input read as UTF-8 (JSONL, Parquet, .txt, WET) keeps invalid sequences as U+FFFD and counts them,
so that normalize repairs or quarantines the document by policy. A web page is decoded by the
charset it declares where the bytes fit it, and decoding never fails. Order: a byte-order mark;
then bytes that are valid UTF-8 and not plain ASCII are UTF-8 whatever the page declares (text in
another encoding is very rarely valid UTF-8, while servers that label every page with a default
Latin-1 are common); then the HTTP Content-Type charset, then a `<meta charset>`
or `http-equiv` declaration in the first bytes, each used only when the bytes decode under it; then
UTF-8, Windows-1252 and, as the last resort that cannot fail, Latin-1. As browsers do, the Latin-1 and
ASCII labels mean Windows-1252, whose curly quotes and dashes Latin-1 would turn into control
characters. The charset used is returned, so a run can tell which pages were guessed.
"""

from __future__ import annotations

import codecs
import re

PRESCAN_BYTES = 4096  # where a <meta> declaration is looked for (browsers look at 1,024; long heads are common)
META_CHARSET = re.compile(rb"<meta[^>]{0,512}?charset\s*=\s*[\"']?\s*([A-Za-z0-9_.:+-]{1,40})", re.IGNORECASE)
BYTE_ORDER_MARKS = ((codecs.BOM_UTF8, "utf-8"), (codecs.BOM_UTF16_LE, "utf-16-le"), (codecs.BOM_UTF16_BE, "utf-16-be"))
REPLACEMENT = "\ufffd"
REPLACEMENT_BYTES = REPLACEMENT.encode()
WINDOWS_1252_LABELS = {"iso8859-1", "ascii"}  # codec names of the labels browsers read as Windows-1252
NOT_CHARSETS = {"unicode-escape", "raw-unicode-escape", "idna", "punycode", "undefined"}  # Python's, not the web's


def decode_utf8(raw: bytes) -> tuple[str, int]:
    """Decode, replacing invalid sequences with U+FFFD; return the text and how many were replaced."""
    try:
        return raw.decode("utf-8"), 0
    except UnicodeDecodeError:
        text = raw.decode("utf-8", errors="replace")
        return text, text.count(REPLACEMENT) - raw.count(REPLACEMENT_BYTES)


def codec_name(label: str | None) -> str | None:
    """Python's name for a declared charset label (None: no label, or one Python does not know)."""
    if not label:
        return None
    try:
        codec = codecs.lookup(label.strip().strip("\"'"))
    except (LookupError, ValueError):
        return None
    if not codec._is_text_encoding or codec.name in NOT_CHARSETS:  # a page may declare charset=zlib
        return None
    return "cp1252" if codec.name in WINDOWS_1252_LABELS else codec.name


def meta_charset(body: bytes) -> str | None:
    """The charset a `<meta>` tag near the start declares, as given."""
    match = META_CHARSET.search(body, 0, PRESCAN_BYTES)
    return match.group(1).decode("ascii") if match else None


def decode_page(body: bytes, http_charset: str | None) -> tuple[str, str]:
    """The page's text and the codec that decoded it (see the module's docstring for the order)."""
    for mark, name in BYTE_ORDER_MARKS:
        if body.startswith(mark):
            return body[len(mark) :].decode(name, errors="replace"), name
    if not body.isascii():
        try:
            return body.decode("utf-8"), "utf-8"
        except UnicodeDecodeError:
            pass
    for label in (http_charset, meta_charset(body)):
        codec = codec_name(label)
        if codec is not None:
            try:
                return body.decode(codec), codec
            except UnicodeError:  # UnicodeDecodeError, or a codec's own refusal
                continue
    for name in ("utf-8", "cp1252"):
        try:
            return body.decode(name), name
        except UnicodeDecodeError:
            continue
    return body.decode("latin-1"), "iso8859-1"
