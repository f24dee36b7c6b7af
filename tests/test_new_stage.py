"""Adding a stage is a local change: its own module, one registry line, its config section.

The stage below lives in a file the test writes, and is registered by a launcher script the
way a line in `data_prep/registry.py` would list it; nothing else of the project changes. Prep
then runs it between quality and tokenize, in worker processes, with its books and lineage.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pyarrow.parquet as pq

from tests.conftest import REPO, write_jsonl

STAGE_MODULE = '''
"""Drops documents shorter than `min_chars` characters."""

from typing import ClassVar

import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field

from data_prep.books import doc_stage
from data_prep.stage import TEXT, Decision, DocStage, Drop
from pipeline.ground.schema import Section


class MinCharsConfig(Section):
    min_chars: int = Field(100, ge=0)


class MinCharsStage(DocStage):
    name: ClassVar[str] = "min_chars"

    def __init__(self, config: MinCharsConfig) -> None:
        self.config = config

    def decide(self, table: pa.Table) -> Decision:
        lengths = pc.utf8_length(table[TEXT]).to_pylist()
        return Decision(table, {row: Drop("too_short", {"chars": n})
                                for row, n in enumerate(lengths) if n < self.config.min_chars})


STAGE = doc_stage(MinCharsStage, MinCharsConfig)
'''

LAUNCHER = """
import sys

sys.path.insert(0, {folder!r})

from data_prep import registry
import min_chars

registry.register(min_chars.STAGE, before="tokenize")

if __name__ == "__main__":
    from pipeline.cli import main

    raise SystemExit(main())
"""


def crucible_with_stage(folder: Path, *args: str) -> subprocess.CompletedProcess[str]:
    (folder / "min_chars.py").write_text(textwrap.dedent(STAGE_MODULE))
    launcher = folder / "crucible_with_stage.py"
    launcher.write_text(textwrap.dedent(LAUNCHER.format(folder=str(folder))))
    return subprocess.run([sys.executable, str(launcher), *args], cwd=REPO, capture_output=True, text=True, timeout=600)


def test_a_registered_stage_runs_through_prep(tmp_path: Path) -> None:
    texts = [("short " * n).strip() for n in range(1, 60)]  # 5 .. 353 characters
    corpus = write_jsonl(tmp_path / "corpus.jsonl", [{"id": f"d{i}", "text": t} for i, t in enumerate(texts)])
    output = tmp_path / "out"
    result = crucible_with_stage(
        tmp_path,
        "prep",
        "--input",
        str(corpus),
        "--output",
        str(output),
        "--no-progress",
        "--stages",
        "normalize,min_chars",
        "--set",
        "prep.min_chars.min_chars=120",
        "--set",
        "prep.workers=2",
    )
    assert result.returncode == 0, result.stderr[-3000:]

    row = {r["name"]: r for r in json.loads((output / "stats.json").read_text())["stages"]}["min_chars"]
    too_short = sum(len(t) < 120 for t in texts)
    assert row["dropped"] == {"too_short": too_short}
    assert row["docs_in"] == len(texts) and row["docs_out"] == len(texts) - too_short
    clean = pq.read_table(output / "clean").column("text").to_pylist()
    assert sorted(clean) == sorted(t for t in texts if len(t) >= 120)
    lineage = pq.read_table(output / "dropped" / "min_chars-00000.parquet").to_pylist()
    assert {r["reason"] for r in lineage} == {"too_short"} and len(lineage) == too_short


def test_a_registered_stage_brings_its_config_section(tmp_path: Path) -> None:
    result = crucible_with_stage(tmp_path, "plan", "--set", "prep.min_chars.max_chars=3")
    assert result.returncode == 2
    assert "prep.min_chars.max_chars: unknown key (allowed here: min_chars)" in result.stderr
