"""The quality filter on real text: what the defaults keep, and every rule firing on a spoiled copy.

Each bad document is built from a real one (a prose page of the Python tutorial, a Chinese package
description, the English test set), and the untouched original must pass the same config, so a
test fails if a rule stops firing or starts firing on ordinary text.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pytest
from pydantic import ValidationError

from data_prep.quality import STOP_WORDS, QualityConfig, QualityStage
from pipeline.config import ConfigError, load_config
from tests.conftest import read_set

# Every rule switched off; `only(...)` turns single rules back on to test them in isolation.
ALL_OFF: dict[str, Any] = {
    "min_words": None,
    "max_words": None,
    "min_mean_word_length": None,
    "max_mean_word_length": None,
    "max_symbol_word_ratio": None,
    "max_bullet_lines": None,
    "max_ellipsis_lines": None,
    "min_alpha_words": None,
    "min_stop_words": None,
    "max_dup_lines": None,
    "max_dup_line_chars": None,
    "max_top_ngram_chars": {},
    "max_dup_ngram_chars": {},
    "min_no_space_chars": None,
}
WORD_REASONS = {"too_few_words", "too_many_words", "mean_word_length", "symbol_ratio", "alpha_words", "few_stop_words"}
DEFAULTS = QualityConfig()


def only(**rules: Any) -> QualityStage:
    return QualityStage(QualityConfig(**{**ALL_OFF, **rules}))


def reason(stage: QualityStage, text: str, lang: str | None) -> str | None:
    verdict = stage.check(text, lang)
    return verdict[0] if verdict else None


@dataclass(frozen=True)
class Real:
    """Real documents the bad ones are built from."""

    speech: str  # "Whetting Your Appetite" from the Python tutorial, one paragraph per line
    chinese: str  # a Chinese package description or man page
    english: list[str]  # the whole English test set


@pytest.fixture(scope="module")
def english() -> list[dict]:
    return read_set("english")


@pytest.fixture(scope="module")
def multilingual() -> list[dict]:
    return read_set("multilingual")


@pytest.fixture(scope="module")
def real(english: list[dict], multilingual: list[dict]) -> Real:
    speech = next(r["text"] for r in english if r["id"] == "python-docs/tutorial/appetite.html#0")
    chinese = next(r["text"] for r in multilingual if r["lang"] == "zh")
    return Real(speech, chinese, [r["text"] for r in english])


@pytest.fixture(scope="module")
def verdicts(english: list[dict], multilingual: list[dict]) -> dict[str, str | None]:
    """Document id -> drop reason under the defaults, for both corpora (read with their lang)."""
    stage = QualityStage(DEFAULTS)
    return {r["id"]: reason(stage, r["text"], r.get("lang")) for r in english + multilingual}


def keep_rate(records: list[dict], verdicts: dict[str, str | None]) -> float:
    return sum(verdicts[r["id"]] is None for r in records) / len(records)


# --- what the defaults keep ------------------------------------------------------------------


# Measured: the defaults keep 94.9% of the multilingual set and 88.3% of the English set (Python
# documentation and man pages, whose code examples repeat lines and phrases). The bars sit a
# little below that and above what Gopher's web-tuned n-gram thresholds keep here (84.7% and
# 70.6%; with its 50-word minimum too, 66.9% of multilingual), so a drift back to such values fails.
@pytest.mark.parametrize(("name", "bar"), [("multilingual", 0.93), ("english", 0.86)])
def test_defaults_keep_real_documentation(
    name: str, bar: float, english: list[dict], multilingual: list[dict], verdicts: dict
) -> None:
    records = {"multilingual": multilingual, "english": english}[name]
    rate = keep_rate(records, verdicts)
    assert rate >= bar, f"defaults keep only {rate:.3f} of {name}"


def test_no_language_or_source_is_singled_out(english: list[dict], multilingual: list[dict], verdicts: dict) -> None:
    """A wrong stop-word list or a rule blind to a script or to reST would drop a whole group."""
    groups: dict[str, list[dict]] = {}
    for record in multilingual:
        groups.setdefault(record["lang"], []).append(record)
    for record in english:
        groups.setdefault(record["source"], []).append(record)
    rates = {group: keep_rate(records, verdicts) for group, records in groups.items() if len(records) >= 25}
    assert len(rates) >= 17, sorted(rates)
    low = {group: round(rate, 3) for group, rate in rates.items() if rate < 0.7}  # lowest: uk, 0.78
    assert not low, f"groups mostly dropped: {low}"


# --- each rule fires on a spoiled real document ----------------------------------------------


def lines_of(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def per_line(text: str, change: Callable[[list[str]], list[str]]) -> str:
    return "\n".join(" ".join(change(line.split())) for line in lines_of(text))


def three_words(real: Real) -> str:
    return " ".join(real.speech.split()[:3])


def whole_corpus(real: Real) -> str:
    return "\n\n".join(real.english)


def clipped_words(real: Real) -> str:
    return per_line(real.speech, lambda words: [w[:2] for w in words])


def glued_words(real: Real) -> str:
    return per_line(real.speech, lambda w: ["".join(w[i : i + 4]) for i in range(0, len(w), 4)])


def hash_line(real: Real) -> str:
    words = real.speech.split()
    random.Random(0).shuffle(words)
    return " # ".join(words)


def bullet_list(real: Real) -> str:
    return "\n".join(f"• {line}" for line in lines_of(real.speech))


def truncated_lines(real: Real) -> str:
    return per_line(real.speech, lambda words: words[: len(words) // 2 + 1] + ["…"])


def numbers_table(real: Real) -> str:
    return per_line(real.speech, lambda words: [f"{w} {1900 + i}" for i, w in enumerate(words)])


def without_stop_words(real: Real) -> str:
    stops = set(STOP_WORDS["en"])
    return re.sub(r"\w+", lambda m: "" if m.group().lower() in stops else m.group(), real.speech)


def repeated_paragraph(real: Real) -> str:
    return "\n".join([max(lines_of(real.speech), key=len)] * 20)


def repeated_long_line(real: Real) -> str:
    lines = lines_of(real.speech)[3:11]
    return "\n".join(lines + [max(lines, key=len)] * 2)


def rewrapped_twice(real: Real) -> str:
    """The same 300 words twice, wrapped differently: no repeated line, every n-gram repeated."""
    words = real.speech.split()[:300]
    wrapped = "\n".join(" ".join(words[i : i + 7]) for i in range(0, len(words), 7))
    return " ".join(words) + "\n" + wrapped


def chinese_fragment(real: Real) -> str:
    return real.chinese[:20]


@dataclass(frozen=True)
class Case:
    reason: str
    build: Callable[[Real], str]
    disable: dict[str, Any]  # config that turns this rule off
    lang: str | None = "en"

    def original(self, real: Real) -> str:
        return real.chinese if self.lang == "zh" else real.speech

    def threshold(self) -> Any:
        ((field, off),) = self.disable.items()
        default = getattr(DEFAULTS, field)
        return default[next(iter(off))] if isinstance(off, dict) else default


CASES = [
    Case("too_few_words", three_words, {"min_words": None}),
    Case("too_many_words", whole_corpus, {"max_words": None}),
    Case("mean_word_length", clipped_words, {"min_mean_word_length": None}),
    Case("mean_word_length", glued_words, {"max_mean_word_length": None}),
    Case("symbol_ratio", hash_line, {"max_symbol_word_ratio": None}),
    Case("bullet_lines", bullet_list, {"max_bullet_lines": None}),
    Case("ellipsis_lines", truncated_lines, {"max_ellipsis_lines": None}),
    Case("alpha_words", numbers_table, {"min_alpha_words": None}),
    Case("few_stop_words", without_stop_words, {"min_stop_words": None}),
    Case("dup_lines", repeated_paragraph, {"max_dup_lines": None}),
    Case("dup_line_chars", repeated_long_line, {"max_dup_line_chars": None}),
    Case("dup_ngram_5", rewrapped_twice, {"max_dup_ngram_chars": {5: None}}),
    Case("too_few_chars", chinese_fragment, {"min_no_space_chars": None}, lang="zh"),
]
CASE_IDS = [f"{case.reason}-{case.build.__name__}" for case in CASES]


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_rule_fires_on_spoiled_document_only(case: Case, real: Real) -> None:
    stage = QualityStage(DEFAULTS)
    assert stage.check(case.original(real), case.lang) is None
    verdict = stage.check(case.build(real), case.lang)
    assert verdict is not None and verdict[0] == case.reason, verdict
    detail = verdict[1]
    assert set(detail) == {"value", "threshold"} and detail["threshold"] == case.threshold()
    assert detail["value"] != detail["threshold"]


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_null_threshold_disables_its_rule(case: Case, real: Real) -> None:
    stage = QualityStage(QualityConfig(**case.disable))
    assert reason(stage, case.build(real), case.lang) != case.reason


def test_mean_word_length_reports_the_bound_it_crossed(real: Real) -> None:
    stage = QualityStage(DEFAULTS)
    low = stage.check(clipped_words(real), "en")
    high = stage.check(glued_words(real), "en")
    assert low and low[1]["value"] < low[1]["threshold"] == DEFAULTS.min_mean_word_length
    assert high and high[1]["value"] > high[1]["threshold"] == DEFAULTS.max_mean_word_length


def spam_phrase(real: Real, n: int) -> str:
    """Insert a real n-word phrase of the speech after every third word (keyword stuffing)."""
    words = real.speech.split()
    phrase = " ".join(words[40 : 40 + n])
    return " ".join(w if i % 3 else f"{w} {phrase}" for i, w in enumerate(words))


@pytest.mark.parametrize("n", [2, 3, 4])
def test_top_ngram_rule_for_each_size(n: int, real: Real) -> None:
    limit = DEFAULTS.max_top_ngram_chars[n]
    stage = only(max_top_ngram_chars={n: limit})
    assert stage.check(real.speech, "en") is None
    assert reason(stage, spam_phrase(real, n), "en") == f"top_ngram_{n}"
    assert reason(only(max_top_ngram_chars={n: None}), spam_phrase(real, n), "en") is None
    assert reason(QualityStage(DEFAULTS), spam_phrase(real, n), "en").startswith("top_ngram_")


@pytest.mark.parametrize("n", range(5, 11))
def test_dup_ngram_rule_for_each_size(n: int, real: Real) -> None:
    limit = DEFAULTS.max_dup_ngram_chars[n]
    stage = only(max_dup_ngram_chars={n: limit})
    assert stage.check(real.speech, "en") is None
    verdict = stage.check(rewrapped_twice(real), "en")
    assert verdict == (f"dup_ngram_{n}", {"value": pytest.approx(1.0), "threshold": limit})


def reference_ngram_fractions(text: str, n: int) -> tuple[float, float]:
    """Gopher's two repetition measures, computed the slow obvious way."""
    words = re.findall(r"\w+", text.lower())
    grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
    counts = Counter(grams)
    total = sum(map(len, words))
    top = max(counts.values(), default=0)
    top_fraction = 0.0
    if top >= 2:
        top_fraction = max(top * sum(map(len, g)) for g, c in counts.items() if c == top) / total
    covered = {j for i, g in enumerate(grams) if counts[g] > 1 for j in range(i, i + n)}
    return top_fraction, sum(len(words[j]) for j in covered) / total


@pytest.mark.parametrize("n", [2, 3, 5, 8])
def test_ngram_measures_match_plain_counting(n: int, english: list[dict], multilingual: list[dict]) -> None:
    docs = [r["text"] for r in english[::20] + multilingual[::60]]
    top_stage = only(max_top_ngram_chars={n: 0.0})
    dup_stage = only(max_dup_ngram_chars={n: 0.0})
    nonzero = 0
    for text in docs:
        top, dup = reference_ngram_fractions(text, n)
        for stage, expected in ((top_stage, top), (dup_stage, dup)):
            verdict = stage.check(text, None)
            measured = verdict[1]["value"] if verdict else 0.0
            assert measured == pytest.approx(expected, abs=1e-12)
            nonzero += expected > 0
    assert nonzero >= 10, "the sample must exercise real repetition"


# --- languages -------------------------------------------------------------------------------


def test_no_space_languages_skip_word_rules(multilingual: list[dict], verdicts: dict) -> None:
    stage = QualityStage(DEFAULTS)
    docs = [r for r in multilingual if r["lang"] in ("zh", "ja")]
    with_lang = Counter(verdicts[r["id"]] for r in docs)
    assert not WORD_REASONS & set(with_lang), with_lang
    assert with_lang[None] >= 0.97 * len(docs)
    # Read as space-separated text, the same documents trip word rules: the setting matters.
    without = Counter(reason(stage, r["text"], None) for r in docs)
    assert WORD_REASONS & set(without)


def test_stop_word_rule_needs_a_known_language(real: Real) -> None:
    stage = QualityStage(DEFAULTS)
    stripped = without_stop_words(real)
    assert reason(stage, stripped, "en") == "few_stop_words"
    assert stage.check(stripped, None) is None
    assert stage.check(stripped, "fi") is None  # no Finnish list by default
    custom = QualityStage(QualityConfig(stop_words={"fi": STOP_WORDS["en"]}))
    assert reason(custom, stripped, "fi") == "few_stop_words"


def test_lone_punctuation_is_typography_not_junk(real: Real) -> None:
    """French sets ';', ':', '!' and '?' apart with spaces; that must not cost letters."""
    french_style = re.sub(r"([;:!?,])(?=\s)", r" \1", real.speech)
    assert french_style.count(" ;") + french_style.count(" ,") > 10
    strict = only(min_alpha_words=1.0)  # fires on any letterless chunk, reporting the measure
    assert strict.check(real.speech, "en") is not None  # the address has dates and numbers
    assert strict.check(french_style, "en") == strict.check(real.speech, "en")


# --- the stage ---------------------------------------------------------------------------------


def test_stage_keeps_rows_and_reports_detail(real: Real) -> None:
    texts = [real.speech, three_words(real), real.chinese, bullet_list(real), without_stop_words(real)]
    langs = ["en", "en", "zh", "en", "en"]
    table = pa.table({"id": [f"d{i}" for i in range(len(texts))], "text": texts, "lang": langs})
    stage = QualityStage(DEFAULTS)
    decision = stage.decide(table)
    assert decision.table.column("id").to_pylist() == table.column("id").to_pylist()
    assert decision.table.column("text").to_pylist() == texts
    assert {row: drop.reason for row, drop in decision.drops.items()} == {
        1: "too_few_words",
        3: "bullet_lines",
        4: "few_stop_words",
    }
    for row, drop in decision.drops.items():
        assert not drop.quarantine
        assert (drop.reason, drop.detail) == stage.check(texts[row], langs[row])
    assert decision.drops[1].detail == {"value": 3, "threshold": DEFAULTS.min_words}

    no_lang = stage.decide(table.drop_columns(["lang"]))  # stop words are not checked
    assert no_lang.table.num_rows == table.num_rows
    assert {row: drop.reason for row, drop in no_lang.drops.items()} == {1: "too_few_words", 3: "bullet_lines"}


# --- config -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "words"),
    [
        ({"min_words": -1}, ["min_words", "greater than or equal to 1"]),
        ({"max_dup_lines": 1.5}, ["max_dup_lines", "less than or equal to 1"]),
        ({"min_words": 500, "max_words": 100}, ["min_words (500)", "max_words (100)"]),
        ({"min_mean_word_length": 12}, ["min_mean_word_length", "max_mean_word_length"]),
        ({"max_top_ngram_chars": {1: 0.2}}, ["start at 2"]),
        ({"max_dup_ngram_chars": {5: 2.0}}, ["5-gram", "[0, 1]"]),
        ({"stop_words": {"en": ["The", "of"]}}, ["stop_words.en", "lower-case words", "'The'"]),
        ({"stop_words": {"en": []}}, ["stop_words.en is empty"]),
    ],
)
def test_config_rejects_bad_values_with_a_clear_message(values: dict, words: list[str]) -> None:
    with pytest.raises(ValidationError) as error:
        QualityConfig(**values)
    for word in words:
        assert word in str(error.value)


def test_bad_override_names_the_key() -> None:
    with pytest.raises(ConfigError) as error:
        load_config(None, ["prep.quality.min_words=200", "prep.quality.max_words=50"])
    assert "prep.quality" in str(error.value) and "min_words (200)" in str(error.value)
    config = load_config(None, ["prep.quality.max_dup_lines=null", "prep.quality.max_dup_ngram_chars={7: null}"])
    assert config.prep.quality.max_dup_lines is None
    assert config.prep.quality.max_dup_ngram_chars == {7: None}
    with pytest.raises(ValidationError):
        config.prep.quality.min_stop_words = 0
