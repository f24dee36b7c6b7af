"""The tokenizer trains on a deterministic sample of the clean documents, capped in bytes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from data_prep.pack import is_validation
from data_prep.tokenizer import in_sample
from tests.conftest import crucible_in_process


def train(corpus: Path, output: Path, max_bytes: int) -> dict:
    result = crucible_in_process(
        "prep",
        "--input",
        str(corpus),
        "--output",
        str(output),
        "--no-progress",
        "--set",
        "prep.stages=[tokenize,pack]",
        "--set",
        "prep.tokenizer.vocab_size=600",
        "--set",
        f"prep.tokenizer.max_train_bytes={max_bytes}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads((output / "stats.json").read_text())["tokens"]


def test_sample_is_whole_under_the_cap_else_capped_and_deterministic(mixed_corpus: Path, tmp_path: Path) -> None:
    total = sum(len(json.loads(line)["text"].encode()) for line in mixed_corpus.read_text().splitlines())
    whole = train(mixed_corpus, tmp_path / "whole", total + 1000)
    assert whole["tokenizer_train_bytes"] == total and whole["tokenizer_train_documents"] == whole["documents"]

    cap = total // 4
    first, second = train(mixed_corpus, tmp_path / "a", cap), train(mixed_corpus, tmp_path / "b", cap)
    assert first["tokenizer_train_bytes"] == second["tokenizer_train_bytes"]
    assert (tmp_path / "a" / "tokenizer" / "tokenizer.json").read_bytes() == (
        tmp_path / "b" / "tokenizer" / "tokenizer.json"
    ).read_bytes()
    assert cap * 0.5 < first["tokenizer_train_bytes"] <= cap + 200_000  # at most one document over the cap
    assert first["tokenizer_train_documents"] < whole["documents"] * 0.5


@pytest.mark.parametrize("rate", [0.01, 0.02, 0.2])
def test_sample_draws_independently_of_the_validation_split(rate: float) -> None:
    """A validation document is in the sample as often as any other: at the sample's rate, not always."""
    ids = [f"doc-{i}" for i in range(200_000)]
    validation = [i for i in ids if is_validation(i, 0.02)]
    sampled = sum(in_sample(i, rate) for i in validation) / len(validation)
    assert abs(sampled - rate) < 4 * (rate * (1 - rate) / len(validation)) ** 0.5 + 1e-3
    assert abs(sum(in_sample(i, rate) for i in ids) / len(ids) - rate) < 0.005
