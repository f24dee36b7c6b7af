"""Quality filter: document-level heuristics in the spirit of Gopher and C4.

Crawled text is full of boilerplate, keyword spam, menus and machine-made lists; these cheap
statistics catch most of it without a model, so they run on every document. A document is
tokenized once (lower-cased `\\w+` runs, one precompiled regex) and split into lines once, and
every rule reads those. Rules run in a fixed order and the first failure decides, so a drop
reason is stable and its detail (`value`, `threshold`) says how far off the document was:
words (count, mean length, symbols, letters, stop words), then lines (bullets, ellipses,
repeated lines), then word n-gram repetition by increasing n.

Word rules need words: for languages written without spaces (`no_space_languages`, matched on
the `lang` column that language ID adds) a minimum character count replaces them and only the
line rules apply. The stop-word rule runs only when `lang` has a stop-word list.
"""

from __future__ import annotations

import re
from collections import Counter
from itertools import filterfalse
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa
from pydantic import Field, field_validator, model_validator

from data_prep.books import doc_stage
from data_prep.stage import LANG, TEXT, Decision, DocStage, Drop
from pipeline.ground.schema import Section

# Word runs; digits and "_" are word characters so that identifiers stay whole.
_WORD = re.compile(r"\w+")
_LETTER = re.compile(r"[^\W\d_]")
_BULLETS = ("•", "‣", "◦", "⁃", "●", "▪", "▫", "■", "□", "- ", "* ", "+ ", "– ", "— ")
_ELLIPSES = ("...", "…")
# Odd 64-bit multiplier of the rolling n-gram keys (arithmetic wraps modulo 2**64).
_MIX = np.uint64(0x9E3779B97F4A7C15)

# Very common function words. Any running text of the language has at least two of them;
# word salad, keyword lists and code often do not.
STOP_WORDS: dict[str, list[str]] = {
    lang: words.split()
    for lang, words in {
        "en": "the be to of and that have with a in is it for on this are as by or not from",
        "de": "der die das und ist nicht ein eine zu mit von den dem sich auf für im es auch",
        "fr": "le la les de des et est un une du en que qui pour dans pas sur au avec par",
        "es": "el la los las de del y que en un una es por para con no se al lo su",
        "it": "il la le di che e è un una per non del della con in si da sono gli al",
        "nl": "de het een en van is dat niet op te voor met die zijn in er aan om wordt",
        "pt": "o a os as de do da dos das e que em um uma para com não por é se",
        "pl": "i w na nie z się do to że jest o jak a po od ale za dla tak są",
        "sv": "och att det som en ett är på för med den av till inte om har de kan eller i",
        "da": "og at det som en et er på for med den af til ikke om har de kan eller i",
        "ru": "и в не на что с по это как для к из у от а но или то же при",
        "uk": "і в не на що з до це як для у та від а але або за по й є",
        "cs": "a v se na je že s z do to k o pro ve jako by ale nebo jsou i",
    }.items()
}

# Language-ID codes of scripts written without spaces between words.
NO_SPACE_LANGUAGES = ["zh", "yue", "wuu", "ja", "th", "lo", "km", "my", "bo"]

# The default limits of max_top_ngram_chars and max_dup_ngram_chars, by n-gram size.
TOP_NGRAM_CHARS: dict[int, float | None] = {2: 0.30, 3: 0.27, 4: 0.24}
DUP_NGRAM_CHARS: dict[int, float | None] = {5: 0.30, 6: 0.28, 7: 0.26, 8: 0.24, 9: 0.22, 10: 0.20}

Detail = dict[str, Any]
Verdict = tuple[str, Detail] | None


class QualityConfig(Section):
    """Thresholds of the quality rules; `null` disables a rule.

    Defaults are Gopher's except where documentation, which is short and formulaic but worth
    keeping, needs more room; those fields say so.
    """

    min_words: int | None = Field(
        20,
        ge=1,
        description="Fewer words is a title or a fragment. Gopher uses 50, which drops short package descriptions.",
    )
    max_words: int | None = Field(100_000, ge=1, description="More words is usually a dump.")
    min_mean_word_length: float | None = Field(3.0, ge=0)
    max_mean_word_length: float | None = Field(10.0, ge=0)
    max_symbol_word_ratio: float | None = Field(
        0.1, ge=0, description="Count of '#', '...' and '…' per word: hashtag and teaser spam."
    )
    max_bullet_lines: float | None = Field(
        0.9, ge=0, le=1, description="Fraction of non-empty lines that start with a bullet."
    )
    max_ellipsis_lines: float | None = Field(
        0.3, ge=0, le=1, description="Fraction of non-empty lines that end with '...' or '…'."
    )
    min_alpha_words: float | None = Field(
        0.8,
        ge=0,
        le=1,
        description="Fraction of whitespace-separated chunks with a letter; "
        "a lone punctuation mark (French ' ;', list dashes) is not counted.",
    )
    min_stop_words: int | None = Field(
        2, ge=1, description="Distinct stop words of the document's language that must occur."
    )
    stop_words: dict[str, list[str]] = Field(
        default_factory=lambda: {lang: list(words) for lang, words in STOP_WORDS.items()},
        description="Stop words by language code; other languages skip the stop-word rule.",
    )
    max_dup_lines: float | None = Field(
        0.3, ge=0, le=1, description="Fraction of non-empty lines that repeat an earlier line."
    )
    max_dup_line_chars: float | None = Field(
        0.2, ge=0, le=1, description="Fraction of line characters in lines that repeat."
    )
    max_top_ngram_chars: dict[int, float | None] = Field(
        default_factory=lambda: dict(TOP_NGRAM_CHARS),
        description="n -> max fraction of word characters in all occurrences of the most "
        "frequent word n-gram; sizes not listed are not checked. Gopher's values x1.5: a "
        "short description repeats its title.",
    )
    max_dup_ngram_chars: dict[int, float | None] = Field(
        default_factory=lambda: dict(DUP_NGRAM_CHARS),
        description="n -> max fraction of word characters covered by word n-grams that occur "
        "twice or more; sizes not listed are not checked. Gopher's values x2: reference pages "
        "repeat paths, option names and set phrases.",
    )
    no_space_languages: list[str] = Field(
        default_factory=lambda: list(NO_SPACE_LANGUAGES),
        description="Languages written without spaces: min_no_space_chars replaces the word and n-gram rules.",
    )
    min_no_space_chars: int | None = Field(
        50, ge=1, description="Minimum word characters of a no-space-language document."
    )

    @field_validator("stop_words")
    @classmethod
    def _lower_case_words(cls, lists: dict[str, list[str]]) -> dict[str, list[str]]:
        for lang, words in lists.items():
            if not words:
                raise ValueError(f"stop_words.{lang} is empty; leave the language out instead")
            bad = [w for w in words if w != w.lower() or not _WORD.fullmatch(w)]
            if bad:
                raise ValueError(f"stop_words.{lang} must be lower-case words, got {bad[:5]}")
        return lists

    @field_validator("max_top_ngram_chars", "max_dup_ngram_chars")
    @classmethod
    def _ngram_limits(cls, limits: dict[int, float | None]) -> dict[int, float | None]:
        for n, limit in limits.items():
            if n < 2:
                raise ValueError(f"n-gram sizes start at 2, got {n}")
            if limit is not None and not 0 <= limit <= 1:
                raise ValueError(f"the {n}-gram threshold is a fraction in [0, 1], got {limit}")
        return limits

    @model_validator(mode="after")
    def _ranges(self) -> QualityConfig:
        pairs = (("min_words", "max_words"), ("min_mean_word_length", "max_mean_word_length"))
        for low, high in pairs:
            lo, hi = getattr(self, low), getattr(self, high)
            if lo is not None and hi is not None and lo > hi:
                raise ValueError(f"{low} ({lo}) is larger than {high} ({hi}); nothing could pass")
        return self


def _fail(reason: str, value: float, threshold: float) -> Verdict:
    return reason, {"value": value, "threshold": threshold}


class _NgramRepeats:
    """Repetition of a document's word n-grams, measured for n = 2, 3, ... in turn.

    An n-gram can occur twice only if its (n-1)-word prefix and suffix both do, so each step
    sorts only the survivors of the previous one; in ordinary text few remain past n = 4.
    """

    def __init__(self, tokens: list[str]) -> None:
        # String hashes as word ids: equal words get equal ids within one process. Two distinct
        # n-grams share a 64-bit key with probability about len(tokens)**2 / 2**64.
        count = len(tokens)
        self._ids = np.fromiter(map(hash, tokens), dtype=np.int64, count=count).view(np.uint64)
        self._lengths = np.fromiter(map(len, tokens), dtype=np.int64, count=count)
        self._offsets = np.concatenate(([0], np.cumsum(self._lengths)))
        self._keys = self._ids
        self._repeated = np.ones(count, dtype=bool)
        self.n = 1
        self.top_fraction = 0.0
        self.dup_fraction = 0.0

    def any_repeated(self) -> bool:
        """Whether an n-gram of the current size occurs twice, so that longer ones still can."""
        return bool(self._repeated.any())

    def step(self) -> None:
        """Move to n + 1 and measure it.

        top_fraction: characters in all occurrences of the most frequent n-gram (if it occurs
        twice or more) over all word characters, as in Gopher; above 1 only for self-overlapping
        runs such as one word repeated. dup_fraction: word characters covered by n-grams that
        occur twice or more, each character counted once.
        """
        n = self.n = self.n + 1
        with np.errstate(over="ignore"):
            self._keys = self._keys[:-1] * _MIX + self._ids[n - 1 :]
        candidates = np.flatnonzero(self._repeated[:-1] & self._repeated[1:])
        self._repeated = np.zeros(len(self._keys), dtype=bool)
        self.top_fraction = self.dup_fraction = 0.0
        if len(candidates) < 2:
            return
        keys = self._keys[candidates]
        order = np.argsort(keys)
        ranked = keys[order]
        fresh = np.empty(len(ranked), dtype=bool)
        fresh[0] = True
        np.not_equal(ranked[1:], ranked[:-1], out=fresh[1:])
        group = np.cumsum(fresh) - 1
        counts = np.bincount(group)
        count_at = counts[group]
        starts = candidates[order]
        repeated = starts[count_at > 1]
        if len(repeated) == 0:
            return
        self._repeated[repeated] = True
        total = self._offsets[-1]
        top = counts.max()
        firsts = starts[count_at == top]
        widths = self._offsets[firsts + n] - self._offsets[firsts]
        self.top_fraction = float(top * widths.max() / total)
        edges = np.zeros(len(self._offsets), dtype=np.int64)
        edges[repeated] += 1
        edges[repeated + n] -= 1
        covered = np.cumsum(edges[:-1]) > 0
        self.dup_fraction = float(self._lengths[covered].sum() / total)


class QualityStage(DocStage):
    """Drops documents that fail a Gopher/C4-style heuristic; see `QualityConfig`."""

    name: ClassVar[str] = "quality"

    def __init__(self, config: QualityConfig) -> None:
        self.config = config
        self._stop_words = {lang: frozenset(words) for lang, words in config.stop_words.items()}
        self._no_space = frozenset(config.no_space_languages)

    def decide(self, table: pa.Table) -> Decision:
        texts = table.column(TEXT).to_pylist()
        has_lang = LANG in table.column_names
        langs = table.column(LANG).to_pylist() if has_lang else [None] * len(texts)
        drops = {}
        for row, (text, lang) in enumerate(zip(texts, langs)):
            verdict = self.check(text, lang)
            if verdict is not None:
                drops[row] = Drop(*verdict)
        return Decision(table, drops)

    def check(self, text: str, lang: str | None = None) -> Verdict:
        """The first rule `text` fails as (reason, {"value", "threshold"}), or None to keep it."""
        tokens = _WORD.findall(text.lower())
        if lang in self._no_space:
            chars, least = sum(map(len, tokens)), self.config.min_no_space_chars
            if least is not None and chars < least:
                return _fail("too_few_chars", chars, least)
            return self._check_lines(text)
        failure = self._check_words(text, tokens, lang) or self._check_lines(text)
        return failure or self._check_ngrams(tokens)

    def _check_words(self, text: str, tokens: list[str], lang: str | None) -> Verdict:
        cfg = self.config
        count = len(tokens)
        if cfg.min_words is not None and count < cfg.min_words:
            return _fail("too_few_words", count, cfg.min_words)
        if cfg.max_words is not None and count > cfg.max_words:
            return _fail("too_many_words", count, cfg.max_words)
        if count == 0:
            return None
        mean = sum(map(len, tokens)) / count
        if cfg.min_mean_word_length is not None and mean < cfg.min_mean_word_length:
            return _fail("mean_word_length", mean, cfg.min_mean_word_length)
        if cfg.max_mean_word_length is not None and mean > cfg.max_mean_word_length:
            return _fail("mean_word_length", mean, cfg.max_mean_word_length)
        if cfg.max_symbol_word_ratio is not None:
            ratio = (text.count("#") + sum(map(text.count, _ELLIPSES))) / count
            if ratio > cfg.max_symbol_word_ratio:
                return _fail("symbol_ratio", ratio, cfg.max_symbol_word_ratio)
        if cfg.min_alpha_words is not None:
            chunks = text.split()
            # Chunks without a letter; most chunks are all letters and never reach the regex.
            letterless = list(filterfalse(_LETTER.search, filterfalse(str.isalpha, chunks)))
            lone = sum(1 for chunk in letterless if len(chunk) == 1 and not chunk.isdigit())
            alpha = 1 - (len(letterless) - lone) / (len(chunks) - lone)
            if alpha < cfg.min_alpha_words:
                return _fail("alpha_words", alpha, cfg.min_alpha_words)
        stops = self._stop_words.get(lang) if lang is not None else None
        if cfg.min_stop_words is not None and stops is not None:
            found = len(stops.intersection(tokens))
            if found < cfg.min_stop_words:
                return _fail("few_stop_words", found, cfg.min_stop_words)
        return None

    def _check_lines(self, text: str) -> Verdict:
        cfg = self.config
        lines = [line for raw in text.splitlines() if (line := raw.strip())]
        if not lines:
            return None
        total = len(lines)
        if cfg.max_bullet_lines is not None:
            share = sum(1 for line in lines if line.startswith(_BULLETS)) / total
            if share > cfg.max_bullet_lines:
                return _fail("bullet_lines", share, cfg.max_bullet_lines)
        if cfg.max_ellipsis_lines is not None:
            share = sum(1 for line in lines if line.endswith(_ELLIPSES)) / total
            if share > cfg.max_ellipsis_lines:
                return _fail("ellipsis_lines", share, cfg.max_ellipsis_lines)
        counts = Counter(lines)
        if cfg.max_dup_lines is not None:
            share = (total - len(counts)) / total
            if share > cfg.max_dup_lines:
                return _fail("dup_lines", share, cfg.max_dup_lines)
        if cfg.max_dup_line_chars is not None:
            repeated = sum((seen - 1) * len(line) for line, seen in counts.items() if seen > 1)
            share = repeated / sum(map(len, lines))
            if share > cfg.max_dup_line_chars:
                return _fail("dup_line_chars", share, cfg.max_dup_line_chars)
        return None

    def _check_ngrams(self, tokens: list[str]) -> Verdict:
        top, dup = self.config.max_top_ngram_chars, self.config.max_dup_ngram_chars
        largest = max((n for n, t in (*top.items(), *dup.items()) if t is not None), default=1)
        grams = _NgramRepeats(tokens)
        while grams.n < largest and grams.any_repeated():
            grams.step()
            n = grams.n
            if (limit := top.get(n)) is not None and grams.top_fraction > limit:
                return _fail(f"top_ngram_{n}", grams.top_fraction, limit)
            if (limit := dup.get(n)) is not None and grams.dup_fraction > limit:
                return _fail(f"dup_ngram_{n}", grams.dup_fraction, limit)
        return None


STAGE = doc_stage(QualityStage, QualityConfig)
