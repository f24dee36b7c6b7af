"""Build tests/data/ from the sample corpus in data/sample/: the small test sets the suite reads.

The tests need real text with known properties (language labels, near duplicates with exact
Jaccard, e-mail addresses among version strings and dates), and a fresh clone must be able to run
them without any other download. Everything here is cut from data/sample, so the build needs no
network. Every choice is seeded and the output is compressed deterministically, so two runs give
the same bytes. tests/data/SOURCES.md describes the files.

Run: .venv/bin/python scripts/build_test_data.py
"""

from __future__ import annotations

import gzip
import json
import random
import re
from collections import Counter, defaultdict
from collections.abc import Iterable
from pathlib import Path

import zstandard
from build_sample_corpus import SYNTHETIC_PII

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "data" / "sample"
OUT = REPO / "tests" / "data"
SEED = "crucible-test-data-v1"

# --- reading and writing ------------------------------------------------------------------------


def read_sample() -> list[dict]:
    """All sample documents, sorted by id so that later seeded choices do not depend on shards."""
    records = []
    for path in sorted(SAMPLE.glob("corpus-*.jsonl.*")):
        raw = path.read_bytes()
        if path.suffix == ".gz":
            raw = gzip.decompress(raw)
        else:
            raw = zstandard.ZstdDecompressor().decompressobj().decompress(raw)
        records += [json.loads(line) for line in raw.decode("utf-8").splitlines()]
    return sorted(records, key=lambda r: r["id"])


def seeded(*parts: str) -> random.Random:
    return random.Random(":".join((SEED, *parts)))


def write_zst(name: str, records: Iterable[dict]) -> int:
    """One JSON object per line, zstd level 19, single-threaded: the bytes depend on input only."""
    lines = "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records)
    data = zstandard.ZstdCompressor(level=19).compress(lines.encode("utf-8"))
    (OUT / name).write_bytes(data)
    return len(data)


# --- synthetic e-mail addresses -----------------------------------------------------------------

# The sample already replaced every real address by `user-<hex>@example.org`. One shape is a weak
# test of an e-mail pattern, so each pseudonym becomes a synthetic address of a varied shape, under
# reserved domains only (RFC 2606: example.com/.net/.org, .example, .test, .invalid).
PSEUDONYM = re.compile(r"user-([0-9a-f]{8})@example\.org")
FIRST = [
    "alex",
    "maria",
    "jonas",
    "li",
    "renée",
    "olaf",
    "priya",
    "tomás",
    "yuki",
    "fatima",
    "pieter",
    "ana",
    "sven",
    "chloé",
    "dmitri",
    "noor",
]
LAST = [
    "smith",
    "novak",
    "müller",
    "garcia",
    "tanaka",
    "okafor",
    "jensen",
    "rossi",
    "kowalski",
    "dubois",
    "silva",
    "nguyen",
    "berg",
    "costa",
    "haddad",
    "ivanova",
]
DOMAINS = [
    "example.org",
    "example.com",
    "example.net",
    "lists.example.org",
    "mail.example.com",
    "cs.uni.example",
    "debian.example",
    "build.test",
    "users.noreply.example.net",
    "host-7.example.invalid",
]


def synthetic_email(digest: str) -> str:
    """A stable synthetic address for one pseudonym: the same person keeps the same address."""
    rng = random.Random(int(digest, 16))
    first, last, domain = rng.choice(FIRST), rng.choice(LAST), rng.choice(DOMAINS)
    local = rng.choice(
        [
            f"{first}.{last}",
            f"{first[0]}{last}",
            f"{first}",
            f"{first}_{last}{rng.randint(1, 99)}",
            f"{first}+debian",
            f"{last}-{first}",
            f"{first.capitalize()}.{last.capitalize()}",
            f"{first}.{last}+bugs",
        ]
    )
    return f"{local}@{domain.upper() if rng.random() < 0.05 else domain}"


def with_synthetic_emails(record: dict) -> dict:
    text = PSEUDONYM.sub(lambda m: synthetic_email(m.group(1)), record["text"])
    return {**record, "text": text}


# --- English ------------------------------------------------------------------------------------


def english(records: list[dict], size: int = 180) -> list[dict]:
    """English prose and technical text: the chapters of the Python documentation written as prose
    (tutorial, HOWTOs, FAQ, language reference; not the library reference) and man pages."""
    shares = {"python-docs": 0.7, "manpages": 0.3}
    chosen = []
    for source, share in shares.items():
        pool = [
            r
            for r in records
            if r["source"] == source
            and r["lang"] == "en"
            and len(r["text"]) >= 1500
            and not r["id"].startswith("python-docs/library/")
        ]
        chosen += seeded("english", source).sample(pool, round(size * share))
    seeded("english").shuffle(chosen)
    return chosen


# --- languages ----------------------------------------------------------------------------------

# A label is kept only when simple rules agree with it, independently of the detector under test:
# the script for CJK and Cyrillic, and frequent function words for Latin-script languages.
FUNCTION_WORDS = {
    "en": "the of and to is in that for are with this be or by",
    "cs": "a je se na v ve pro že jako nebo to z do k",
    "de": "der die und das ist nicht mit von zu den ein eine für auf",
    "es": "el la de que y en los las se del por un una para es",
    "fr": "le la les de des et est un une pour dans que qui du",
    "it": "il la di che e è un una per del della le non sono con",
    "nl": "de het een en van is in dat op te voor met niet zijn",
    "pl": "i w na z do się nie jest to że o dla lub jako",
    "pt": "o a de que e do da em um uma para os as é com",
    "sv": "och att det är en som för på med av till den inte ett",
}
KANA = re.compile(r"[\u3040-\u30ff]")
SCRIPT_LETTERS = {
    "ja": re.compile(r"[\u3040-\u30ff\u4e00-\u9fff]"),  # kana and kanji
    "zh": re.compile(r"[\u4e00-\u9fff]"),
    "ko": re.compile(r"[\uac00-\ud7af]"),
    "ru": re.compile(r"[\u0400-\u04ff]"),
    "uk": re.compile(r"[\u0400-\u04ff]"),
}


def word_share(words: list[str], lang: str) -> float:
    vocabulary = set(FUNCTION_WORDS[lang].split())
    return sum(w in vocabulary for w in words) / max(len(words), 1)


def label_holds(text: str, lang: str) -> bool:
    """True when the text is mostly in `lang`: a translated man page often keeps English parts."""
    letters = re.findall(r"[^\W\d_]", text)
    if lang in SCRIPT_LETTERS:
        own = len(SCRIPT_LETTERS[lang].findall(text)) / max(len(letters), 1)
        if lang in ("ja", "zh") and (lang == "ja") != bool(KANA.search(text)):
            return False
        if lang == "ru" and re.search(r"[іїєґІЇЄҐ]", text):
            return False
        if lang == "uk" and re.search(r"[ыэъЫЭЪ]", text):
            return False
        return own >= 0.6
    words = re.findall(r"\w+", text.lower())
    own = word_share(words, lang)
    return own >= 0.12 and (lang == "en" or own >= 3 * word_share(words, "en"))


def multilingual(records: list[dict], per_lang: int = 40) -> list[dict]:
    """Translated package descriptions and man pages in 15 languages, 200-5,000 characters."""
    by_lang: dict[str, list[dict]] = defaultdict(list)
    for r in records:
        if r["source"] in ("package-descriptions", "manpages") and 200 <= len(r["text"]) <= 5000:
            if label_holds(r["text"], r["lang"]):
                by_lang[r["lang"]].append(r)
    chosen = []
    for lang, pool in sorted(by_lang.items()):
        chosen += seeded("multilingual", lang).sample(pool, min(per_lang, len(pool)))
    seeded("multilingual").shuffle(chosen)
    return chosen


# --- near duplicates ----------------------------------------------------------------------------


def shingles(text: str, ngram: int = 5) -> set[str]:
    """Word 5-grams: lower-cased `\\w+` tokens joined by spaces; one shingle for shorter texts."""
    words = [w.lower() for w in re.findall(r"\w+", text)]
    return {" ".join(words[i : i + ngram]) for i in range(max(len(words) - ngram + 1, 1))} if words else set()


def edited(text: str, rate: float, rng: random.Random) -> str:
    """The text with about `rate` of its words replaced, deleted or doubled, layout kept."""
    parts = re.split(r"(\s+)", text)
    words = [p for p in parts[::2] if p]
    out = []
    for i, part in enumerate(parts):
        if i % 2 or not part or rng.random() >= rate:
            out.append(part)
            continue
        action = rng.random()
        if action < 0.5:
            out.append(rng.choice(words))
        elif action < 0.75:
            out.append(f"{part} {part}")
    return "".join(out)


# Each planted group: an original and one copy per edit rate. Word-5-gram Jaccard falls fast with
# edits (medians: 0.91 at 1% of words, 0.77 at 3%, 0.56 at 8%), so the rates span both sides of the
# 0.75 drop threshold and of the 0.8 / 0.7 bars of the recall and precision test.
EDIT_RATES = (0.0, 0.002, 0.004, 0.006, 0.01, 0.013, 0.016, 0.02, 0.025, 0.03, 0.04, 0.055, 0.08)


def neardup(records: list[dict], natural_descriptions: int = 300, planted_groups: int = 45) -> list[dict]:
    """Natural duplicates of the sample (changelogs and copyright files shared across packages,
    runs of similar package descriptions, one page as HTML and reST) and planted copies of real
    documents with known edit rates."""
    docs = [r for r in records if r["source"] in ("debian-changelog", "debian-copyright")]
    descriptions = [r for r in records if r["source"] == "package-descriptions" and r["lang"] == "en"]
    start = seeded("neardup", "descriptions").randrange(len(descriptions) - natural_descriptions)
    docs += descriptions[start : start + natural_descriptions]  # sorted by id: runs of related packages
    rst = {
        r["id"].replace("python-docs-rst/", "").replace(".rst.txt", ".html")
        for r in records
        if r["source"] == "python-docs-rst"
    }
    docs += [
        r
        for r in records
        if r["source"] == "python-docs-rst"
        or (r["source"] == "python-docs" and r["id"].replace("python-docs/", "") in rst)
    ]
    taken = {r["id"] for r in docs}
    pool = [
        r
        for r in records
        if r["source"] in ("manpages", "python-docs")
        and r["lang"] == "en"
        and 1500 <= len(r["text"]) <= 4000
        and r["id"] not in taken
    ]
    for base in seeded("neardup", "planted").sample(pool, planted_groups):
        rng = seeded("neardup", base["id"])
        for rate in EDIT_RATES:
            text = edited(base["text"], rate, rng) if rate else base["text"]
            docs.append({**base, "id": f"{base['id']}~{rate:.3f}" if rate else base["id"], "text": text})
    docs = sorted(docs, key=lambda r: r["id"])
    seeded("neardup").shuffle(docs)
    return docs


def jaccard_pairs(docs: list[dict], floor: float = 0.5) -> list[tuple[str, str, float]]:
    """Every pair with exact word-5-gram Jaccard >= `floor`, ids in order, rounded to 4 places."""
    sets = [shingles(d["text"]) for d in docs]
    postings: dict[str, list[int]] = defaultdict(list)
    for i, grams in enumerate(sets):
        for gram in grams:
            postings[gram].append(i)
    shared: Counter[tuple[int, int]] = Counter()
    for members in postings.values():
        for a in range(len(members)):
            for b in range(a + 1, len(members)):
                shared[members[a], members[b]] += 1
    pairs = []
    for (a, b), common in shared.items():
        value = common / (len(sets[a]) + len(sets[b]) - common)
        if value >= floor:
            first, second = sorted((docs[a]["id"], docs[b]["id"]))
            pairs.append((first, second, round(value, 4)))
    return sorted(pairs)


# --- personal data ------------------------------------------------------------------------------


def pii(records: list[dict]) -> list[dict]:
    """Debian changelogs and copyright files: addresses among versions, dates and bug numbers.
    The PII lines the sample planted are taken out: the test plants its own and counts the rest."""
    planted = re.compile("|".join(re.escape(f"\n\n{line}") for line in SYNTHETIC_PII))
    return [
        {**r, "text": planted.sub("", r["text"])}
        for r in records
        if r["source"] in ("debian-changelog", "debian-copyright")
    ]


def main() -> None:
    records = [with_synthetic_emails(r) for r in read_sample()]
    OUT.mkdir(parents=True, exist_ok=True)
    near = neardup(records)
    pairs = jaccard_pairs(near)
    # Tests mix these sets into one corpus, where an id must name one document.
    used = {r["id"].split("~")[0] for r in near}
    prose = english([r for r in records if r["id"] not in used])
    used |= {r["id"] for r in prose}
    languages = multilingual([r for r in records if r["id"] not in used])
    sizes = {
        "english.jsonl.zst": write_zst("english.jsonl.zst", prose),
        "multilingual.jsonl.zst": write_zst("multilingual.jsonl.zst", languages),
        "neardup.jsonl.zst": write_zst("neardup.jsonl.zst", near),
        "debian_pii.jsonl.zst": write_zst("debian_pii.jsonl.zst", pii(records)),
    }
    tsv = "id_a\tid_b\tjaccard_word5\n" + "".join(f"{a}\t{b}\t{j}\n" for a, b, j in pairs)
    (OUT / "neardup_pairs.tsv").write_text(tsv, encoding="utf-8")
    sizes["neardup_pairs.tsv"] = len(tsv.encode("utf-8"))
    for name, size in sizes.items():
        print(f"{name:28} {size:>9,} bytes")
    print(f"{'total':28} {sum(sizes.values()):>9,} bytes")


if __name__ == "__main__":
    main()
