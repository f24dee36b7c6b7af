"""Build the sample corpus in data/sample/ from pinned Debian bookworm packages.

`make run` needs a corpus that is small enough for a 2-core machine yet real enough to exercise
every data-prep stage: mostly English prose and code, a dozen other languages, natural exact and
near duplicates (aliased man pages, shared changelogs and licence texts, runs of similar package
descriptions, one page as HTML and as reStructuredText) and some personal data. Every input is a
pinned .deb fetched with `apt-get download` through a private apt state (the system's apt lists are
never touched) and unpacked with `dpkg-deb -x`; nothing is installed. Real e-mail addresses are
pseudonymized before anything is written, and a few synthetic PII strings are planted so that
the PII stage has work. Inputs are sorted and every choice is seeded, so two builds with the same
packages, index files and tools give byte-identical files. data/sample/SOURCES.md lists the
sources and their licences.

Run: .venv/bin/python scripts/build_sample_corpus.py [--work-dir DIR]
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

import zstandard

SEED = "crucible-sample-v1"
MIRROR = "http://deb.debian.org/debian"
SUITE = "bookworm"
REPO_ROOT = Path(__file__).resolve().parents[1]

# Exact versions from the bookworm suite; a point release that replaces one makes the download
# fail loudly, and the table (and SOURCES.md) must then be updated on purpose.
MANPAGE_PACKAGES = {
    "manpages": "6.03-2",
    "manpages-dev": "6.03-2",
    "manpages-cs": "4.18.1-1",
    "manpages-de": "4.18.1-1",
    "manpages-es": "4.18.1-1",
    "manpages-fr": "4.18.1-1",
    "manpages-it": "4.18.1-1",
    "manpages-ja": "0.5.0.0.20221215+dfsg-1",
    "manpages-nl": "4.18.1-1",
    "manpages-pl": "1:4.18.1-1",
    "manpages-pt-br": "4.18.1-1",
    "manpages-ru": "4.18.1-1",
    "manpages-sv": "4.18.1-1",
    "manpages-uk": "4.18.1-1",
    "manpages-zh": "1.6.4.0-1",
}
PYTHON_DOC_PACKAGE = ("python3.11-doc", "3.11.2-6+deb12u8")
# Everyday tools, taken only for their changelog.Debian.gz and copyright files.
TOOL_PACKAGES = {
    "bash": "5.2.15-2+b13",
    "bzip2": "1.0.8-5+b1",
    "coreutils": "9.1-1",
    "cron": "3.0pl1-162",
    "curl": "7.88.1-10+deb12u15",
    "dash": "0.5.12-2",
    "diffutils": "1:3.8-4",
    "file": "1:5.44-3",
    "findutils": "4.9.0-4",
    "grep": "3.8-5",
    "groff-base": "1.22.4-10",
    "gzip": "1.12-1",
    "hostname": "3.23+nmu1",
    "htop": "3.2.2-2",
    "iproute2": "6.1.0-3",
    "jq": "1.6-2.1+deb12u2",
    "less": "590-2.1~deb12u2",
    "logrotate": "3.21.0-1",
    "lsof": "4.95.0-1",
    "make": "4.3-4.1",
    "man-db": "2.11.2-2",
    "nano": "7.2-1+deb12u1",
    "netbase": "6.4",
    "openssh-client": "1:9.2p1-2+deb12u10",
    "openssl": "3.0.20-1~deb12u2",
    "patch": "2.7.6-7",
    "procps": "2:4.0.2-3",
    "psmisc": "23.6-1",
    "python3-requests": "2.28.1+dfsg-1",
    "python3-yaml": "6.0-3+b2",
    "rsync": "3.2.7-1+deb12u6",
    "sed": "4.9-1+deb12u1",
    "sqlite3": "3.40.1-2+deb12u2",
    "sudo": "1.9.13p3-1+deb12u4",
    "tar": "1.34+dfsg-1.2+deb12u1",
    "tmux": "3.3a-3",
    "wget": "1.21.3-1+deb12u1",
    "xz-utils": "5.4.1-1+deb12u1",
    "zstd": "1.5.4+dfsg2-5",
}

# (lang, package, man directory inside the package, UTF-8 byte budget)
MAN_SOURCES = [
    ("en", "manpages", "usr/share/man", 1_000_000),
    ("en", "manpages-dev", "usr/share/man", 1_000_000),
    ("cs", "manpages-cs", "usr/share/man/cs", 200_000),
    ("de", "manpages-de", "usr/share/man/de", 200_000),
    ("es", "manpages-es", "usr/share/man/es", 200_000),
    ("fr", "manpages-fr", "usr/share/man/fr", 200_000),
    ("it", "manpages-it", "usr/share/man/it", 200_000),
    ("ja", "manpages-ja", "usr/share/man/ja", 200_000),
    ("nl", "manpages-nl", "usr/share/man/nl", 200_000),
    ("pl", "manpages-pl", "usr/share/man/pl", 200_000),
    ("pt", "manpages-pt-br", "usr/share/man/pt_BR", 200_000),
    ("ru", "manpages-ru", "usr/share/man/ru", 200_000),
    ("sv", "manpages-sv", "usr/share/man/sv", 200_000),
    ("uk", "manpages-uk", "usr/share/man/uk", 200_000),
    ("zh", "manpages-zh", "usr/share/man/zh_CN", 200_000),
]
MAX_MAN_PAGE_BYTES = 40_000  # one huge page (bash, systemd) would eat a language's budget
MAN_ALIASES_PER_PACKAGE = {"en": 8, "other": 2}  # alias pages render to exact duplicates

# DDTP language code in apt -> ISO 639-1 code in the corpus, and UTF-8 byte budget.
DESCRIPTION_LANGS = {
    "en": ("en", 300_000),
    "cs": ("cs", 60_000),
    "de": ("de", 60_000),
    "es": ("es", 60_000),
    "fr": ("fr", 60_000),
    "it": ("it", 60_000),
    "ja": ("ja", 60_000),
    "ko": ("ko", 200_000),
    "nl": ("nl", 60_000),
    "pl": ("pl", 60_000),
    "pt_BR": ("pt", 60_000),
    "ru": ("ru", 60_000),
    "sv": ("sv", 60_000),
    "uk": ("uk", 60_000),
    "zh_CN": ("zh", 60_000),
}
DESCRIPTION_RUN = 8  # consecutive packages (libfoo1, libfoo-dev, ...) give near duplicates

PYTHON_DOC_ROOT = "usr/share/doc/python3.11/html"
PYTHON_DOC_ALWAYS = ("tutorial", "howto", "faq", "reference", "using", "extending", "glossary.html")
PYTHON_DOC_SAMPLED = ("library",)
PYTHON_DOC_BUDGET = 4_000_000
PYTHON_RST_PAGES = 24  # pages also shipped as their .rst source: near duplicates of the HTML
PYTHON_RST_MAX_CHARS = 40_000

CHANGELOG_MIN_CHARS = 6_000  # whole entries, newest first, until at least this much
COPYRIGHT_MAX_CHARS = 16_000

MAX_DOC_CHARS = 8_000
MIN_DOC_CHARS = 1_000
PII_FRACTION = 0.02
SHARDS = ("corpus-00.jsonl.zst", "corpus-01.jsonl.gz", "corpus-02.jsonl.zst", "corpus-03.jsonl.gz")

# Synthetic PII only: the 555-01xx fiction range, the standard test card, the IBAN from the
# IBAN registry's example, AWS's documentation key pair, an RFC 1918 and an RFC 5737 address.
SYNTHETIC_PII = (
    "For help with the installation, call our support line at +1 212-555-0134 or (312) 555-0187.",
    "Test payment card: 4111 1111 1111 1111, expiry 12/30, CVV 123.",
    "Refunds are paid by bank transfer to IBAN GB82 WEST 1234 5698 7654 32.",
    "export AWS_ACCESS_KEY_ID=AKIAIOSFODNN7EXAMPLE\n"
    "export AWS_SECRET_ACCESS_KEY=wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
    "The build host answers on 10.20.30.40 and the public mirror on 203.0.113.25.",
    "Send questions to Jane Roe <jane.roe@example.com>, phone 555-0123.",
)

# An address as written in the sources: plain, obfuscated as `a (at) b (dot) org` or `<a at b.org>`,
# or broken across lines by groff after the `@` or after a hyphen.
_LOCAL = r"(?:-\n[ \t]*|[A-Za-z0-9._%+-])+"
_LABEL = r"(?:-\n[ \t]*|[A-Za-z0-9-])+"
_AT = r"(?:@(?:\n[ \t]*)?|\s?[\[(]at[\])]\s?)"
_DOT = r"(?:\.|\s?[\[(]dot[\])]\s?)"
_WORD_DOT = r"(?:\.|\s+dot\s+)"
_TLD = r"[A-Za-z]{2,}(?![A-Za-z0-9])"
EMAIL = re.compile(
    rf"(?<![A-Za-z0-9._%+-]){_LOCAL}{_AT}{_LABEL}(?:{_DOT}{_LABEL})*{_DOT}{_TLD}"
    rf"|(?<=[<⟨]){_LOCAL}\s+at\s+{_LABEL}(?:{_WORD_DOT}{_LABEL})*{_WORD_DOT}{_TLD}(?=[>⟩])"
)
RESERVED_EMAIL_DOMAIN = re.compile(
    r"(?:^|\.)(?:example\.(?:com|org|net)|[a-z0-9-]+\.(?:example|invalid|test|localhost))$"
)


@dataclass
class Doc:
    id: str
    text: str
    source: str
    lang: str


# --- fetching ---------------------------------------------------------------------------------


class PrivateApt:
    """apt with its own sources, lists and cache under `root`: no root rights, no system changes."""

    def __init__(self, root: Path, languages: Iterable[str]) -> None:
        self.root = root
        for sub in ("lists/partial", "cache/archives/partial", "sources.list.d", "debs"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        keyring = "/usr/share/keyrings/debian-archive-keyring.gpg"
        (root / "sources.list").write_text(f"deb [signed-by={keyring}] {MIRROR} {SUITE} main\n")
        self.options = [
            f"-o=Dir::State::Lists={root / 'lists'}",
            f"-o=Dir::Cache={root / 'cache'}",
            f"-o=Dir::Etc::SourceList={root / 'sources.list'}",
            f"-o=Dir::Etc::SourceParts={root / 'sources.list.d'}",
            f"-o=Acquire::Languages={','.join(languages)}",
            "-o=APT::Sandbox::User=root",  # the _apt user cannot write into a private temp dir
        ]

    def update(self) -> None:
        subprocess.run(["apt-get", "-qq", *self.options, "update"], check=True)

    def download(self, pins: dict[str, str]) -> dict[str, Path]:
        """Fetch each package at its pinned version; return package name -> .deb path."""
        debs = self.root / "debs"
        wanted = [f"{name}={version}" for name, version in sorted(pins.items())]
        subprocess.run(["apt-get", "-qq", *self.options, "download", *wanted], cwd=debs, check=True)
        found: dict[str, Path] = {}
        for deb in sorted(debs.glob("*.deb")):
            name, version = deb_field(deb, "Package"), deb_field(deb, "Version")
            if pins.get(name) == version:
                found[name] = deb
        missing = sorted(set(pins) - set(found))
        if missing:
            sys.exit(f"apt-get download did not deliver {missing}")
        return found

    def translation(self, language: str) -> tuple[str, str]:
        """Return the text of the Translation-<language> index and its SHA-256."""
        listing = subprocess.run(
            [
                "apt-get",
                *self.options,
                "indextargets",
                "--format",
                "$(LANGUAGE) $(FILENAME)",
                "Identifier: Translations",
            ],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        paths = dict(line.split(" ", 1) for line in listing.splitlines() if line)
        if language not in paths:
            sys.exit(f"no Translation-{language} index was downloaded (have: {sorted(paths)})")
        raw = subprocess.run(
            ["/usr/lib/apt/apt-helper", "cat-file", paths[language]],
            check=True,
            capture_output=True,
        ).stdout
        return raw.decode("utf-8"), hashlib.sha256(raw).hexdigest()


def deb_field(deb: Path, field: str) -> str:
    return subprocess.run(
        ["dpkg-deb", "--field", str(deb), field], check=True, capture_output=True, text=True
    ).stdout.strip()


def unpack(deb: Path, dest: Path) -> Path:
    """Extract a .deb's files (not its maintainer scripts) without installing it."""
    if not dest.exists():
        partial = dest.parent / f"{dest.name}.partial"
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        subprocess.run(["dpkg-deb", "-x", str(deb), str(partial)], check=True)
        partial.rename(dest)
    return dest


# --- text helpers -----------------------------------------------------------------------------


def clean_lines(text: str) -> str:
    """Drop trailing blanks and runs of empty lines, which renderers leave behind."""
    lines = [line.rstrip() for line in text.replace("\r\n", "\n").split("\n")]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip("\n")


def _paragraphs(text: str, max_chars: int) -> Iterator[str]:
    """Paragraphs of at most max_chars: long ones are cut at lines, over-long lines anywhere."""
    for paragraph in re.split(r"\n\s*\n", text):
        if not paragraph.strip():
            continue
        if len(paragraph) <= max_chars:
            yield paragraph
            continue
        block = ""
        for line in paragraph.split("\n"):
            while len(line) > max_chars:
                if block:
                    yield block
                    block = ""
                yield line[:max_chars]
                line = line[max_chars:]
            if block and len(block) + 1 + len(line) > max_chars:
                yield block
                block = ""
            block = f"{block}\n{line}" if block else line
        if block:
            yield block


def chunk(text: str) -> list[str]:
    """Cut a text at paragraph boundaries into documents of about MIN..MAX_DOC_CHARS."""
    chunks: list[str] = []
    current: list[str] = []
    size = 0
    for paragraph in _paragraphs(text, MAX_DOC_CHARS):
        if current and size >= MIN_DOC_CHARS and size + len(paragraph) > MAX_DOC_CHARS:
            chunks.append("\n\n".join(current))
            current, size = [], 0
        current.append(paragraph)
        size += len(paragraph) + 2
    if current:
        tail = "\n\n".join(current)
        if chunks and len(tail) < MIN_DOC_CHARS // 2:
            chunks[-1] = f"{chunks[-1]}\n\n{tail}"
        else:
            chunks.append(tail)
    return [c.strip("\n") for c in chunks]


def docs_from(doc_id: str, text: str, source: str, lang: str) -> list[Doc]:
    return [Doc(f"{doc_id}#{i}", part, source, lang) for i, part in enumerate(chunk(text))]


def utf8_len(text: str) -> int:
    return len(text.encode("utf-8"))


def read_text(path: Path) -> str:
    raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    return raw.decode("utf-8", errors="replace")


def seeded(*parts: str) -> random.Random:
    return random.Random(":".join((SEED, *parts)))


# --- Python documentation ---------------------------------------------------------------------


class SphinxBody(HTMLParser):
    """Collect the text of a Sphinx page's main body: no navigation, no pilcrow anchors."""

    BLOCKS = {
        "p",
        "div",
        "pre",
        "li",
        "dt",
        "dd",
        "h1",
        "h2",
        "h3",
        "h4",
        "h5",
        "h6",
        "table",
        "tr",
        "blockquote",
        "section",
        "dl",
        "ul",
        "ol",
        "br",
        "figure",
        "caption",
    }
    HIDDEN = {"script", "style"}
    VOID = {"area", "br", "col", "hr", "img", "input", "link", "meta", "source", "wbr"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.div_depth = 0  # > 0 while inside <div role="main">
        self.hidden = 0
        self.pre = 0
        self.out: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        if not self.div_depth:
            self.div_depth = int(tag == "div" and attributes.get("role") == "main")
            return
        self.div_depth += tag == "div"
        if self.hidden or tag in self.HIDDEN or "headerlink" in (attributes.get("class") or ""):
            self.hidden += tag not in self.VOID
            return
        self.pre += tag == "pre"
        if tag in self.BLOCKS:
            self.out.append("\n\n")
        if tag == "li":
            self.out.append("- ")
        elif tag in ("td", "th"):
            self.out.append(" ")

    def handle_endtag(self, tag: str) -> None:
        if not self.div_depth:
            return
        self.div_depth -= tag == "div"
        if self.hidden:
            self.hidden -= 1
            return
        self.pre -= tag == "pre"
        if tag in self.BLOCKS:
            self.out.append("\n\n")

    def handle_data(self, data: str) -> None:
        if self.div_depth and not self.hidden:
            self.out.append(data if self.pre else re.sub(r"\s+", " ", data))


def html_to_text(html: str) -> str:
    parser = SphinxBody()
    parser.feed(html)
    parser.close()
    text = clean_lines("".join(parser.out))
    return re.sub(r"\n (?=\S)", "\n", text)  # a collapsed space left at the start of a line


def python_docs(root: Path) -> list[Doc]:
    """Whole tutorial, HOWTOs, FAQ and reference, plus seeded library pages up to the budget."""
    html = root / PYTHON_DOC_ROOT
    always: list[Path] = []
    for entry in PYTHON_DOC_ALWAYS:
        path = html / entry
        always += [path] if path.is_file() else sorted(path.rglob("*.html"))
    sampled = sorted(p for d in PYTHON_DOC_SAMPLED for p in (html / d).rglob("*.html"))
    seeded("python-docs").shuffle(sampled)
    docs: list[Doc] = []
    used = 0
    for path in always + sampled:
        if used >= PYTHON_DOC_BUDGET:
            break
        text = html_to_text(path.read_text(encoding="utf-8"))
        if not text:
            continue
        rel = path.relative_to(html).as_posix()
        docs += docs_from(f"python-docs/{rel}", text, "python-docs", "en")
        used += utf8_len(text)
    return docs


def python_doc_sources(root: Path, html_docs: list[Doc]) -> list[Doc]:
    """The reStructuredText source of some pages already taken as HTML: same words, new markup."""
    html = root / PYTHON_DOC_ROOT
    pages = sorted({d.id.split("/", 1)[1].split("#")[0] for d in html_docs})
    candidates = []
    for page in pages:
        source = html / "_sources" / (page.removesuffix(".html") + ".rst.txt")
        if source.is_file() and source.stat().st_size <= PYTHON_RST_MAX_CHARS:
            candidates.append(source)
    chosen = sorted(seeded("python-rst").sample(candidates, min(PYTHON_RST_PAGES, len(candidates))))
    docs: list[Doc] = []
    for source in chosen:
        rel = source.relative_to(html / "_sources").as_posix()
        text = clean_lines(source.read_text(encoding="utf-8"))
        docs += docs_from(f"python-docs-rst/{rel}", text, "python-docs-rst", "en")
    return docs


# --- man pages --------------------------------------------------------------------------------


def render_man(page: Path, man_root: Path) -> str:
    """Render one page to plain UTF-8 text at 80 columns, without hyphenation or justification.

    The path is given relative to the man root, which is also where `.so` links resolve: given an
    absolute path inside a man hierarchy, man-db 2.11 can hang on large pages. A hang aborts the
    build rather than silently changing which pages are taken.
    """
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C.UTF-8", "MANWIDTH": "80"}
    rendered = subprocess.run(
        ["man", "--nh", "--nj", "-l", page.relative_to(man_root).as_posix()],
        cwd=man_root,
        env=env,
        capture_output=True,
        check=False,
        timeout=120,
    ).stdout
    plain = subprocess.run(["col", "-b", "-x"], input=rendered, env=env, capture_output=True, check=True).stdout
    return clean_lines(plain.decode("utf-8", errors="replace"))


def so_target(page: Path, man_root: Path) -> Path | None:
    """The page an alias stands for: a symlink target, or the file named by a lone `.so` line."""
    if page.is_symlink():
        return (page.parent / os.readlink(page)).resolve()
    if page.stat().st_size > 512:
        return None
    lines = [line for line in read_text(page).splitlines() if line and not line.startswith('.\\"')]
    if len(lines) == 1 and lines[0].startswith(".so "):
        target = man_root / lines[0][4:].strip()
        for candidate in (target.with_name(target.name + ".gz"), target):
            if candidate.exists():
                return candidate.resolve()
    return None


def man_pages(lang: str, package: str, root: Path, man_dir: str, budget: int) -> list[Doc]:
    """A seeded sample of one package's pages up to `budget` bytes, plus a few aliases of them."""
    man_root = (root / man_dir).resolve()
    pages = sorted(p for p in man_root.glob("man*/*") if p.is_file() or p.is_symlink())
    aliases = {p: t for p in pages if (t := so_target(p, man_root)) is not None}
    originals = [p for p in pages if p not in aliases]
    seeded("man", package).shuffle(originals)
    texts: dict[Path, str] = {}
    used = 0
    with ThreadPoolExecutor(max_workers=2) as pool:
        for start in range(0, len(originals), 16):
            if used >= budget:
                break
            batch = originals[start : start + 16]
            for page, text in zip(batch, pool.map(lambda p: render_man(p, man_root), batch)):
                size = utf8_len(text)
                if used < budget and 0 < size <= MAX_MAN_PAGE_BYTES:
                    texts[page.resolve()] = text
                    used += size
    wanted = MAN_ALIASES_PER_PACKAGE["en" if lang == "en" else "other"]
    alias_pages = sorted(p for p, target in aliases.items() if target in texts)
    alias_pages = seeded("man-alias", package).sample(alias_pages, min(wanted, len(alias_pages)))

    def page_id(page: Path) -> str:
        return f"man/{package}/{page.relative_to(man_root).as_posix().removesuffix('.gz')}"

    docs: list[Doc] = []
    for page, text in sorted(texts.items()):
        docs += docs_from(page_id(page), text, "manpages", lang)
    for page in sorted(alias_pages):
        docs += docs_from(page_id(page), texts[aliases[page]], "manpages", lang)
    return docs


# --- Debian changelogs and copyright files ----------------------------------------------------


def doc_file(root: Path, package: str, name: str) -> Path | None:
    """A file from the package's own /usr/share/doc directory (absent when the dir is a link)."""
    path = root / "usr/share/doc" / package / name
    return path if path.is_file() and not path.is_symlink() else None


def changelog(package: str, root: Path) -> list[Doc]:
    """The newest whole entries of changelog.Debian.gz; maintainers sign them with e-mails."""
    path = doc_file(root, package, "changelog.Debian.gz")
    if path is None:
        return []
    entries = re.split(r"(?<=\n)(?=\S)", read_text(path))  # an entry starts at column 0
    excerpt = ""
    for entry in entries:
        if len(excerpt) >= CHANGELOG_MIN_CHARS:
            break
        excerpt += entry
    return docs_from(f"changelog/{package}", clean_lines(excerpt), "debian-changelog", "en")


def copyright_file(package: str, root: Path) -> list[Doc]:
    """The head of debian/copyright: holders with e-mails and licence texts shared by many."""
    path = doc_file(root, package, "copyright")
    if path is None:
        return []
    text = clean_lines(read_text(path))
    if len(text) > COPYRIGHT_MAX_CHARS:
        cut = text.rfind("\n\n", 0, COPYRIGHT_MAX_CHARS)
        text = text[: cut if cut > 0 else COPYRIGHT_MAX_CHARS]
    return docs_from(f"copyright/{package}", text, "debian-copyright", "en")


# --- package descriptions (DDTP) --------------------------------------------------------------


def parse_translations(index: str, apt_lang: str) -> list[tuple[str, str]]:
    """(package, description) pairs from a Translation-xx index, in index order."""
    field = f"Description-{apt_lang}:"
    entries = []
    seen = set()  # a package can be listed once per description version; keep the first
    for record in index.split("\n\n"):
        package, lines = "", []
        for line in record.splitlines():
            if line.startswith("Package:"):
                package = line.split(":", 1)[1].strip()
            elif line.startswith(field):
                lines.append(line[len(field) :].strip())
            elif lines and line.startswith(" "):
                lines.append("" if line.strip() == "." else line[1:])
        if package and len(lines) > 1 and package not in seen:
            seen.add(package)
            summary, body = lines[0], "\n".join(lines[1:])
            entries.append((package, f"{package}: {summary}\n\n{body.strip()}"))
    return entries


def package_descriptions(apt_lang: str, index: str) -> list[Doc]:
    """Seeded runs of consecutive descriptions; one document per package."""
    lang, budget = DESCRIPTION_LANGS[apt_lang]
    entries = parse_translations(index, apt_lang)
    runs = [entries[i : i + DESCRIPTION_RUN] for i in range(0, len(entries), DESCRIPTION_RUN)]
    seeded("ddtp", apt_lang).shuffle(runs)
    docs: list[Doc] = []
    used = 0
    for run in runs:
        if used >= budget:
            break
        for package, text in run:
            doc_id = f"ddtp/{lang}/{package}"
            docs += docs_from(doc_id, clean_lines(text), "package-descriptions", lang)
            used += utf8_len(text)
    return docs


# --- privacy ----------------------------------------------------------------------------------


def canonical_email(address: str) -> str:
    """`a (at) b (dot) org`, `a at b.org` and a line-broken `a@b-\n   c.org` as `a@b.org`."""
    address = re.sub(r"\s?[\[(]at[\])]\s?|\s+at\s+", "@", address)
    address = re.sub(r"\s?[\[(]dot[\])]\s?|\s+dot\s+", ".", address)
    return re.sub(r"\s+", "", address).lower()


def pseudonym(address: str) -> str:
    digest = hashlib.sha256(canonical_email(address).encode("utf-8")).hexdigest()[:8]
    return f"user-{digest}@example.org"


def is_reserved(address: str) -> bool:
    return bool(RESERVED_EMAIL_DOMAIN.search(canonical_email(address).rsplit("@", 1)[-1]))


def pseudonymize(text: str) -> str:
    """Replace every real e-mail address by a stable pseudonym; reserved example domains stay."""

    def replace(match: re.Match[str]) -> str:
        address = match.group(0)
        return address if is_reserved(address) else pseudonym(address)

    return EMAIL.sub(replace, text)


def real_emails(text: str) -> list[str]:
    return [m for m in EMAIL.findall(text) if not is_reserved(m)]


def plant_pii(docs: list[Doc]) -> int:
    """Insert one synthetic PII line at a paragraph break in a seeded ~2% of the documents."""
    rng = seeded("pii")
    chosen = rng.sample(range(len(docs)), round(len(docs) * PII_FRACTION))
    for n, index in enumerate(sorted(chosen)):
        paragraphs = docs[index].text.split("\n\n")
        paragraphs.insert(rng.randint(0, len(paragraphs)), SYNTHETIC_PII[n % len(SYNTHETIC_PII)])
        docs[index].text = "\n\n".join(paragraphs)
    return len(chosen)


# --- output -----------------------------------------------------------------------------------


def jsonl(docs: list[Doc]) -> bytes:
    records = ({"id": d.id, "text": d.text, "source": d.source, "lang": d.lang} for d in docs)
    lines = (json.dumps(record, ensure_ascii=False) for record in records)
    return ("\n".join(lines) + "\n").encode("utf-8")


def compress(name: str, payload: bytes) -> bytes:
    """gzip without timestamp or file name, zstd single-threaded: the bytes depend on input only."""
    if name.endswith(".gz"):
        buffer = io.BytesIO()
        with gzip.GzipFile(filename="", mode="wb", fileobj=buffer, compresslevel=9, mtime=0) as out:
            out.write(payload)
        return buffer.getvalue()
    return zstandard.ZstdCompressor(level=19).compress(payload)


def write_shards(docs: list[Doc], out_dir: Path) -> dict[str, int]:
    """Shuffle (seeded) so every shard mixes sources and duplicates land in different shards."""
    ordered = sorted(docs, key=lambda d: d.id)
    seeded("shards").shuffle(ordered)
    out_dir.mkdir(parents=True, exist_ok=True)
    sizes = {}
    per_shard = -(-len(ordered) // len(SHARDS))
    for n, name in enumerate(SHARDS):
        data = compress(name, jsonl(ordered[n * per_shard : (n + 1) * per_shard]))
        (out_dir / name).write_bytes(data)
        sizes[name] = len(data)
    return sizes


def check(docs: list[Doc]) -> None:
    """Refuse to write duplicate ids or any e-mail address that escaped pseudonymization."""
    ids = Counter(d.id for d in docs)
    clashes = [i for i, n in ids.items() if n > 1]
    if clashes:
        sys.exit(f"duplicate ids: {clashes[:5]}")
    leaks = [(d.id, e) for d in docs for e in real_emails(d.text)]
    if leaks:
        sys.exit(f"e-mail addresses left after pseudonymization: {leaks[:5]}")


def summarize(docs: list[Doc], sizes: dict[str, int], planted: int, facts: list[str]) -> None:
    def table(title: str, key: str) -> None:
        count, size = Counter(), Counter()
        for d in docs:
            count[getattr(d, key)] += 1
            size[getattr(d, key)] += utf8_len(d.text)
        total = sum(size.values())
        print(f"\n{title:<22}{'docs':>7}{'bytes':>12}{'share':>8}")
        for name, n in sorted(count.items(), key=lambda kv: -size[kv[0]]):
            print(f"{name:<22}{n:>7}{size[name]:>12,}{size[name] / total:>8.1%}")

    for fact in facts:
        print(fact)
    table("source", "source")
    table("lang", "lang")
    seen: Counter[str] = Counter(hashlib.sha256(d.text.encode()).hexdigest() for d in docs)
    repeats = sum(n - 1 for n in seen.values() if n > 1)
    text_bytes = sum(utf8_len(d.text) for d in docs)
    print(
        f"\ndocuments: {len(docs)}, text: {text_bytes:,} bytes, exact repeats: {repeats}, with planted PII: {planted}"
    )
    for name, size in sizes.items():
        print(f"{name}: {size:,} bytes")
    print(f"compressed total: {sum(sizes.values()):,} bytes")


# --- main -------------------------------------------------------------------------------------


def build(work: Path, out_dir: Path) -> None:
    for tool in ("apt-get", "dpkg-deb", "man", "col", "groff"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} is missing: apt-get install apt dpkg man-db groff-base bsdextrautils")
    apt = PrivateApt(work / "apt", DESCRIPTION_LANGS)
    apt.update()
    pins = {**MANPAGE_PACKAGES, **TOOL_PACKAGES, PYTHON_DOC_PACKAGE[0]: PYTHON_DOC_PACKAGE[1]}
    debs = apt.download(pins)
    roots = {name: unpack(deb, work / "unpacked" / name) for name, deb in sorted(debs.items())}
    facts = [f"package {name} {pins[name]}" for name in sorted(pins)]

    docs = python_docs(roots[PYTHON_DOC_PACKAGE[0]])
    docs += python_doc_sources(roots[PYTHON_DOC_PACKAGE[0]], docs)
    for lang, package, man_dir, budget in MAN_SOURCES:
        docs += man_pages(lang, package, roots[package], man_dir, budget)
    for package in sorted(roots):
        docs += changelog(package, roots[package]) + copyright_file(package, roots[package])
    for apt_lang in DESCRIPTION_LANGS:
        index, digest = apt.translation(apt_lang)
        facts.append(f"Translation-{apt_lang} sha256 {digest}")
        docs += package_descriptions(apt_lang, index)

    for doc in docs:
        doc.text = pseudonymize(doc.text)
    planted = plant_pii(docs)
    check(docs)
    sizes = write_shards(docs, out_dir)
    summarize(docs, sizes, planted, facts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--out", type=Path, default=REPO_ROOT / "data" / "sample", help="output folder (default: data/sample)"
    )
    parser.add_argument(
        "--work-dir",
        type=Path,
        help="keep downloads and unpacked packages here for the next build "
        "(default: a temporary folder that is removed)",
    )
    args = parser.parse_args()
    started = time.monotonic()
    if args.work_dir:
        build(args.work_dir.resolve(), args.out)
    else:
        with tempfile.TemporaryDirectory(prefix="crucible-sample-") as work:
            build(Path(work), args.out)
    print(f"built in {time.monotonic() - started:.0f} s")


if __name__ == "__main__":
    main()
