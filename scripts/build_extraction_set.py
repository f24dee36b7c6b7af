"""Build tests/data/extraction/: web pages of varied layouts whose main text and boilerplate are known.

The extract stage must keep a page's main text and drop its navigation, cookie banners, sidebars,
footers and comment threads; measuring that needs pages where each paragraph is labelled. Here
every page is written from a layout (blog, documentation, news, forum, product page, ...) around
main-text paragraphs taken from the Python documentation prose in tests/data/english.jsonl.zst,
with boilerplate written in this script. labels.jsonl lists, per page, its `main` paragraphs and its
`boilerplate` blocks (only text that is clearly one or the other: headings, bylines and dates are
left unlabelled). Every choice is seeded, so a rerun writes the same bytes. See tests/data/SOURCES.md.

Run: .venv/bin/python scripts/build_extraction_set.py
"""

from __future__ import annotations

import html
import io
import json
import random
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import zstandard

REPO = Path(__file__).resolve().parents[1]
SOURCE = REPO / "tests" / "data" / "english.jsonl.zst"
OUT = REPO / "tests" / "data" / "extraction"
SEED = "crucible-extraction-v1"
PROSE = re.compile(r"[A-Za-z ,.;'\u2019\u201c\u201d()-]")
TITLE = re.compile(r"[A-Z][A-Za-z0-9 ,'\u2019?-]{9,69}")


def prose_documents() -> list[tuple[str, list[str]]]:
    """(title, paragraphs) of each Python documentation page: prose paragraphs of 150-700 characters."""
    stream = zstandard.ZstdDecompressor().stream_reader(SOURCE.open("rb"))
    documents = []
    for line in io.TextIOWrapper(stream, encoding="utf-8"):
        record = json.loads(line)
        if record["source"] != "python-docs":
            continue
        blocks = [" ".join(b.split()) for b in record["text"].split("\n\n")]
        paragraphs = [
            b
            for b in blocks
            if 150 <= len(b) <= 700
            and not b.endswith(":")
            and ">>>" not in b
            and len(PROSE.findall(b)) >= 0.95 * len(b)
        ]
        title = next((b for b in blocks if TITLE.fullmatch(b)), None)
        if len(paragraphs) >= 6 and title is not None:
            documents.append((title, paragraphs))
    return documents


@dataclass
class Page:
    """A page being written: its HTML parts and its labels."""

    title: str
    lang: str = "en"
    head: list[str] = field(default_factory=list)
    body: list[str] = field(default_factory=list)
    main: list[str] = field(default_factory=list)
    boilerplate: list[str] = field(default_factory=list)

    def add(self, markup: str) -> None:
        self.body.append(markup)

    def text(self, tag: str, text: str, main: bool = False, boilerplate: bool = False, attrs: str = "") -> str:
        """`<tag attrs>text</tag>`, labelled as main text or boilerplate."""
        (self.main if main else self.boilerplate if boilerplate else []).append(text)
        return f"<{tag}{' ' + attrs if attrs else ''}>{html.escape(text, quote=False)}</{tag}>"

    def links(self, items: list[str], attrs: str = "") -> str:
        """A list of links, each item labelled as boilerplate."""
        rows = "".join(f'<li><a href="/{slug(item)}">{html.escape(item)}</a></li>' for item in items)
        self.boilerplate.extend(items)
        return f"<ul{' ' + attrs if attrs else ''}>{rows}</ul>"

    def html(self) -> str:
        return (
            f'<!DOCTYPE html>\n<html lang="{self.lang}">\n<head>\n<meta charset="utf-8">\n'
            f"<title>{html.escape(self.title)}</title>\n{''.join(self.head)}</head>\n<body>\n"
            + "\n".join(self.body)
            + "\n</body>\n</html>\n"
        )


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


SITE_NAV = [
    [
        "Getting started guides",
        "Library reference index",
        "Community forum archive",
        "Release notes and changelog",
        "Download the installer",
    ],
    [
        "Latest stories this week",
        "Opinion and analysis",
        "Science and technology desk",
        "Local weather forecast",
        "Puzzles and crosswords",
    ],
    [
        "Shop all garden tools",
        "Seasonal planting offers",
        "Gift cards and vouchers",
        "Track your order status",
        "Customer help centre",
    ],
    [
        "Recipes by season",
        "Baking for beginners",
        "Kitchen equipment reviews",
        "Meet our test cooks",
        "Weekly meal plans",
    ],
]
COOKIE_TEXT = (
    "We use cookies to remember your preferences and to measure how our pages are used. You can accept "
    "all cookies or choose which ones to allow in the settings."
)
COOKIE_BUTTONS = ["Accept all cookies", "Manage cookie settings"]
FOOTERS = [
    [
        "Copyright 2024 Northwind Reading Room. All rights reserved.",
        "Privacy policy and terms of use",
        "Contact the editorial team",
        "Accessibility statement for this site",
    ],
    [
        "Registered office: 12 Harbour Lane, Portsmouth. Company number 0451122.",
        "Careers at the Daily Lantern",
        "Advertise with us and reach our readers",
        "Corrections and clarifications policy",
    ],
    [
        "All prices include VAT. Delivery times are estimates only.",
        "Returns within thirty days of purchase",
        "Read our shipping information page",
        "Follow the garden shop on social media",
    ],
]
SIDEBAR_TITLES = [
    "Ten ways to speed up a slow build",
    "Why we moved our servers to the basement",
    "A beginner's guide to reading stack traces",
    "Notes from the spring developer meetup",
    "How to write release notes people read",
    "Choosing a licence for a small project",
    "Keeping a changelog that helps your users",
    "What the new parser means for plugins",
]
NEWSLETTER = "Subscribe to our weekly newsletter and get new articles in your inbox every Friday morning."
SHARE = ["Share this article by e-mail", "Print this page for later"]
COMMENTS = [
    "Thanks for writing this up, it finally made the idea click for me after years of confusion.",
    "I tried the second approach on our codebase and the tests ran noticeably faster afterwards.",
    "Could you do a follow-up post about error handling? That part always trips up my students.",
    "Bookmarked. This is the clearest explanation I have found so far, and I have read many.",
    "Small nitpick: the link in the third section points to an older version of the page.",
]
COMMENTERS = ["maria_k", "old_grey_coder", "tomasz", "lin.wei", "rafael-dev"]


def heading(page: Page, tag: str = "h1") -> str:
    return f"<{tag}>{html.escape(page.title)}</{tag}>"


def paragraphs(page: Page, texts: list[str], tag: str = "p") -> str:
    return "\n".join(page.text(tag, t, main=True) for t in texts)


def nav(page: Page, rng: random.Random, attrs: str = "") -> str:
    return f"<nav{' ' + attrs if attrs else ''}>{page.links(rng.choice(SITE_NAV))}</nav>"


def footer(page: Page, rng: random.Random) -> str:
    return "<footer>" + "".join(page.text("p", t, boilerplate=True) for t in rng.choice(FOOTERS)) + "</footer>"


def sidebar(page: Page, rng: random.Random) -> str:
    titles = rng.sample(SIDEBAR_TITLES, 4)
    return (
        f'<aside class="sidebar"><h3>Related articles</h3>{page.links(titles)}'
        f'{page.text("p", NEWSLETTER, boilerplate=True)}<form><input type="email"><button>Sign up</button></form>'
        "</aside>"
    )


def cookie_banner(page: Page) -> str:
    buttons = "".join(page.text("button", b, boilerplate=True) for b in COOKIE_BUTTONS)
    notice = page.text("p", COOKIE_TEXT, boilerplate=True)
    return f'<div id="cookie-consent" class="cookie-banner" role="dialog">{notice}{buttons}</div>'


def comments(page: Page, rng: random.Random, count: int = 3) -> str:
    picked = rng.sample(range(len(COMMENTS)), count)
    items = "".join(
        f'<li class="comment"><div class="comment-author">{COMMENTERS[i]}</div>'
        f'<div class="comment-body">{page.text("p", COMMENTS[i], boilerplate=True)}</div>'
        f'<a class="reply" href="#">Reply</a></li>'
        for i in picked
    )
    return (
        f'<section id="comments" class="comments"><h2>{count} comments</h2>'
        f'<ol class="comment-list">{items}</ol></section>'
    )


# --- layouts: each writes a page around its main paragraphs ---------------------------------------


def blog(page: Page, main: list[str], rng: random.Random) -> None:
    page.add(f'<header><div class="logo">Northwind Reading Room</div>{nav(page, rng)}</header>')
    page.add(
        f'<main><article class="post">{heading(page)}<p class="byline">Posted on 3 March 2024</p>'
        f"{paragraphs(page, main)}</article>{comments(page, rng)}</main>"
    )
    page.add(sidebar(page, rng))
    page.add(footer(page, rng))


def blog_with_cookies(page: Page, main: list[str], rng: random.Random) -> None:
    page.add(cookie_banner(page))
    blog(page, main, rng)


def cookie_modal_after_footer(page: Page, main: list[str], rng: random.Random) -> None:
    page.add(f"<header>{nav(page, rng)}</header>")
    page.add(f'<div class="content"><h1>{html.escape(page.title)}</h1>{paragraphs(page, main)}</div>')
    page.add(footer(page, rng))
    page.add(cookie_banner(page))


def docs(page: Page, main: list[str], rng: random.Random) -> None:
    toc = [
        "Installing and upgrading",
        "Virtual environments explained",
        "Working with the standard library",
        "Packaging your own modules",
        "Frequently asked questions",
        "Glossary of terms used here",
    ]
    page.add(f'<div class="topbar">{nav(page, rng)}</div>')
    page.add(f'<div class="sphinxsidebar" role="navigation"><h3>Table of contents</h3>{page.links(toc)}</div>')
    crumbs = page.text(
        "div", "Documentation \u203a Library guide \u203a This topic", boilerplate=True, attrs='class="breadcrumbs"'
    )
    middle = len(main) // 2
    body = (
        f'{crumbs}<div class="body" role="main"><section>{heading(page)}{paragraphs(page, main[:middle])}'
        f"</section><section><h2>Details</h2>{paragraphs(page, main[middle:])}</section></div>"
    )
    prev_next = page.text(
        "a", "Previous topic: Installing packages safely", boilerplate=True, attrs='href="/prev"'
    ) + page.text("a", "Next topic: Working with virtual environments", boilerplate=True, attrs='href="/next"')
    edit = page.text("a", "Edit this page on the project repository", boilerplate=True, attrs='href="/edit"')
    page.add(f'<div class="document">{body}<div class="related">{prev_next}</div>{edit}</div>')
    page.add(footer(page, rng))


def news(page: Page, main: list[str], rng: random.Random) -> None:
    page.add(f'<header class="masthead"><div class="brand">The Daily Lantern</div>{nav(page, rng)}</header>')
    promo = page.text(
        "div", "Sign up for the morning briefing, delivered before seven", boilerplate=True, attrs='class="promo"'
    )
    share = "".join(page.text("a", s, boilerplate=True, attrs='href="#" class="share"') for s in SHARE)
    most_read = page.links(rng.sample(SIDEBAR_TITLES, 5), 'class="ranked"')
    page.add(
        f'<main><article>{heading(page)}<p class="byline">By Ana Ruiz, science correspondent</p>'
        f'<div class="share-tools">{share}</div><div class="article-body">{paragraphs(page, main[:2])}{promo}'
        f"{paragraphs(page, main[2:])}</div></article>"
        f'<section class="most-read"><h2>Most read this week</h2>{most_read}</section></main>'
    )
    page.add(footer(page, rng))


def forum(page: Page, main: list[str], rng: random.Random) -> None:
    page.add(f'<div id="header">{nav(page, rng)}</div>')
    posts = []
    for i, text in enumerate(main):
        user = COMMENTERS[i % len(COMMENTERS)]
        joined = page.text(
            "div",
            f"Joined March 20{10 + i} \u00b7 Posts: {120 * (i + 3):,}",
            boilerplate=True,
            attrs='class="user-stats"',
        )
        tools = page.text("a", f"Reply with quote to {user}", boilerplate=True, attrs='href="#"') + page.text(
            "a", f"Report post #{i + 1} to a moderator", boilerplate=True, attrs='href="#"'
        )
        posts.append(
            f'<div class="post" id="p{i}"><div class="postprofile"><b>{user}</b>{joined}</div>'
            f'<div class="postbody"><div class="content">{html.escape(text)}</div></div>'
            f'<div class="post-tools">{tools}</div></div>'
        )
        page.main.append(text)
    page.add(f'<div id="page-body">{heading(page, "h2")}<div class="topic">{"".join(posts)}</div></div>')
    page.add(footer(page, rng))


def product(page: Page, main: list[str], rng: random.Random) -> None:
    page.add(f'<header>{nav(page, rng)}<form class="search"><input placeholder="Search"></form></header>')
    buy = page.text("button", "Add to basket and continue shopping", boilerplate=True) + page.text(
        "p",
        "Free delivery on orders over thirty euros, dispatched within two days.",
        boilerplate=True,
        attrs='class="delivery"',
    )
    also = rng.sample(
        [
            "Stainless steel hand trowel",
            "Bamboo plant markers, pack of fifty",
            "Waterproof gardening gloves",
            "Folding kneeler with handles",
            "Copper watering can",
        ],
        4,
    )
    page.add(
        f'<main><div class="product">{heading(page)}<div class="price">24.90 EUR</div>{buy}'
        f'<div class="description"><h2>Description</h2>{paragraphs(page, main)}</div></div>'
        f'<div class="recommendations"><h2>Customers who bought this also looked at</h2>{page.links(also)}</div>'
        "</main>"
    )
    page.add(footer(page, rng))


def div_soup(page: Page, main: list[str], rng: random.Random) -> None:
    """No semantic tags at all: divs with class names only."""
    page.add(f'<div class="header"><div class="menu">{page.links(rng.choice(SITE_NAV))}</div></div>')
    page.add(
        f'<div class="wrapper"><div class="left-column">{page.links(rng.sample(SIDEBAR_TITLES, 4))}</div>'
        f'<div class="post-body"><div class="post-title">{html.escape(page.title)}</div>'
        + "".join(f'<div class="para">{html.escape(t)}</div>' for t in main)
        + "</div></div>"
    )
    page.main.extend(main)
    page.add(
        '<div class="footer">' + "".join(page.text("div", t, boilerplate=True) for t in rng.choice(FOOTERS)) + "</div>"
    )


def table_layout(page: Page, main: list[str], rng: random.Random) -> None:
    """An old page laid out with a table: the menu in one cell, the text in another."""
    items = rng.choice(SITE_NAV)
    menu = "".join(f'<a href="/{slug(t)}">{html.escape(t)}</a><br>' for t in items)
    page.boilerplate.extend(items)
    cells = "".join(f"<p>{html.escape(t)}</p>" for t in main)
    page.main.extend(main)
    credits = page.text(
        "font",
        "This page was last edited by the webmaster. Best viewed in any browser.",
        boilerplate=True,
        attrs='size="1"',
    )
    page.add(
        f'<table width="100%"><tr><td width="20%" valign="top" bgcolor="#eeeeee">{menu}</td>'
        f'<td valign="top"><h1>{html.escape(page.title)}</h1>{cells}</td></tr>'
        f'<tr><td colspan="2">{credits}</td></tr></table>'
    )


def qa(page: Page, main: list[str], rng: random.Random) -> None:
    page.add(f"<header>{nav(page, rng)}</header>")
    question, answers = main[0], main[1:]
    votes = page.text(
        "div", "Add a comment and help improve this answer", boilerplate=True, attrs='class="add-comment"'
    )
    items = "".join(
        f'<div class="answer"><div class="votecell">{3 * i + 2}</div><div class="answercell">'
        f"{page.text('p', a, main=True)}</div>{votes if i == 0 else ''}</div>"
        for i, a in enumerate(answers)
    )
    hot = rng.sample(SIDEBAR_TITLES, 4)
    page.add(
        f'<div id="content"><div id="question-header">{heading(page)}</div><div class="question">'
        f"{page.text('p', question, main=True)}</div><h2>{len(answers)} answers</h2>{items}</div>"
        f'<div id="sidebar"><h4>Hot network questions</h4>{page.links(hot)}</div>'
    )
    page.add(footer(page, rng))


def wiki(page: Page, main: list[str], rng: random.Random) -> None:
    tools = page.links(["Create account to edit pages", "View history of this page", "Talk about this article"])
    page.add(f'<div id="mw-head">{tools}</div>')
    infobox = page.text("td", "Maintained by volunteers of the documentation team", boilerplate=True)
    page.add(
        f'<div id="content" class="mw-body">{heading(page)}<table class="infobox"><tr>{infobox}</tr>'
        f'</table><div id="toc"><h2>Contents</h2><ol><li>Overview</li><li>Details</li></ol></div>'
        f'<div class="mw-parser-output">{paragraphs(page, main)}</div></div>'
    )
    panel = page.links(["Random article from the archive", "Recent changes to all pages", "Help with editing markup"])
    page.add(f'<div id="mw-panel">{panel}</div>')
    licence = page.text("p", "Text is available under an open licence; additional terms may apply.", boilerplate=True)
    page.add(f'<div id="footer">{licence}</div>')


def changelog(page: Page, main: list[str], rng: random.Random) -> None:
    """The main text is partly a list (release notes)."""
    page.add(f"<header>{nav(page, rng)}</header>")
    items = "".join(page.text("li", t, main=True) for t in main[2:])
    page.add(
        f"<main>{heading(page)}{paragraphs(page, main[:2])}<h2>Changes in this release</h2><ul>{items}</ul></main>"
    )
    page.add(sidebar(page, rng))
    page.add(footer(page, rng))


def recipe(page: Page, main: list[str], rng: random.Random) -> None:
    page.add(cookie_banner(page))
    page.add(f"<header>{nav(page, rng)}</header>")
    jump = page.text("a", "Jump to the recipe card below", boilerplate=True, attrs='href="#card" class="jump"')
    rating = page.text("div", "Rated 4.8 out of 5 by our readers", boilerplate=True, attrs='class="rating"')
    page.add(
        f'<main><article>{heading(page)}{jump}{rating}<div class="entry-content">{paragraphs(page, main)}'
        f"</div></article>{comments(page, rng, 2)}</main>"
    )
    page.add(footer(page, rng))


def long_footer(page: Page, main: list[str], rng: random.Random) -> None:
    page.add(f"<header>{nav(page, rng)}</header>")
    page.add(f"<main><article>{heading(page)}{paragraphs(page, main)}</article></main>")
    columns = [SITE_NAV[i] for i in rng.sample(range(len(SITE_NAV)), 3)]
    sitemap = "".join(f'<div class="footer-column">{page.links(c)}</div>' for c in columns)
    page.add(f'<footer><div class="sitemap">{sitemap}</div>{footer(page, rng)}</footer>')


def sections(page: Page, main: list[str], rng: random.Random) -> None:
    """An article split into sections, each with its own heading."""
    page.add(f"<header>{nav(page, rng)}</header>")
    parts = [main[i : i + 2] for i in range(0, len(main), 2)]
    body = "".join(f"<section><h2>Part {i + 1}</h2>{paragraphs(page, part)}</section>" for i, part in enumerate(parts))
    page.add(f"<article>{heading(page)}{body}</article>")
    page.add(f'<div class="newsletter">{page.text("p", NEWSLETTER, boilerplate=True)}</div>')
    page.add(footer(page, rng))


def german(page: Page, main: list[str], rng: random.Random) -> None:
    """A page whose chrome is German: the language hint is `de`."""
    page.lang = "de"
    menu = page.links(["Startseite und Neuigkeiten", "Alle Artikel im Archiv", "Kontakt und Impressum"])
    page.add(f"<nav>{menu}</nav>")
    banner = page.text(
        "p",
        "Wir verwenden Cookies, um die Nutzung unserer Seiten zu verstehen. Sie koennen allen "
        "Cookies zustimmen oder eine Auswahl treffen.",
        boilerplate=True,
    )
    page.add(f'<div class="cookie-notice">{banner}</div>')
    page.add(f"<main><article>{heading(page)}{paragraphs(page, main)}</article></main>")
    page.add(
        "<footer>"
        + page.text("p", "Alle Rechte vorbehalten. Datenschutzerklaerung und Nutzungsbedingungen.", boilerplate=True)
        + "</footer>"
    )


def blog_author_box(page: Page, main: list[str], rng: random.Random) -> None:
    page.add(f"<header>{nav(page, rng)}</header>")
    share = "".join(page.text("a", s, boilerplate=True, attrs='href="#"') for s in SHARE)
    tags = page.text("div", "Tagged with: tutorials, python, beginners", boilerplate=True, attrs='class="tags"')
    page.add(
        f'<div id="primary"><article class="hentry">{heading(page, "h2")}<div class="entry">'
        f'{paragraphs(page, main)}</div>{tags}<div class="sharedaddy">{share}</div></article>'
        f"{comments(page, rng, 4)}</div>"
    )
    page.add(sidebar(page, rng))
    page.add(footer(page, rng))


def minimal(page: Page, main: list[str], rng: random.Random) -> None:
    """Plain text in a bare body: nothing to remove."""
    page.add(f"<h1>{html.escape(page.title)}</h1>{paragraphs(page, main)}")


def sticky_header_and_popup(page: Page, main: list[str], rng: random.Random) -> None:
    page.add(f'<div class="sticky-header">{nav(page, rng)}</div>')
    popup = page.text("p", "Before you go: download our free guide to writing better documentation.", boilerplate=True)
    page.add(f'<div class="modal popup" id="exit-intent">{popup}</div>')
    page.add(
        f'<div id="main-content"><div class="container"><h1>{html.escape(page.title)}</h1>'
        f"{paragraphs(page, main)}</div></div>"
    )
    page.add(footer(page, rng))


def listing_with_lead(page: Page, main: list[str], rng: random.Random) -> None:
    """A magazine page: a long lead article, then teasers of other articles (boilerplate)."""
    page.add(f"<header>{nav(page, rng)}</header>")
    teasers = "".join(
        f'<div class="teaser"><h3>{html.escape(t)}</h3>'
        f"{page.text('p', f'Read the full story: {t.lower()}, in our archive.', boilerplate=True)}</div>"
        for t in rng.sample(SIDEBAR_TITLES, 3)
    )
    page.add(
        f'<main><article class="lead">{heading(page)}{paragraphs(page, main)}</article>'
        f'<section class="more-stories"><h2>More stories</h2>{teasers}</section></main>'
    )
    page.add(footer(page, rng))


LAYOUTS: list[Callable[[Page, list[str], random.Random], None]] = [
    blog,
    blog_with_cookies,
    cookie_modal_after_footer,
    docs,
    news,
    forum,
    product,
    div_soup,
    table_layout,
    qa,
    wiki,
    changelog,
    recipe,
    long_footer,
    sections,
    german,
    blog_author_box,
    minimal,
    sticky_header_and_popup,
    listing_with_lead,
]


def main() -> None:
    documents = prose_documents()
    rng = random.Random(SEED)
    picked = rng.sample(documents, len(LAYOUTS))
    OUT.mkdir(parents=True, exist_ok=True)
    for stale in OUT.glob("*.html"):
        stale.unlink()
    labels = []
    for number, (layout, (title, texts)) in enumerate(zip(LAYOUTS, picked), 1):
        page = Page(title)
        layout(page, texts[: rng.randint(4, 7)], random.Random(f"{SEED}:{layout.__name__}"))
        name = f"{number:02d}-{layout.__name__.replace('_', '-')}.html"
        (OUT / name).write_text(page.html(), encoding="utf-8")
        labels.append(
            {
                "page": name,
                "layout": layout.__name__,
                "lang": page.lang,
                "title": page.title,
                "main": page.main,
                "boilerplate": list(dict.fromkeys(page.boilerplate)),
            }
        )
    (OUT / "labels.jsonl").write_text(
        "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in labels), encoding="utf-8"
    )
    print(
        f"{len(labels)} pages, {sum(len(r['main']) for r in labels)} main paragraphs, "
        f"{sum(len(r['boilerplate']) for r in labels)} boilerplate blocks in {OUT}"
    )


if __name__ == "__main__":
    main()
