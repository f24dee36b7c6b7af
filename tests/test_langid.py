"""Language ID with the real lid.176 model on real text in 15 languages (tests/data)."""

from __future__ import annotations

from collections import Counter

import pyarrow as pa
import pytest

from data_prep.langid import LangIdConfig, LangIdStage
from pipeline.config import ConfigError, load_config
from pipeline.ground.errors import UserError
from tests.conftest import read_set


@pytest.fixture(scope="module")
def stage() -> LangIdStage:
    stage = LangIdStage(LangIdConfig(min_score=0.0))
    stage.setup()
    return stage


def test_accuracy_on_documents_of_200_chars_or_more(stage: LangIdStage) -> None:
    docs = [d for d in read_set("multilingual") if len(d["text"]) >= 200]
    decision = stage.decide(pa.table({"id": [d["id"] for d in docs], "text": [d["text"] for d in docs]}))
    predicted = decision.table["lang"].to_pylist()
    languages = Counter(d["lang"] for d in docs)
    assert len(languages) >= 10
    accuracy = sum(p == d["lang"] for p, d in zip(predicted, docs)) / len(docs)
    assert accuracy >= 0.99, f"accuracy {accuracy:.4f} on {len(docs)} documents"
    for lang in languages:
        rows = [p == d["lang"] for p, d in zip(predicted, docs) if d["lang"] == lang]
        assert sum(rows) / len(rows) >= 0.95, f"{lang}: {sum(rows)}/{len(rows)}"


def test_keep_list_and_threshold_drop_with_lang_and_score() -> None:
    docs = read_set("multilingual")[::25]
    stage = LangIdStage(LangIdConfig(keep_languages=["de", "fr"], min_score=0.9))
    stage.setup()
    decision = stage.decide(pa.table({"id": [d["id"] for d in docs], "text": [d["text"] for d in docs]}))
    langs = decision.table["lang"].to_pylist()
    scores = decision.table["lang_score"].to_pylist()
    for row, (lang, score) in enumerate(zip(langs, scores)):
        drop = decision.drops.get(row)
        if lang not in ("de", "fr"):
            assert drop and drop.reason == "language_not_kept" and drop.detail["lang"] == lang
        elif score < 0.9:
            assert drop and drop.reason == "low_language_score"
        else:
            assert drop is None
    assert any(lang in ("de", "fr") for lang in langs) and decision.drops


def test_missing_model_and_bad_language_codes_are_explained(tmp_path) -> None:
    stage = LangIdStage(LangIdConfig(model_path=tmp_path / "nope.ftz"))
    with pytest.raises(UserError, match="langid.model_path"):
        stage.setup()
    with pytest.raises(ConfigError, match="keep_languages"):
        load_config(None, ["prep.langid.keep_languages=[]"])
