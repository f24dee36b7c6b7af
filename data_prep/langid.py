"""langid: label every document with fastText's lid.176 and keep the configured languages.

fastText predicts per line, so newlines become spaces first; the batch form of
`predict` is used because the single-string form breaks with numpy 2. The model file comes
from set-up (no download at run time); point `langid.model_path` at lid.176.bin for the
larger, slightly more accurate model.
"""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path
from typing import ClassVar

import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field, field_validator

from data_prep.books import doc_stage
from data_prep.fasttext_models import LABEL_PREFIX, load_fasttext
from data_prep.stage import LANG, TEXT, Decision, DocStage, Drop, replace_column
from pipeline.ground.errors import UserError
from pipeline.ground.schema import Section


def default_model_path() -> Path:
    """Where `make setup` installs lid.176.ftz: inside the virtual environment."""
    return Path(sys.prefix) / "share" / "crucible" / "lid.176.ftz"


class LangIdConfig(Section):
    """Which model, which languages to keep, and how sure the model must be."""

    model_path: Path | None = Field(None, description="lid.176.ftz/.bin; default: the one set-up installs.")
    keep_languages: list[str] | None = Field(
        None, description="ISO 639 codes to keep, e.g. [en, de]; null keeps every language."
    )
    min_score: float = Field(0.5, ge=0, le=1, description="Documents scored below this are dropped.")

    @field_validator("keep_languages")
    @classmethod
    def _codes(cls, codes: list[str] | None) -> list[str] | None:
        if codes is not None and (not codes or any(not c or not c.replace("-", "").isalpha() for c in codes)):
            raise ValueError("keep_languages must be a non-empty list of language codes like [en, de], or null")
        return codes

    def resolved_model_path(self) -> Path:
        path = self.model_path or default_model_path()
        if not path.exists():
            raise UserError(
                f"language-ID model not found at {path}: run `make setup`, or set langid.model_path "
                "to a local lid.176.ftz or lid.176.bin"
            )
        return path


class FastTextLanguageId:
    """The raw kernel: batch prediction of (language, score) for texts."""

    def __init__(self, model_path: Path) -> None:
        self.model = load_fasttext(
            model_path,
            "language-ID model",
            "set prep.langid.model_path to a lid.176.ftz or lid.176.bin, or run `make setup`",
        )

    def predict(self, texts: list[str]) -> tuple[list[str], list[float]]:
        labels, scores = self.model.predict(texts, k=1)
        langs = [label[0][len(LABEL_PREFIX) :] if label else "unknown" for label in labels]
        return langs, [float(score[0]) if len(score) else 0.0 for score in scores]


class LangIdStage(DocStage):
    name: ClassVar[str] = "langid"

    def __init__(self, config: LangIdConfig) -> None:
        self.config = config
        self.model: FastTextLanguageId | None = None

    def setup(self) -> None:
        self.model = FastTextLanguageId(self.config.resolved_model_path())

    def decide(self, table: pa.Table) -> Decision:
        assert self.model is not None, "setup() loads the model"
        one_line = pc.replace_substring(table[TEXT], "\n", " ").to_pylist()  # fastText splits on the rest itself
        langs, scores = self.model.predict(one_line)
        keep = set(self.config.keep_languages) if self.config.keep_languages else None
        drops: dict[int, Drop] = {}
        for row, (lang, score) in enumerate(zip(langs, scores)):
            if keep is not None and lang not in keep:
                drops[row] = Drop("language_not_kept", {"lang": lang, "score": round(score, 4)})
            elif score < self.config.min_score:
                drops[row] = Drop("low_language_score", {"lang": lang, "score": round(score, 4)})
        table = replace_column(table, LANG, pa.array(langs, pa.string()))
        table = replace_column(table, "lang_score", pa.array(scores, pa.float32()))
        return Decision(table, drops)

    def tally(self, kept: pa.Table) -> dict[str, dict[str, int]]:
        return {"languages": dict(Counter(kept.column(LANG).to_pylist()))}


STAGE = doc_stage(LangIdStage, LangIdConfig)
