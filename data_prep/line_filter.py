"""line_filter: the line rules of C4 and FineWeb for text extracted from web pages.

Extracted pages keep menus, "please enable JavaScript" and cookie notices, placeholder text and code. C4
keeps only lines that end like sentences, removes lines about JavaScript and site policies and drops pages
with lorem ipsum or curly braces; FineWeb drops pages whose lines are mostly unpunctuated, short or
repeated. Each rule has its own setting, off by default but lorem ipsum (which no source wants), so that the
stage changes nothing a source did not ask for: a web source turns rules on in its own settings
(`prep.sources[].settings.line_filter`), prose and code sources keep the defaults or skip the stage.

Line rules remove lines (never blank ones, which separate paragraphs) and run first; the document rules
then read the lines that are left, and the first that fails decides the drop reason. A batch is split into
lines once with Arrow kernels, and every rule is one vectorized test over all the batch's lines.
"""

from __future__ import annotations

import json
from typing import ClassVar, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field

from data_prep.books import doc_stage
from data_prep.stage import TEXT, Decision, DocStage, Drop, replace_column
from pipeline.ground.schema import Section

NAME = "line_filter"
REMOVED, REMOVED_BY = "lines_removed", "lines_removed_by"  # per kept document: lines removed, and per rule (JSON)
POLICY_PHRASES = [
    "javascript",
    "terms of use",
    "privacy policy",
    "cookie policy",
    "uses cookies",
    "use of cookies",
    "use cookies",
]


class LineFilterConfig(Section):
    """One setting per rule; `null` or `false` turns a rule off. C4 and FineWeb values are in the descriptions."""

    terminal_punctuation: bool = Field(
        False, description="Remove lines that do not end with one of terminal_marks (C4: on)."
    )
    terminal_marks: list[str] = Field(
        default_factory=lambda: [".", "!", "?", '"'],
        min_length=1,
        description="What a sentence ends with, for terminal_punctuation and min_line_punct_ratio.",
    )
    policy_lines: bool = Field(False, description="Remove lines holding one of policy_phrases (C4: on).")
    policy_phrases: list[str] = Field(
        default_factory=lambda: list(POLICY_PHRASES),
        min_length=1,
        description="Phrases of script notices and site policies, matched in any case.",
    )
    lorem_ipsum: bool = Field(True, description="Drop documents holding 'lorem ipsum' placeholder text (C4).")
    curly_braces: Literal["off", "line", "document"] = Field(
        "off",
        description="Lines with '{' or '}': removed (line) or the document dropped (document, C4's rule "
        "against code on prose pages).",
    )
    min_line_punct_ratio: float | None = Field(
        None,
        ge=0,
        le=1,
        description="Drop documents whose share of lines ending with a terminal mark is below this (FineWeb: 0.12).",
    )
    max_short_line_ratio: float | None = Field(
        None,
        ge=0,
        le=1,
        description="Drop documents whose share of lines of at most short_line_chars characters "
        "is above this (FineWeb: 0.67).",
    )
    short_line_chars: int = Field(30, ge=1, description="A line this long or shorter is short (FineWeb: 30).")
    max_dup_line_chars: float | None = Field(
        None,
        ge=0,
        le=1,
        description="Drop documents whose characters in lines repeating an earlier line exceed "
        "this share of all line characters (FineWeb: 0.1).",
    )

    def missing(self) -> str | None:
        rules = (
            self.terminal_punctuation,
            self.policy_lines,
            self.lorem_ipsum,
            self.curly_braces != "off",
            self.min_line_punct_ratio is not None,
            self.max_short_line_ratio is not None,
            self.max_dup_line_chars is not None,
        )
        return None if any(rules) else "no rule turned on"


def _any_of(lines: pa.Array, needles: list[str], ignore_case: bool = False) -> np.ndarray:
    hit = np.zeros(len(lines), dtype=bool)
    for needle in needles:
        hit |= pc.match_substring(lines, needle, ignore_case=ignore_case).to_numpy(zero_copy_only=False)
    return hit


def _ends_with_any(lines: pa.Array, marks: list[str]) -> np.ndarray:
    hit = np.zeros(len(lines), dtype=bool)
    for mark in marks:
        hit |= pc.ends_with(lines, mark).to_numpy(zero_copy_only=False)
    return hit


def _share(part: np.ndarray, whole: np.ndarray) -> np.ndarray:
    return np.divide(part, whole, out=np.zeros(len(whole)), where=whole > 0)


class LineFilterStage(DocStage):
    """Removes lines and drops documents by the rules of `LineFilterConfig`."""

    name: ClassVar[str] = NAME

    def __init__(self, config: LineFilterConfig) -> None:
        self.config = config

    def line_rules(self, lines: pa.Array, stripped: pa.Array) -> list[tuple[str, np.ndarray]]:
        """(rule, which lines it removes) for each line rule turned on, in order of precedence."""
        cfg, rules = self.config, []
        if cfg.curly_braces == "line":
            rules.append(("curly_braces", _any_of(lines, ["{", "}"])))
        if cfg.policy_lines:
            rules.append(("policy", _any_of(lines, cfg.policy_phrases, ignore_case=True)))
        if cfg.terminal_punctuation:
            rules.append(("terminal_punctuation", ~_ends_with_any(stripped, cfg.terminal_marks)))
        return rules

    def decide(self, table: pa.Table) -> Decision:
        text = table[TEXT].combine_chunks()
        n = len(text)
        split = pc.split_pattern(text, "\n")
        lines = pc.list_flatten(split)
        doc = pc.list_parent_indices(split).to_numpy()
        stripped = pc.utf8_trim_whitespace(lines)
        length = pc.utf8_length(stripped).to_numpy()
        present = length > 0

        rules = self.line_rules(lines, stripped)
        cause = np.zeros(len(lines), dtype=np.int64)  # 0: kept; i: removed by rules[i - 1]
        for i, (_, hit) in enumerate(rules, start=1):
            cause[(cause == 0) & hit & present] = i
        removed = cause > 0
        by_rule = {rule: np.bincount(doc[cause == i], minlength=n) for i, (rule, _) in enumerate(rules, start=1)}
        lost = np.bincount(doc[removed], minlength=n)
        kept_per_doc = np.bincount(doc[~removed], minlength=n)
        offsets = pa.array(np.concatenate([[0], np.cumsum(kept_per_doc)]).astype(np.int32))
        joined = pc.binary_join(pa.ListArray.from_arrays(offsets, lines.filter(pa.array(~removed))), "\n")
        new_text = pc.if_else(pa.array(lost > 0), joined, text)

        left = ~removed & present
        verdicts = self.document_verdicts(text, stripped.filter(pa.array(left)), doc[left], length[left], lost, n)
        drops = {}
        for row in np.flatnonzero([v is not None for v in verdicts]):
            reason, detail = verdicts[row]  # type: ignore[misc]
            drops[int(row)] = Drop(reason, detail | {REMOVED: int(lost[row])})
        counts = [
            json.dumps({rule: int(c[row]) for rule, c in by_rule.items() if c[row]}, sort_keys=True) for row in range(n)
        ]
        table = replace_column(table, TEXT, new_text)
        table = replace_column(table, REMOVED, pa.array(lost.astype(np.int32)))
        return Decision(replace_column(table, REMOVED_BY, pa.array(counts, pa.string())), drops)

    def document_verdicts(
        self, text: pa.Array, lines: pa.Array, doc: np.ndarray, length: np.ndarray, lost: np.ndarray, n: int
    ) -> list[tuple[str, dict[str, float]] | None]:
        """Per document, the first document rule it fails as (reason, detail), or None. `lines` are the
        non-blank lines left after the line rules (stripped), `doc` and `length` their document and length."""
        cfg = self.config
        lines_left = np.bincount(doc, minlength=n)
        checks: list[tuple[str, np.ndarray, np.ndarray | None, float | None]] = []  # reason, fails, value, threshold
        if cfg.lorem_ipsum:
            checks.append(("lorem_ipsum", _any_of(text, ["lorem ipsum"], ignore_case=True), None, None))
        if cfg.curly_braces == "document":
            checks.append(("curly_braces", _any_of(text, ["{", "}"]), None, None))
        checks.append(("no_lines_left", (lines_left == 0) & (lost > 0), None, None))
        if cfg.min_line_punct_ratio is not None:
            ratio = _share(np.bincount(doc[_ends_with_any(lines, cfg.terminal_marks)], minlength=n), lines_left)
            checks.append(
                (
                    "line_punct_ratio",
                    (lines_left > 0) & (ratio < cfg.min_line_punct_ratio),
                    ratio,
                    cfg.min_line_punct_ratio,
                )
            )
        if cfg.max_short_line_ratio is not None:
            ratio = _share(np.bincount(doc[length <= cfg.short_line_chars], minlength=n), lines_left)
            checks.append(("short_line_ratio", ratio > cfg.max_short_line_ratio, ratio, cfg.max_short_line_ratio))
        if cfg.max_dup_line_chars is not None:
            ratio = _share(self.repeated_chars(lines, doc, length, n), np.bincount(doc, weights=length, minlength=n))
            checks.append(("dup_line_chars", ratio > cfg.max_dup_line_chars, ratio, cfg.max_dup_line_chars))
        verdicts: list[tuple[str, dict[str, float]] | None] = [None] * n
        for reason, fails, value, threshold in checks:
            for row in np.flatnonzero(fails):
                if verdicts[row] is None:
                    detail = {} if value is None else {"value": round(float(value[row]), 4), "threshold": threshold}
                    verdicts[row] = (reason, detail)  # type: ignore[assignment]
        return verdicts

    @staticmethod
    def repeated_chars(lines: pa.Array, doc: np.ndarray, length: np.ndarray, n: int) -> np.ndarray:
        """Per document, the characters of its lines that repeat an earlier line of the same document."""
        if len(lines) == 0:
            return np.zeros(n)
        identity = pc.dictionary_encode(lines).indices.to_numpy().astype(np.int64)
        key = doc.astype(np.int64) * (int(identity.max()) + 1) + identity
        _, first = np.unique(key, return_index=True)
        repeat = np.ones(len(lines), dtype=bool)
        repeat[first] = False
        return np.bincount(doc[repeat], weights=length[repeat], minlength=n)

    def tally(self, kept: pa.Table) -> dict[str, dict[str, int]]:
        by_rule: dict[str, int] = {}
        for counts in kept[REMOVED_BY].to_pylist():
            for rule, count in json.loads(counts).items():
                by_rule[rule] = by_rule.get(rule, 0) + count
        lost = kept[REMOVED].to_numpy()
        return {
            NAME: {
                "documents_changed": int((lost > 0).sum()),
                REMOVED: int(lost.sum()),
                **{f"{REMOVED}/{rule}": count for rule, count in sorted(by_rule.items())},
            }
        }


STAGE = doc_stage(LineFilterStage, LineFilterConfig, default=False)
