"""blocklist: drop documents from blocked sites or with listed words (C4's "bad words" rule).

URL rules read the document's `url` column (keep it with `prep.read.keep_fields: [url]`). A list
entry is a domain (`bad.example`, which blocks its subdomains too) or a URL (anything with a
`/`, matched without scheme, fragment or trailing slash). A document's host is looked up as
itself and each parent domain at a label boundary (`a.b.ads.test` as `a.b.ads.test`, `b.ads.test`,
`ads.test`, `test`: set lookups, not a scan of the list), under any TLD, known to the suffix list or
not; only a public suffix that the list bundled in tldextract knows (no network) is never looked
up, so `Ads.Bad.co.uk` matches `bad.co.uk` but never `co.uk`, and an IP address only as itself.
Hosts and domain entries compare lower-cased, without a trailing dot, internationalized names in
their ASCII form (`bücher.example` is `xn--bcher-kva.example`). Allow-lists win.

Word rules match whole words (and phrases, as word sequences) of the lists for the document's
`lang` plus the `*` lists, so a listed word inside a longer word is no hit. C4 drops a document
with any hit (`max_word_hits: 0`); `max_word_ratio` is the gentler variant for long documents.
"""

from __future__ import annotations

import ipaddress
from collections import Counter
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import urlsplit

import pyarrow as pa
from pydantic import Field

from data_prep.books import doc_stage
from data_prep.inputs import file_digests, read_entries
from data_prep.stage import LANG, TEXT, Decision, DocStage, Drop
from data_prep.words import words
from pipeline.ground.schema import Section

ANY_LANGUAGE = "*"


class BlocklistConfig(Section):
    """Which lists, and how many listed words a document may hold."""

    url_field: str = Field("url", min_length=1, description="Column with the document's URL (see read.keep_fields).")
    url_lists: list[Path] = Field(default_factory=list, description="Files of blocked domains or URLs, one a line.")
    allow_lists: list[Path] = Field(
        default_factory=list, description="Files of domains or URLs that are never blocked (they win over url_lists)."
    )
    word_lists: dict[str, list[Path]] = Field(
        default_factory=dict,
        description="Word-list files per language code (matched on `lang`), `*` for every document; one word or "
        "phrase a line.",
    )
    max_word_hits: int | None = Field(
        0, ge=0, description="Drop a document with more listed words than this (C4: 0); null turns the rule off."
    )
    max_word_ratio: float | None = Field(
        None, gt=0, le=1, description="Drop a document whose listed words exceed this share of its words."
    )

    def missing(self) -> str | None:
        return None if self.url_lists or self.word_lists else "no url_lists or word_lists"

    def fingerprint(self) -> dict[str, Any]:
        files = [*self.url_lists, *self.allow_lists, *(p for paths in self.word_lists.values() for p in paths)]
        return super().fingerprint() | {"files": file_digests(files, "prep.blocklist")}


def canonical_host(host: str) -> str:
    """`host` as hosts and domain entries are compared: lower-cased, no trailing dot, an internationalized
    name in its ASCII (IDNA) form; a name the IDNA codec refuses stays as written."""
    host = host.lower().rstrip(".")
    if host.isascii():
        return host
    try:
        return host.encode("idna").decode("ascii")
    except UnicodeError:
        return host


def host_of(url: str) -> str | None:
    """The canonical host of `url` (scheme optional), without port; None if it has none."""
    try:
        host = urlsplit(url if "//" in url else "//" + url).hostname
    except ValueError:
        return None
    return canonical_host(host) if host else None


def url_key(url: str) -> str | None:
    """What URL entries are compared on: host, path without trailing slash, query."""
    try:
        split = urlsplit(url.strip() if "//" in url else "//" + url.strip())
        host = split.hostname
    except ValueError:
        return None
    if not host:
        return None
    return canonical_host(host) + split.path.rstrip("/") + (f"?{split.query}" if split.query else "")


class UrlRules:
    """Domain and URL entries of some list files, each remembering the file it came from."""

    def __init__(self, paths: list[Path]) -> None:
        self.domains: dict[str, str] = {}
        self.urls: dict[str, str] = {}
        for path in paths:
            for entry in read_entries(path):
                if "/" in entry:
                    key = url_key(entry)
                    if key:
                        self.urls.setdefault(key, path.name)
                else:
                    self.domains.setdefault(canonical_host(entry.lstrip("*.")), path.name)

    def match(self, key: str | None, hosts: list[str]) -> tuple[str, str, str] | None:
        """(reason, entry, list file) of the first entry that covers the URL, or None."""
        if key is not None and key in self.urls:
            return "blocked_url", key, self.urls[key]
        for host in hosts:
            if host in self.domains:
                return "blocked_domain", host, self.domains[host]
        return None


class BlocklistStage(DocStage):
    """Drops documents whose URL or words are on a configured list; see `BlocklistConfig`."""

    name: ClassVar[str] = "blocklist"

    def __init__(self, config: BlocklistConfig) -> None:
        self.config = config

    def setup(self) -> None:
        import tldextract

        # The suffix list bundled with the package: no fetch, no cache folder.
        self._extract = tldextract.TLDExtract(suffix_list_urls=(), cache_dir=None)
        self.blocked = UrlRules(self.config.url_lists)
        self.allowed = UrlRules(self.config.allow_lists)
        lists = {lang: [w for p in paths for w in read_entries(p)] for lang, paths in self.config.word_lists.items()}
        self._words: dict[str, frozenset[str]] = {}
        self._phrases: dict[str, tuple[str, ...]] = {}
        for lang, entries in lists.items():
            tokens = [" ".join(words(entry)) for entry in entries]
            self._words[lang] = frozenset(t for t in tokens if t and " " not in t)
            self._phrases[lang] = tuple(sorted({t for t in tokens if " " in t}))

    def candidate_hosts(self, host: str) -> list[str]:
        """`host` and its parent domains, longest first, down to the label above a known public suffix
        (to the last label under a TLD the suffix list does not know); the host alone for an IP address
        or a bare public suffix."""
        try:
            ipaddress.ip_address(host)
            return [host]
        except ValueError:
            pass
        labels = host.split(".")
        suffix = self._extract(host).suffix
        parents = len(labels) - (suffix.count(".") + 1 if suffix else 0)
        return [".".join(labels[i:]) for i in range(max(parents, 1))]

    def check_url(self, url: str | None) -> Drop | None:
        host = host_of(url) if url else None
        if host is None:
            return None
        key, hosts = url_key(url), self.candidate_hosts(host)  # type: ignore[arg-type]
        if self.allowed.match(key, hosts):
            return None
        match = self.blocked.match(key, hosts)
        if match is None:
            return None
        reason, rule, list_name = match
        return Drop(reason, {"rule": rule, "list": list_name, "host": host})

    def check_words(self, text: str, lang: str | None) -> Drop | None:
        cfg = self.config
        langs = [ANY_LANGUAGE] + ([lang] if lang and lang != ANY_LANGUAGE else [])
        listed = [(self._words[k], self._phrases[k]) for k in langs if k in self._words]
        if not listed:
            return None
        tokens = words(text)
        found: Counter[str] = Counter()
        for singles, phrases in listed:
            found.update(t for t in tokens if t in singles)
            if phrases:
                joined = f" {' '.join(tokens)} "
                found.update({p: joined.count(f" {p} ") for p in phrases if f" {p} " in joined})
        hits = sum(found.values())
        if not hits:
            return None
        shown = sorted(found)[:5]
        if cfg.max_word_hits is not None and hits > cfg.max_word_hits:
            return Drop("blocked_words", {"hits": hits, "threshold": cfg.max_word_hits, "words": shown})
        ratio = hits / len(tokens)
        if cfg.max_word_ratio is not None and ratio > cfg.max_word_ratio:
            return Drop(
                "blocked_word_ratio", {"value": round(ratio, 6), "threshold": cfg.max_word_ratio, "words": shown}
            )
        return None

    def decide(self, table: pa.Table) -> Decision:
        texts = table.column(TEXT).to_pylist()
        urls = self._column(table, self.config.url_field)
        langs = self._column(table, LANG)
        drops = {}
        for row, (text, url, lang) in enumerate(zip(texts, urls, langs)):
            drop = self.check_url(url) or self.check_words(text, lang)
            if drop is not None:
                drops[row] = drop
        return Decision(table, drops)

    def tally(self, kept: pa.Table) -> dict[str, dict[str, int]]:
        if not (self.config.url_lists and kept.num_rows):
            return {}
        missing = sum(url is None for url in self._column(kept, self.config.url_field))
        return {"blocklist": {"kept_without_url": missing}} if missing else {}

    @staticmethod
    def _column(table: pa.Table, name: str) -> list[Any]:
        return table.column(name).to_pylist() if name in table.column_names else [None] * table.num_rows


STAGE = doc_stage(BlocklistStage, BlocklistConfig, default=False)
