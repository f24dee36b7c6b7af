"""url_dedup: keep one document per page, the newest fetch of it.

A crawl fetches the same page many times, under spellings that differ only in form (`HTTP://Example.com:80/a/`,
`https://example.com/a?utm_source=x#top`). URLs are normalized to one key, and of the documents sharing a key
the newest (by the date column) is kept, then the longest text, then the first in input order; across named
sources the copy in the highest-priority source comes first. Documents without a URL pass through.

Three steps, sharded like exact_dedup so that no task holds the corpus: key each shard in parallel (one file
per shard, sliced by the key range of the find task that reads it), find each range's keepers from its slices
of every shard, then filter each shard by the lists of duplicates.
"""

from __future__ import annotations

import re
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pydantic import Field

from data_prep.books import row_priorities, source_file
from data_prep.dedupe_files import by_range, range_tasks, read_range, run_removals_filter, write_ranged, write_removals
from data_prep.exact_dedup import first_occurrences, hashes128
from data_prep.stage import TEXT, StageSpec, StepSpec, TaskContext
from pipeline.ground.schema import Section

NAME = "url_dedup"
KEY, FIND = f"{NAME}.key", f"{NAME}.find"
TRACKING_PARAMS = [
    "utm_*",
    "fbclid",
    "gclid",
    "dclid",
    "gbraid",
    "wbraid",
    "msclkid",
    "yclid",
    "mc_cid",
    "mc_eid",
    "igshid",
    "_ga",
    "_gl",
]
_DEFAULT_PORTS = {"http": 80, "https": 443}
_ESCAPE = re.compile(r"%[0-9A-Fa-f]{2}")
_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
UNDATED = -(2**62)  # the date key of a document without a readable date: older than any


class UrlDedupConfig(Section):
    """Which columns hold a document's URL and fetch date, and which query parameters do not name a page."""

    url_field: str = Field("url", min_length=1, description="Column with the document's URL (see read.keep_fields).")
    date_field: str = Field(
        "date",
        min_length=1,
        description="Column with the fetch date (ISO 8601 or an HTTP date): the newest copy is "
        "kept; a copy without a readable date counts as the oldest.",
    )
    tracking_params: list[str] = Field(
        default_factory=lambda: list(TRACKING_PARAMS),
        description="Query parameters removed before comparing URLs (case-insensitive); a trailing * matches a prefix.",
    )
    find_shards_per_task: int = Field(
        64, ge=1, description="Input shards per find task: the key space is split into ceil(shards / this) ranges."
    )


FIND_TASKS = range_tasks("url_dedup", "find_shards_per_task")  # tasks of the range-split step


class TrackingParams:
    """Matches the query parameter names of `UrlDedupConfig.tracking_params`."""

    def __init__(self, patterns: list[str]) -> None:
        self.names = frozenset(p.lower() for p in patterns if not p.endswith("*"))
        self.prefixes = tuple(p[:-1].lower() for p in patterns if p.endswith("*"))

    def __contains__(self, name: str) -> bool:
        lowered = name.lower()
        return lowered in self.names or lowered.startswith(self.prefixes)


def _escapes(part: str) -> str:
    """One spelling of percent escapes: unreserved characters decoded, the others in upper case."""

    def one(match: re.Match[str]) -> str:
        char = chr(int(match.group()[1:], 16))
        return char if char in _UNRESERVED else match.group().upper()

    return _ESCAPE.sub(one, part)


def _ascii_host(host: str) -> str:
    """The host in lower case, an internationalized name in its ASCII (punycode) form, without a trailing dot."""
    host = host.rstrip(".").lower()
    if host.isascii():
        return host
    try:
        return host.encode("idna").decode("ascii")
    except UnicodeError:  # a label the IDNA codec refuses (too long, empty): compare it as written
        return host


def normalize_url(url: str, tracking: TrackingParams) -> str | None:
    """The key that every spelling of one page shares, or None when `url` names no host.

    http and https are one scheme (a page served on both is one page); host case, IDN spelling, the
    scheme's default port, a trailing slash of the path, percent-escape spelling, tracking parameters,
    the order of the other query parameters and the fragment do not change the key."""
    url = url.strip()
    try:
        if "//" not in url:
            scheme = urlsplit(url).scheme
            if scheme and "." not in scheme:  # mailto:, javascript:, tel: (example.com:8080 reads as a scheme)
                return None
            url = "//" + url  # a bare host and path: example.com/page
        split = urlsplit(url)
        host, port = split.hostname, split.port
    except ValueError:  # a malformed port or IPv6 literal
        return None
    if not host:
        return None
    scheme = split.scheme.lower() or "http"
    netloc = _ascii_host(host) if ":" not in host else f"[{host}]"
    if port is not None and port != _DEFAULT_PORTS.get(scheme, -1):
        netloc += f":{port}"
    path = _escapes(split.path).rstrip("/") or "/"
    query = [(name, value) for name, value in parse_qsl(split.query, keep_blank_values=True) if name not in tracking]
    query_text = "?" + urlencode(sorted(query), quote_via=quote) if query else ""
    prefix = "" if scheme in _DEFAULT_PORTS else f"{scheme}://"
    return prefix + netloc + path + query_text


def date_key(value: str | None) -> int:
    """Seconds since 1970 (UTC) of an ISO 8601 or HTTP date; UNDATED when there is none or it does not parse.
    A date without a zone is read as UTC."""
    if not value:
        return UNDATED
    text = value.strip()
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        try:
            parsed = parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return UNDATED
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    return int(parsed.timestamp())


_KEYED = np.dtype([("hash", "<u8", (2,)), ("date", "<i8"), ("length", "<i8"), ("row", "<u4")])


def _key_file(key_folder: Path, task: int) -> Path:
    return key_folder / f"keys-{task:05d}.bin"


def _column(table: Any, name: str) -> list[str | None]:
    return table[name].to_pylist() if name in table.column_names else [None] * table.num_rows


def run_key(ctx: TaskContext) -> dict[str, Any]:
    """Key one shard's documents (URL hash, date, length, row) into one file, grouped by find range."""
    cfg: UrlDedupConfig = ctx.settings
    present = pq.read_schema(source_file(ctx)).names
    fields = [name for name in (cfg.url_field, cfg.date_field) if name in present]
    table = pq.read_table(source_file(ctx), columns=[TEXT, *fields])
    tracking = TrackingParams(cfg.tracking_params)
    urls, dates = _column(table, cfg.url_field), _column(table, cfg.date_field)
    keyed = [(row, key) for row, url in enumerate(urls) if url and (key := normalize_url(url, tracking)) is not None]
    rows = np.array([row for row, _ in keyed], dtype=np.int64)
    records = np.empty(len(rows), _KEYED)
    records["hash"] = hashes128([key for _, key in keyed])
    records["date"] = [date_key(dates[row]) for row in rows]
    records["length"] = pc.utf8_length(table[TEXT]).to_numpy()[rows]
    records["row"] = rows
    order, bounds = by_range(records["hash"][:, 0], FIND_TASKS(ctx.config, len(ctx.shards)))
    write_ranged(_key_file(ctx.folder, ctx.task), records[order], bounds)
    ctx.report(table.num_rows)
    with_url = sum(1 for url in urls if url)
    return {
        "tally": {
            NAME: {
                "without_url": len(urls) - with_url,
                "unparsed_url": with_url - len(rows),
                "undated": int((records["date"] == UNDATED).sum()),
            }
        }
    }


def keepers(
    hashes: np.ndarray, dates: np.ndarray, lengths: np.ndarray, rows: np.ndarray, priority: np.ndarray | None
) -> np.ndarray:
    """For each document, the corpus row of the copy kept for its URL: of the highest priority, the
    newest, then the longest, then the first in corpus order."""
    order = np.lexsort((rows, -lengths, -dates))
    keeper = np.empty(len(rows), dtype=np.int64)
    ranked = first_occurrences(hashes[order], None if priority is None else priority[order])
    keeper[order] = rows[order][ranked]
    return keeper


def run_find(ctx: TaskContext) -> dict[str, Any]:
    """Choose the kept copy of every URL whose key falls in this task's range; of each shard's file only
    this range's slice is read."""
    records, rows = read_range(ctx, partial(_key_file, ctx.folder_of(KEY)), _KEYED)
    kept = keepers(records["hash"], records["date"], records["length"], rows, row_priorities(ctx, rows))
    dropped = kept != rows
    write_removals(ctx, rows[dropped], kept[dropped], None)
    return {"tally": {NAME: {"duplicates": int(dropped.sum())}}}


def run_filter(ctx: TaskContext) -> dict[str, Any]:
    return run_removals_filter(ctx, FIND, "duplicate_url")


STAGE = StageSpec(
    NAME,
    UrlDedupConfig,
    (
        StepSpec(".key", run_key),
        StepSpec(".find", run_find, tasks=FIND_TASKS, unit="url", reads=(KEY,)),
        StepSpec(".filter", run_filter, makes_docs=True, reads=(FIND,)),
    ),
    default=False,
)
