"""normalize: one Unicode form, repaired encoding, no control characters, sane sizes.

Everything after this stage compares and hashes text, so it must see one canonical form: NFC
(or NFKC), Unix line ends, no C0/C1 control characters but tab and newline. Input that is not
text at all (binary junk, an empty record, a document too large to be one) is quarantined here
rather than dropped, because it says something about the input, not about quality.
All work is vectorized with Arrow compute kernels over the whole batch.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field

from data_prep.books import doc_stage
from data_prep.readers import REPLACEMENT, UTF8_ERRORS
from data_prep.stage import TEXT, Decision, DocStage, Drop, replace_column
from pipeline.ground.schema import Section

CONTROL = r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]"
JUNK = CONTROL[:-1] + REPLACEMENT + "]"


class NormalizeConfig(Section):
    """Canonical text form and what counts as not-a-document."""

    form: Literal["NFC", "NFKC"] = "NFC"
    invalid_utf8: Literal["repair", "quarantine"] = Field(
        "repair", description="repair: drop the invalid bytes; quarantine: set the document aside."
    )
    max_chars: int = Field(1_000_000, ge=1, description="Longer documents are quarantined.")
    max_junk_fraction: float = Field(
        0.05, ge=0, le=1, description="Share of control/replacement characters that marks binary junk."
    )


class NormalizeStage(DocStage):
    name: ClassVar[str] = "normalize"

    def __init__(self, config: NormalizeConfig) -> None:
        self.config = config

    def decide(self, table: pa.Table) -> Decision:
        cfg = self.config
        raw = table[TEXT]
        errors = table[UTF8_ERRORS] if UTF8_ERRORS in table.column_names else None
        lengths = pc.utf8_length(raw).to_pylist()
        junk = pc.count_substring_regex(raw, JUNK).to_pylist()

        text = raw
        if errors is not None and cfg.invalid_utf8 == "repair":
            repaired = pc.replace_substring(text, REPLACEMENT, "")
            text = pc.if_else(pc.greater(errors, 0), repaired, text)
        text = pc.replace_substring(text, "\r\n", "\n")
        text = pc.replace_substring_regex(text, CONTROL, "")
        text = pc.utf8_normalize(text, cfg.form)
        blank = pc.equal(pc.utf8_length(pc.utf8_trim_whitespace(text)), 0).to_pylist()

        bad_bytes = errors.to_pylist() if errors is not None else [0] * len(lengths)
        drops: dict[int, Drop] = {}
        for row, (length, n_junk, n_bad, is_blank) in enumerate(zip(lengths, junk, bad_bytes, blank)):
            if length > cfg.max_chars:
                drops[row] = Drop("too_long", {"chars": length, "limit": cfg.max_chars}, quarantine=True)
            elif length and n_junk / length > cfg.max_junk_fraction:
                drops[row] = Drop("binary_junk", {"junk_fraction": round(n_junk / length, 4)}, quarantine=True)
            elif n_bad and cfg.invalid_utf8 == "quarantine":
                drops[row] = Drop("invalid_utf8", {"invalid_sequences": n_bad}, quarantine=True)
            elif is_blank:
                drops[row] = Drop("empty_text", {}, quarantine=True)
        table = replace_column(table, TEXT, text)
        if errors is not None:
            table = table.drop_columns([UTF8_ERRORS])
        return Decision(table, drops)


STAGE = doc_stage(NormalizeStage, NormalizeConfig)
