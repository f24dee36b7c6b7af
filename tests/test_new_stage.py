"""Adding a stage is a local change: its own module and its config section, in a registry made from the default.

The stage below is defined in this test module, added in-process (`DEFAULT.with_stage`) and run
by `prep` between normalize and tokenize, in worker processes, with its books and lineage;
nothing of the project changes. Its settings are `prep.min_chars`, checked like any section.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import ClassVar

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from pydantic import Field

from data_prep.books import doc_stage
from data_prep.registry import DEFAULT
from data_prep.stage import TEXT, Decision, DocStage, Drop, StageSpec
from pipeline.config import ConfigError, load_config
from pipeline.ground.schema import Section
from pipeline.prep import run_prep
from tests.conftest import write_jsonl


class MinCharsConfig(Section):
    min_chars: int = Field(100, ge=0)


class MinCharsStage(DocStage):
    """Drops documents shorter than `min_chars` characters."""

    name: ClassVar[str] = "min_chars"

    def __init__(self, config: MinCharsConfig) -> None:
        self.config = config

    def decide(self, table: pa.Table) -> Decision:
        lengths = pc.utf8_length(table[TEXT]).to_pylist()
        return Decision(
            table, {row: Drop("too_short", {"chars": n}) for row, n in enumerate(lengths) if n < self.config.min_chars}
        )


STAGE = doc_stage(MinCharsStage, MinCharsConfig)
WITH_MIN_CHARS = DEFAULT.with_stage(STAGE, before="tokenize")


def test_a_stage_added_in_process_runs_between_two_stages_in_worker_processes(tmp_path: Path) -> None:
    texts = [("short " * n).strip() for n in range(1, 60)]  # 5 .. 353 characters
    corpus = write_jsonl(tmp_path / "corpus.jsonl", [{"id": f"d{i}", "text": t} for i, t in enumerate(texts)])
    output = tmp_path / "out"
    config = load_config(
        None,
        ["prep.min_chars.min_chars=120", "prep.workers=2"],
        {"prep.inputs": [str(corpus)], "prep.stages": ["normalize", "min_chars", "exact_dedup"]},
        stages=WITH_MIN_CHARS,
    )
    assert config.prep.stages == ["normalize", "exact_dedup", "min_chars"]  # in the registry's order
    run_prep(config.prep, output, show_progress=False)

    rows = {r["name"]: r for r in json.loads((output / "stats.json").read_text())["stages"]}
    too_short = sum(len(t) < 120 for t in texts)
    assert rows["min_chars"]["dropped"] == {"too_short": too_short}
    assert rows["min_chars"]["docs_in"] == rows["exact_dedup"]["docs_out"] == len(texts)
    assert rows["min_chars"]["docs_out"] == len(texts) - too_short
    clean = pq.read_table(output / "clean").column("text").to_pylist()
    assert sorted(clean) == sorted(t for t in texts if len(t) >= 120)
    lineage = pq.read_table(output / "dropped" / "min_chars-00000.parquet").to_pylist()
    assert {r["reason"] for r in lineage} == {"too_short"} and len(lineage) == too_short


def test_an_added_stage_brings_its_config_section_and_leaves_the_default_registry_alone() -> None:
    with pytest.raises(ConfigError, match=r"prep\.min_chars\.max_chars: unknown key \(allowed here: min_chars\)"):
        load_config(None, ["prep.min_chars.max_chars=3"], stages=WITH_MIN_CHARS)
    with pytest.raises(ConfigError, match="prep.min_chars: unknown key"):
        load_config(None, ["prep.min_chars.min_chars=3"])
    assert "min_chars" not in DEFAULT.names() and "min_chars" in WITH_MIN_CHARS.names()
    with pytest.raises(ValueError, match="registered already"):
        WITH_MIN_CHARS.with_stage(STAGE, before="pack")


def test_a_stage_that_workers_cannot_import_is_refused_by_name() -> None:
    local = StageSpec("local_only", MinCharsConfig, STAGE.steps)  # made inside a function: no module holds it
    with pytest.raises(pickle.PicklingError, match="local_only"):
        pickle.dumps(local)
