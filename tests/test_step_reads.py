"""A prep step declares the steps whose files it reads and what publishing takes from it; the plan orders by
the reads, a task can open nothing else, seals and reruns follow them (a step reruns when a step it read was
rebuilt into other bytes, and only then), and publishing takes what the steps declare."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from data_prep.books import marker_file
from data_prep.registry import DEFAULT
from data_prep.shards import read_manifest
from data_prep.stage import (
    OVERLAP_MEASURE,
    SHARD_FILES,
    TOKEN_COUNTS,
    StageSpec,
    StepSpec,
    TaskContext,
    UndeclaredRead,
    single,
    tasks_done,
)
from data_prep.tokenizer import TOKENIZE, TRAIN, tokens_file
from pipeline.config import load_config
from pipeline.executors.steps import READS_FILE, SEAL_FILE, seal_step
from pipeline.ground.errors import UserError
from pipeline.ground.layout import PrepFolder
from pipeline.prep import prepare_steps, run_prep
from pipeline.prep_graph import build_prep_graph
from pipeline.ground.schema import Section
from tests.conftest import REPO

SAMPLE = REPO / "data" / "sample" / "corpus-02.jsonl.zst"
SETTINGS = ["prep.tokenizer.vocab_size=512", "prep.pack.seq_len=64", "prep.pack.val_fraction=0.1", "prep.workers=1"]


class NoSettings(Section):
    pass


def _count_documents(ctx: TaskContext) -> dict[str, Any]:
    """Opens tokenize's files: declared by `COUNTS`, not by `SNEAK`."""
    folder = ctx.folder_of(TOKENIZE)
    documents = sum(pa.ipc.open_file(tokens_file(folder, i)).read_all().num_rows for i in range(len(ctx.shards)))
    ctx.report(1)
    return {"tokens": {"counted_documents": documents}}


COUNTS = StageSpec(
    "counts",
    NoSettings,
    (
        StepSpec(
            "",
            _count_documents,
            tasks=single,
            unit="task",
            units=tasks_done,
            reads=(TOKENIZE,),
            publishes=(TOKEN_COUNTS,),
        ),
    ),
)
SNEAK = StageSpec("sneak", NoSettings, (StepSpec("", _count_documents, tasks=single, unit="task", units=tasks_done),))


def config(stages: list[str], registry: Any = DEFAULT) -> Any:
    loaded = load_config(None, SETTINGS, {"prep.inputs": [str(SAMPLE)], "prep.stages": stages}, stages=registry)
    return loaded.prep


def test_the_plan_lists_what_each_step_reads() -> None:
    steps = {s.name: s for s in build_prep_graph(config(["normalize", "minhash_dedup", "tokenize", "pack"])).steps}
    assert steps["pack"].reads == ("minhash_dedup.filter", TRAIN, TOKENIZE, "minhash_dedup.clusters")
    assert steps["tokenize"].reads == ("minhash_dedup.filter", TRAIN)
    assert steps["minhash_dedup.clusters"].reads == ("normalize", "minhash_dedup.signatures", "minhash_dedup.buckets")
    without = {s.name: s for s in build_prep_graph(config(["normalize", "tokenize", "pack"])).steps}
    assert without["pack"].reads == ("normalize", TRAIN, TOKENIZE)  # no minhash_dedup: its groups are not read


def test_a_stage_placed_before_a_step_it_reads_is_refused_in_one_line() -> None:
    early = DEFAULT.with_stage(COUNTS, before="tokenize")
    with pytest.raises(UserError, match=r"step counts reads tokenize, which the plan runs after it"):
        build_prep_graph(config(["normalize", "counts", "tokenize", "pack"], early))


def test_a_step_that_reads_what_it_did_not_declare_is_stopped(tmp_path: Path) -> None:
    sneaky = DEFAULT.with_stage(SNEAK, before="pack")
    with pytest.raises(RuntimeError, match=r"step sneak failed: step sneak opened the files of tokenize without") as e:
        run_prep(config(["normalize", "tokenize", "sneak", "pack"], sneaky), tmp_path / "out", show_progress=False)
    assert isinstance(e.value.__cause__, UndeclaredRead)


def test_publishing_takes_what_the_steps_declare(tmp_path: Path) -> None:
    declared = DEFAULT.with_stage(COUNTS, before="pack")
    prep = config(["normalize", "tokenize", "counts", "pack", "split_overlap"], declared)
    plan = build_prep_graph(prep)
    assert [s.name for s in plan.publishing(TOKEN_COUNTS)] == [TRAIN, TOKENIZE, "counts", "pack"]
    assert [s.name for s in plan.publishing(SHARD_FILES)] == ["pack"]
    assert [s.name for s in plan.publishing(OVERLAP_MEASURE)] == ["split_overlap"]
    stats = run_prep(prep, tmp_path / "out", show_progress=False)
    assert stats.tokens is not None and stats.tokens["counted_documents"] == _documents(tmp_path / "out")
    assert stats.tokens["counts_seconds"] >= 0 and stats.split_overlap is not None


def _documents(output: Path) -> int:
    manifest = read_manifest(PrepFolder(output).local_shards)
    return manifest.split("train").documents + manifest.split("val").documents


def _drop_last_document(path: Path) -> None:
    table = pa.ipc.open_file(path).read_all()
    path.chmod(0o644)
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table.slice(0, table.num_rows - 1))


def test_a_step_reruns_when_a_step_it_read_was_rebuilt_into_other_bytes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    prep = config(["normalize", "tokenize", "pack"])
    output = tmp_path / "out"
    run_prep(prep, output, show_progress=False)
    work, before = PrepFolder(output).work, _documents(output)
    pack_marker = marker_file(work, "pack", 0)
    sealed_at = pack_marker.stat().st_mtime_ns

    (work / TOKENIZE / "tokens-00000.arrow").unlink()  # rebuilt into the same bytes: pack stays
    run_prep(prep, output, show_progress=False)
    assert pack_marker.stat().st_mtime_ns == sealed_at
    assert "changed since this step read it" not in capsys.readouterr().out

    tokenize = build_prep_graph(prep).step(TOKENIZE)  # as a new version of tokenize would: other bytes, sealed
    _drop_last_document(tokens_file(work / TOKENIZE, 0))
    for name in (SEAL_FILE, READS_FILE):
        (work / TOKENIZE / name).unlink()
    seal_step(work, tokenize)
    run_prep(prep, output, show_progress=False)
    assert "pack: tokenize changed since this step read it; rebuilding it" in capsys.readouterr().out.replace("\n", "")
    assert pack_marker.stat().st_mtime_ns != sealed_at
    assert _documents(output) == before - 1


def test_a_scheduled_prep_clears_what_reads_a_step_it_reruns(tmp_path: Path) -> None:
    """Slurm prepares every step before any task runs: a step whose input reruns from its start is cleared too."""
    prep = config(["normalize", "tokenize", "pack"])
    output = tmp_path / "out"
    run_prep(prep, output, show_progress=False)
    work = PrepFolder(output).work
    (work / TOKENIZE / "step.json").unlink()  # tokenize's folder no longer knows its config: it reruns whole
    todo = prepare_steps(prep, output)
    assert todo["normalize"] == [] and todo[TOKENIZE] == [0] and todo["pack"] == [0]
    assert not marker_file(work, "pack", 0).exists()
