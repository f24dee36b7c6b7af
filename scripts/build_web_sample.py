"""Build data/web_sample/: a small WARC crawl of fictional web sites built around the sample corpus.

The crawl front end (extract, url_dedup, boilerplate and the line filters) needs pages as a crawler
stores them: the article among navigation, sidebars, cookie banners, footers, related-post lists
and comments; one page under several URLs (utm_ parameters, a trailing slash, http and https, a
fragment); images, PDFs, robots.txt, a redirect and a 404 among the pages; request records beside
the responses; revisits of unchanged pages in a later crawl; a page in ISO-8859-1. The articles are
documents of the sample corpus (data/sample: real text under free licences); the sites around them
are written here, under reserved `.example` host names. Every choice is seeded and every WARC
header (record ids, dates) is derived, and warcio gzips each record as a member of its own without
a timestamp, so a rerun writes the same bytes. data/web_sample/SOURCES.md describes the result.

Run: .venv/bin/python scripts/build_web_sample.py
"""

from __future__ import annotations

import html
import struct
import uuid
import zlib
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime
from io import BytesIO
from pathlib import Path
from urllib.parse import urlsplit

from build_test_data import read_sample, seeded
from warcio.archiveiterator import ArchiveIterator
from warcio.recordloader import ArcWarcRecord
from warcio.statusandheaders import StatusAndHeaders
from warcio.warcwriter import WARCWriter

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "data" / "web_sample"
RECORD_IDS = uuid.uuid5(uuid.NAMESPACE_URL, "crucible-web-sample-v1")
FIRST_CRAWL = datetime(2024, 5, 6, 8, 0, tzinfo=timezone.utc)
SECOND_CRAWL = datetime(2024, 6, 10, 8, 0, tzinfo=timezone.utc)
USER_AGENT = "crucible-sample-crawler/1.0 (+https://crawler.example/about)"


@dataclass(frozen=True)
class Site:
    host: str
    name: str
    tagline: str
    server: str
    nav: tuple[str, ...]
    licence: str  # the footer's line on where the articles come from and under which licence
    cookie: str


SITES = {
    "docs": Site(
        "docs.pyguide.example",
        "PyGuide Notes",
        "Reading the Python documentation, one page at a time",
        "nginx/1.22.1",
        ("Home", "Tutorial", "HOWTOs", "Library", "FAQ", "About"),
        "Documentation text from Python 3.11, © 2001-2023 Python Software Foundation, used under the "
        "PSF License Agreement; code examples under the Zero-Clause BSD licence.",
        "We use cookies to remember your theme and to count visits. See our cookie policy.",
    ),
    "man": Site(
        "manpages.shellhelp.example",
        "ShellHelp",
        "Every manual page, readable in the browser",
        "Apache/2.4.57 (Debian)",
        ("Home", "Commands", "System calls", "Library calls", "File formats", "Admin"),
        "Manual pages are copyright their authors and distributed under the licence stated in each "
        "page's Debian package (GPL-2+, the Linux man-pages copyleft licence, BSD or Expat).",
        "This site uses cookies. By continuing to browse the site you agree to our use of cookies.",
    ),
    "blog": Site(
        "blog.debnews.example",
        "DebNews",
        "Package of the day, release notes and more",
        "nginx/1.22.1",
        ("Home", "Package of the day", "Release notes", "Archive", "Contact"),
        "Package descriptions and changelogs are the work of their Debian maintainers and upstream "
        "authors, under each package's licence. Blog design © 2024 DebNews, CC BY-SA 4.0.",
        "We and our partners use cookies to personalise content and ads. Accept all or manage choices.",
    ),
    "intl": Site(
        "open-manuals.example",
        "Open Manuals International",
        "Translated manuals and package notes",
        "Apache/2.4.57 (Debian)",
        ("Home", "Languages", "Manuals", "Packages", "Help translate"),
        "Translations by the Debian translation teams and the manual pages' translators, under the "
        "licence of each package (GPL-3+ for most translated manual pages).",
        "Cookies help us deliver our services. By using our services, you agree to our use of cookies.",
    ),
}
PAGES = {"docs": 60, "man": 55, "blog": 70, "intl": 60}  # articles per site
COMMENTERS = ("marta_k", "Jon P.", "tux_fan_88", "Priya", "lukas.b", "anonymous", "Hélène", "Kenji", "old_sysadmin")
COMMENTS = (
    "Thanks, this was exactly what I was looking for.",
    "Great write-up! Bookmarked.",
    "Does this still work on the latest release? I get a different result on my machine.",
    "I have been using this for years and never knew about half of these options.",
    "Could you do a follow-up post with more examples?",
    "Worked for me after a restart.",
    "Typo in the second paragraph, otherwise very helpful.",
    "Is there a way to do this without root?",
    "Nice summary. The official docs are much harder to read.",
    "+1, same question here.",
    "This saved me an afternoon of debugging.",
    "First!",
    "BEST CHEAP WATCHES ONLINE!!! Visit our shop at watches.example today, free shipping!!!",
)
TAGS = ("linux", "python", "shell", "tutorial", "debian", "howto", "tips", "reference", "packaging", "i18n")


@dataclass
class Page:
    site: str
    url: str
    title: str
    body: str  # the article's HTML
    lang: str
    doc_id: str
    charset: str = "utf-8"


# ---- articles: a corpus document as the HTML of an article --------------------------------------


def paragraphs(text: str) -> list[str]:
    return [p for p in text.split("\n\n") if p.strip()]


def prose_html(text: str) -> str:
    """Paragraphs as <p>; indented blocks and interpreter sessions as <pre>; bullet lines as a list."""
    out = []
    for block in paragraphs(text):
        lines = block.strip("\n").split("\n")
        if all(line.startswith(("    ", ">>>", "...", "\t")) for line in lines if line.strip()):
            out.append(f"<pre><code>{html.escape(block.strip(chr(10)))}</code></pre>")
        elif all(line.lstrip().startswith(("* ", "- ", "• ")) for line in lines):
            items = "".join(f"<li>{html.escape(line.lstrip()[2:])}</li>" for line in lines)
            out.append(f"<ul>{items}</ul>")
        else:
            out.append(f"<p>{html.escape(' '.join(line.strip() for line in lines))}</p>")
    return "\n".join(out)


def manual_html(text: str) -> str:
    """A manual page: its header line apart, section names (lines at column 0) as <h2>, the rest as <p>."""
    first, _, rest = text.partition("\n")
    out = [f'<div class="mp-header">{html.escape(" ".join(first.split()))}</div>']
    for block in paragraphs(rest):
        lines = block.strip("\n").split("\n")
        while lines and lines[0] and not lines[0][0].isspace():
            out.append(f"<h2>{html.escape(lines.pop(0).strip())}</h2>")
        if lines:
            out.append(f"<p>{html.escape(' '.join(line.strip() for line in lines))}</p>")
    return "\n".join(out)


def article(site: str, doc: dict) -> Page:
    """The page of one document: its URL and title follow its id, its markup its source."""
    doc_id, text, source = doc["id"], doc["text"], doc["source"]
    stem, _, piece = doc_id.partition("#")
    part = "" if piece in ("", "0") else f"part-{int(piece) + 1}/"
    host = SITES[site].host
    if source == "python-docs":
        path = stem.removeprefix("python-docs/").removesuffix(".html")
        title = f"{path.rsplit('/', 1)[-1].replace('_', ' ').title()} ({path.split('/')[0]})"
        return Page(site, f"https://{host}/{path}/{part}", title, prose_html(text), "en", doc_id)
    if source == "manpages":
        *_, section, name = stem.split("/")
        lang = doc["lang"]
        title = f"{name.rsplit('.', 1)[0]}({name.rsplit('.', 1)[1]})"
        url = (
            f"https://{host}/{section}/{name}{'-' + part.strip('/') if part else ''}.html"
            if site == "man"
            else f"https://{host}/{lang}/{section}/{name}/{part}"
        )
        return Page(site, url, title, manual_html(text), lang, doc_id)
    if source == "package-descriptions":
        package, lang = stem.rsplit("/", 1)[-1], doc["lang"]
        summary, _, rest = text.partition("\n\n")
        body = f'<p class="lead">{html.escape(summary)}</p>\n{prose_html(rest)}'
        if site == "blog":
            return Page(
                site,
                f"https://{host}/2024/05/package-of-the-day-{package}/",
                f"Package of the day: {package}",
                body,
                lang,
                doc_id,
            )
        return Page(site, f"https://{host}/{lang}/packages/{package}/", package, body, lang, doc_id)
    package = stem.rsplit("/", 1)[-1]  # a changelog
    return Page(
        site,
        f"https://{host}/releases/{package}/{part}",
        f"What changed in {package}",
        f'<pre class="changelog">{html.escape(text)}</pre>',
        "en",
        doc_id,
    )


def choose_documents(records: list[dict]) -> dict[str, list[dict]]:
    """Each site's documents, drawn with a fixed seed from the sample corpus."""
    pools = {
        "docs": [r for r in records if r["source"] == "python-docs"],
        "man": [r for r in records if r["source"] == "manpages" and r["lang"] == "en"],
        "blog": [r for r in records if r["source"] == "package-descriptions" and r["lang"] == "en"],
        "intl": [r for r in records if r["source"] in ("manpages", "package-descriptions") and r["lang"] != "en"],
    }
    chosen = {site: seeded("web", site).sample(pool, PAGES[site]) for site, pool in pools.items()}
    changelogs = [r for r in records if r["source"] == "debian-changelog"]
    chosen["blog"] += seeded("web", "changelogs").sample(changelogs, 12)
    return chosen


# ---- the site around an article ----------------------------------------------------------------


def comments_html(rng, count: int) -> str:
    if not count:
        return '<section id="comments"><h3>Comments</h3><p>No comments yet. Be the first!</p></section>'
    items = "".join(
        f'<li class="comment"><span class="author">{html.escape(rng.choice(COMMENTERS))}</span> '
        f"<time>{rng.randint(1, 28)} April 2024</time><p>{html.escape(rng.choice(COMMENTS))}</p>"
        f'<a class="reply" href="#reply">Reply</a></li>'
        for _ in range(count)
    )
    return (
        f'<section id="comments"><h3>{count} comment{"s" * (count > 1)}</h3><ol>{items}</ol>'
        '<form class="reply-form"><textarea placeholder="Leave a comment"></textarea>'
        "<button>Post comment</button></form></section>"
    )


def links(pages: list[Page]) -> str:
    return "".join(f'<li><a href="{p.url}">{html.escape(p.title)}</a></li>' for p in pages)


def render(page: Page, siblings: list[Page], rng, comments: int) -> bytes:
    """The whole HTML document of `page` on its site: chrome, article, related posts, comments."""
    site = SITES[page.site]
    nav = "".join(f'<li><a href="/{item.lower().replace(" ", "-")}/">{item}</a></li>' for item in site.nav)
    related = rng.sample(siblings, min(4, len(siblings)))
    popular = rng.sample(siblings, min(6, len(siblings)))
    tags = ", ".join(f'<a href="/tag/{t}/">{t}</a>' for t in rng.sample(TAGS, 3))
    document = f"""<!DOCTYPE html>
<html lang="{page.lang}">
<head>
<meta charset="{page.charset}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(page.title)} | {site.name}</title>
<link rel="canonical" href="{page.url}">
<link rel="stylesheet" href="/static/site.css">
<style>.cookie-banner{{position:fixed;bottom:0;width:100%}} .sidebar{{float:right;width:30%}}</style>
<script async src="/static/stats.js"></script>
<script>window._stats = window._stats || []; _stats.push(["pageview", location.pathname]);</script>
</head>
<body>
<div class="cookie-banner" role="dialog"><p>{site.cookie}</p>
<button class="accept">Accept</button> <button class="settings">Cookie settings</button></div>
<header class="site-header"><a class="logo" href="/"><img src="/static/logo.png" alt="{site.name}"></a>
<span class="tagline">{site.tagline}</span>
<nav><ul>{nav}</ul></nav>
<form class="search" action="/search"><input name="q" placeholder="Search {site.name}"><button>Go</button></form>
</header>
<div class="breadcrumbs"><a href="/">Home</a> &rsaquo; {html.escape(page.title)}</div>
<main>
<article>
<h1>{html.escape(page.title)}</h1>
<p class="byline">Posted on {rng.randint(1, 28)} March 2024 · {rng.randint(2, 15)} min read · Tags: {tags}</p>
{page.body}
<div class="share">Share this: <a href="#">Mastodon</a> <a href="#">E-mail</a> <a href="#">Print</a></div>
</article>
<section class="related"><h3>Related posts</h3><ul>{links(related)}</ul></section>
{comments_html(rng, comments)}
</main>
<aside class="sidebar">
<section><h3>Popular</h3><ul>{links(popular)}</ul></section>
<section class="newsletter"><h3>Newsletter</h3><p>Get new posts by e-mail, once a week. No spam.</p>
<form><input type="email" placeholder="you@example.com"><button>Subscribe</button></form></section>
</aside>
<footer><p>© 2018-2024 {site.name}. {site.licence}</p>
<p><a href="/privacy/">Privacy</a> · <a href="/imprint/">Imprint</a> · <a href="/feed.xml">RSS</a></p></footer>
<!-- page built in 0.0{rng.randint(10, 99)} s -->
</body>
</html>
"""
    return document.encode(page.charset, "xmlcharrefreplace")


def home_page(site: str, pages: list[Page]) -> Page:
    items = "".join(
        f'<div class="teaser"><h2><a href="{p.url}">{html.escape(p.title)}</a></h2>'
        f'<a class="more" href="{p.url}">Read more &raquo;</a></div>'
        for p in pages[:12]
    )
    return Page(
        site,
        f"https://{SITES[site].host}/",
        f"{SITES[site].name}: {SITES[site].tagline}",
        f'<div class="teasers">{items}</div>',
        "en",
        "",
    )


def url_variant(url: str, kind: int) -> str:
    """One of the URLs a crawler finds for the same page."""
    if kind == 0:
        return url + "?utm_source=newsletter&utm_medium=email&utm_campaign=may2024"
    if kind == 1:
        return url.rstrip("/") if url.endswith("/") else url + "/"
    if kind == 2:
        return url.replace("https://", "http://", 1)
    if kind == 3:
        return url + "#comments"
    return url + "?utm_source=mastodon&ref=share#top"


# ---- files that are not HTML ------------------------------------------------------------------


def png(width: int, height: int, rgb: tuple[int, int, int]) -> bytes:
    """A small PNG: a striped logo in one colour."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = b"".join(b"\x00" + bytes(rgb if (y // 4) % 2 else (255, 255, 255)) * width for y in range(height))
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(rows, 9))
        + chunk(b"IEND", b"")
    )


def pdf(title: str) -> bytes:
    """A one-page PDF with the title as its only text (objects, cross-reference table, trailer)."""
    escaped = title.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)").encode("latin-1", "replace")
    stream = b"BT /F1 18 Tf 72 720 Td (" + escaped + b") Tj ET"
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
        b"/Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out, offsets = bytearray(b"%PDF-1.4\n"), []
    for number, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    return bytes(out)


CSS = b"body{font-family:sans-serif;margin:0 auto;max-width:72em}nav li{display:inline;margin:0 .5em}\n"
ROBOTS = b"User-agent: *\nDisallow: /search\nDisallow: /admin/\nSitemap: /sitemap.xml\n"


# ---- writing WARC ------------------------------------------------------------------------------


class Crawl:
    """One WARC file being written: ids and dates derived from its name and the record's number."""

    def __init__(self, name: str, start: datetime) -> None:
        self.name, self.clock, self.buffer, self.count = name, start, BytesIO(), 0
        self.writer = WARCWriter(self.buffer, gzip=True, warc_version="1.1")
        self.fetched: dict[str, tuple[str, str, str, int]] = {}  # url -> payload digest, date, type, length
        info = (
            f"software: scripts/build_web_sample.py (warcio)\r\nformat: WARC File Format 1.1\r\n"
            f"robots: obey\r\nhttp-header-user-agent: {USER_AGENT}\r\n"
        ).encode()
        self.writer.write_record(
            self.writer.create_warc_record(
                "",
                "warcinfo",
                payload=BytesIO(info),
                length=len(info),
                warc_headers_dict=self.headers() | {"WARC-Filename": name},
            )
        )

    def headers(self) -> dict[str, str]:
        self.count += 1
        self.clock += timedelta(seconds=7)
        return {
            "WARC-Record-ID": f"<urn:uuid:{uuid.uuid5(RECORD_IDS, f'{self.name}/{self.count}')}>",
            "WARC-Date": self.clock.strftime("%Y-%m-%dT%H:%M:%SZ"),
        }

    def http(self, status: str, site: Site, fields: list[tuple[str, str]]) -> StatusAndHeaders:
        return StatusAndHeaders(
            status,
            [("Date", format_datetime(self.clock, usegmt=True)), ("Server", site.server), *fields],
            protocol="HTTP/1.1",
        )

    def request(self, url: str, site: Site) -> ArcWarcRecord:
        parts = urlsplit(url)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")  # a fragment is never sent
        headers = StatusAndHeaders(
            f"GET {target} HTTP/1.1",
            [("Host", site.host), ("User-Agent", USER_AGENT), ("Accept", "text/html,*/*;q=0.8")],
            is_http_request=True,
        )
        return self.writer.create_warc_record(url, "request", http_headers=headers, warc_headers_dict=self.headers())

    def response(
        self, url: str, site: Site, status: str, content_type: str, body: bytes, extra: tuple[tuple[str, str], ...] = ()
    ) -> None:
        warc = self.headers()
        http = self.http(status, site, [("Content-Type", content_type), ("Content-Length", str(len(body))), *extra])
        record = self.writer.create_warc_record(
            url, "response", payload=BytesIO(body), length=len(body), http_headers=http, warc_headers_dict=warc
        )
        self.fetched[url] = (
            record.rec_headers.get_header("WARC-Payload-Digest"),
            warc["WARC-Date"],
            content_type,
            len(body),
        )
        self.writer.write_request_response_pair(self.request(url, site), record)

    def revisit(self, url: str, site: Site, earlier: tuple[str, str, str, int]) -> None:
        """The page came back unchanged (the same payload digest): a revisit record, headers only."""
        digest, date, content_type, length = earlier
        http = self.http("200 OK", site, [("Content-Type", content_type), ("Content-Length", str(length))])
        record = self.writer.create_revisit_record(
            url, digest, url, date, http_headers=http, warc_headers_dict=self.headers()
        )
        self.writer.write_request_response_pair(self.request(url, site), record)


def content_type(page: Page) -> str:
    return f"text/html; charset={page.charset}"


def crawl_site(crawl: Crawl, site_key: str, pages: list[Page]) -> None:
    """A site's first crawl: robots.txt, home page, static files, every article; then ten articles
    again under another URL (half the same bytes, half rendered anew), a printable PDF, the http
    home page's redirect and a broken link's 404."""
    site, rng = SITES[site_key], seeded("web", "first", site_key)
    host = f"https://{site.host}"
    crawl.response(f"{host}/robots.txt", site, "200 OK", "text/plain", ROBOTS)
    home = home_page(site_key, pages)
    crawl.response(
        home.url,
        site,
        "200 OK",
        content_type(home),
        render(home, pages, rng, 0),
        (("Set-Cookie", "consent=pending; Path=/; SameSite=Lax"),),
    )
    crawl.response(f"{host}/static/site.css", site, "200 OK", "text/css", CSS)
    crawl.response(
        f"{host}/static/logo.png",
        site,
        "200 OK",
        "image/png",
        png(48, 24, tuple(rng.randrange(40, 200) for _ in range(3))),
    )
    bodies = {}
    for page in pages:
        bodies[page.url] = render(page, [p for p in pages if p is not page], rng, rng.choice((0, 0, 1, 2, 3)))
        crawl.response(
            page.url,
            site,
            "200 OK",
            content_type(page),
            bodies[page.url],
            (("Last-Modified", "Mon, 04 Mar 2024 10:00:00 GMT"),),
        )
    for kind, page in enumerate(rng.sample(pages, 10)):
        again = bodies[page.url] if kind % 2 else render(page, pages, rng, 1)
        crawl.response(url_variant(page.url, kind % 5), site, "200 OK", content_type(page), again)
    printable = rng.choice(pages)
    path = urlsplit(printable.url).path.rstrip("/").removesuffix(".html")
    crawl.response(f"{host}/print{path}.pdf", site, "200 OK", "application/pdf", pdf(printable.title))
    crawl.response(
        f"http://{site.host}/",
        site,
        "301 Moved Permanently",
        "text/html",
        b"<html><body>Moved</body></html>",
        (("Location", f"{host}/"),),
    )
    crawl.response(
        f"{host}/old-page/",
        site,
        "404 Not Found",
        "text/html",
        b"<!DOCTYPE html><html><head><title>404 Not Found</title></head><body><h1>Not Found</h1>"
        b"<p>The requested URL was not found on this server.</p></body></html>",
    )


def recrawl_site(crawl: Crawl, site_key: str, pages: list[Page], earlier: dict[str, tuple[str, str, str, int]]) -> None:
    """A month later: a new home page; of 16 articles fetched again, about one in four gained a
    comment (a new response), the rest came back unchanged (revisits), as did the logo."""
    site, rng = SITES[site_key], seeded("web", "second", site_key)
    home = home_page(site_key, pages[::-1])
    crawl.response(home.url, site, "200 OK", content_type(home), render(home, pages, rng, 0))
    for page in rng.sample(pages, 16):
        if rng.random() < 0.25:
            crawl.response(page.url, site, "200 OK", content_type(page), render(page, pages, rng, 2))
        else:
            crawl.revisit(page.url, site, earlier[page.url])
    logo = f"https://{site.host}/static/logo.png"
    crawl.revisit(logo, site, earlier[logo])


def latin1_page(pages: list[Page]) -> Page:
    """The first article in a Western European language whose text ISO-8859-1 holds, not all ASCII."""
    for page in pages:
        if page.lang in ("fr", "de", "es", "it", "pt", "nl", "sv") and not page.body.isascii():
            try:
                page.body.encode("latin-1")
            except UnicodeEncodeError:
                continue
            return page
    raise SystemExit("no article of the sample fits ISO-8859-1")


def build() -> dict[str, Counter]:
    """Write the three WARC files; returns each one's records by type, read back."""
    chosen = choose_documents(read_sample())
    pages = {site: [article(site, doc) for doc in docs] for site, docs in chosen.items()}
    latin1_page(pages["intl"]).charset = "ISO-8859-1"
    crawls = []
    for number, sites in enumerate((("docs", "man"), ("blog", "intl"))):
        crawls.append(Crawl(f"crawl-2024-05-{number:02d}.warc.gz", FIRST_CRAWL + timedelta(hours=number)))
        for site_key in sites:
            crawl_site(crawls[-1], site_key, pages[site_key])
    earlier = {url: fetched for crawl in crawls for url, fetched in crawl.fetched.items()}
    crawls.append(Crawl("crawl-2024-06-00.warc.gz", SECOND_CRAWL))
    for site_key in SITES:
        recrawl_site(crawls[-1], site_key, pages[site_key], earlier)
    OUT.mkdir(parents=True, exist_ok=True)
    for crawl in crawls:
        (OUT / crawl.name).write_bytes(crawl.buffer.getvalue())
    return {crawl.name: count_records(OUT / crawl.name) for crawl in crawls}


def count_records(path: Path) -> Counter:
    """Records by type (responses also by content type), read back with warcio."""
    counts: Counter = Counter()
    with open(path, "rb") as stream:
        for record in ArchiveIterator(stream):
            counts[record.rec_type] += 1
            if record.rec_type == "response":
                counts[record.http_headers.get_header("Content-Type").split(";")[0]] += 1
    return counts


def main() -> None:
    for name, counts in build().items():
        size = (OUT / name).stat().st_size
        print(f"{name}: {size:,} bytes, " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))


if __name__ == "__main__":
    main()
