"""Data prep end to end on real text: accounting, lineage, sharding and stage selection."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from pipeline.config import load_config
from pipeline.prep import run_prep


def prep(inputs: list[Path], output: Path, *overrides: str) -> dict:
    config = load_config(None, list(overrides))
    config.prep.inputs = inputs
    return run_prep(config.prep, output, show_progress=False)


def read_dir(folder: Path) -> list[dict]:
    return [row for part in sorted(folder.glob("*.parquet")) for row in pq.read_table(part).to_pylist()]


@pytest.fixture(scope="module")
def full_run(mixed_corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    output = tmp_path_factory.mktemp("full")
    return output, prep([mixed_corpus], output, "prep.shard_mb=0.5")


def test_every_document_is_accounted_for(full_run: tuple[Path, dict], mixed_corpus: Path) -> None:
    output, stats = full_run
    names = [s.name for s in stats.stages]
    assert names == [
        "read",
        "unique_ids",
        "extract",
        "normalize",
        "exact_dedup",
        "minhash_dedup",
        "langid",
        "pii",
        "quality",
    ]
    n_lines = sum(1 for _ in open(mixed_corpus, encoding="utf-8"))
    assert stats.stages[0].docs_in == n_lines
    for before, stage in zip(stats.stages, stats.stages[1:]):
        assert stage.docs_in == before.docs_out
    for stage in stats.stages:
        assert stage.docs_in == stage.docs_out + sum(stage.dropped.values()) + sum(stage.quarantined.values())
    clean, dropped = read_dir(output / "clean"), read_dir(output / "dropped")
    assert len(clean) == stats.stages[-1].docs_out
    by_stage = {s.name: sum(s.dropped.values()) for s in stats.stages}
    for name, n in by_stage.items():
        assert sum(1 for d in dropped if d["stage"] == name) == n
    assert {d["id"] for d in dropped}.isdisjoint(d["id"] for d in clean)
    assert (output / "stats.json").read_text() == stats.to_json()


def test_clean_schema_and_lineage_details(full_run: tuple[Path, dict]) -> None:
    output, stats = full_run
    clean = pq.read_table(output / "clean" / "part-00000.parquet")
    assert clean.column_names[:4] == ["id", "text", "lang", "lang_score"]
    assert all(lang for lang in clean["lang"].to_pylist())
    dropped = read_dir(output / "dropped")
    near = [json.loads(d["detail"]) for d in dropped if d["reason"] == "near_duplicate"]
    assert near and all({"duplicate_of", "jaccard"} <= set(d) for d in near)
    clean_ids = set(clean["id"].to_pylist()) | {r["id"] for r in read_dir(output / "clean")}
    after_langid = [d for d in dropped if d["stage"] in ("pii", "quality")]
    assert after_langid and all({"lang", "lang_score"} <= set(json.loads(d["detail"])) for d in after_langid)
    assert clean_ids


def test_shard_count_does_not_change_results(full_run: tuple[Path, dict], mixed_corpus: Path, tmp_path: Path) -> None:
    output, stats = full_run
    assert stats.shards > 1
    single = prep([mixed_corpus], tmp_path, "prep.shard_mb=64", "prep.workers=1")
    assert single.shards == 1
    strip = lambda s: [row.model_dump(exclude={"seconds"}) for row in s.stages]  # noqa: E731
    assert strip(single) == strip(stats)
    assert read_dir(tmp_path / "clean") == read_dir(output / "clean")


def test_stage_subset_runs_only_named_stages(mixed_corpus: Path, tmp_path: Path) -> None:
    config = load_config(None, [])
    config.prep.inputs = [mixed_corpus]
    config.prep.stages = ["pii", "langid"]
    stats = run_prep(config.prep, tmp_path, show_progress=False)
    assert [s.name for s in stats.stages] == ["read", "unique_ids", "langid", "pii"]
    assert stats.stages[1].docs_in == stats.stages[0].docs_out


def test_rerun_of_finished_run_does_no_work(full_run: tuple[Path, dict], mixed_corpus: Path) -> None:
    output, stats = full_run
    markers = {p: p.stat().st_mtime_ns for p in (output / "work").rglob("done-*.json")}
    before = {p: p.read_bytes() for p in (output / "clean").iterdir()}
    again = prep([mixed_corpus], output, "prep.shard_mb=0.5")
    assert {p: p.stat().st_mtime_ns for p in (output / "work").rglob("done-*.json")} == markers
    assert {p: p.read_bytes() for p in (output / "clean").iterdir()} == before
    assert again == stats


def test_changed_threshold_reruns_only_that_stage_and_what_follows(mixed_corpus: Path, tmp_path: Path) -> None:
    prep([mixed_corpus], tmp_path, "prep.shard_mb=0.5")
    markers = {p: p.stat().st_mtime_ns for p in (tmp_path / "work").rglob("done-*.json")}
    stats = prep([mixed_corpus], tmp_path, "prep.shard_mb=0.5", "prep.quality.min_words=400")
    rerun = {p.parent.name for p, t in markers.items() if not p.exists() or p.stat().st_mtime_ns != t}
    assert rerun == {
        "quality",
        "tokenize.train",
        "tokenize",
        "pack",
        "split_overlap.sample",
        "split_overlap.scan",
        "split_overlap",
    }
    assert stats.stages[-1].dropped.get("too_few_words", 0) > 0


def test_every_progress_bar_ends_at_its_total(
    mixed_corpus: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What each step's tasks report adds up to the total its bar was given (docs, tasks, hashes...)."""
    import pipeline.executors.local as local

    bars: dict[str, list] = {}

    class Bar:
        def __init__(self, total: int | None, desc: str, **_: object) -> None:
            bars[desc.strip()] = [total, 0]
            self.name = desc.strip()

        def update(self, n: int) -> None:
            bars[self.name][1] += n

        def close(self) -> None:
            pass

    monkeypatch.setattr(local, "tqdm", Bar)
    prep([mixed_corpus], tmp_path, "prep.shard_mb=0.5")
    assert "tokenize.train" in bars and "minhash_dedup.buckets" in bars
    unfinished = {name: done for name, (total, done) in bars.items() if total is not None and done != total}
    assert not unfinished, (unfinished, bars)


@pytest.mark.parametrize("user_choice", [None, "mimalloc"])
def test_crucible_processes_use_the_system_allocator_unless_told(user_choice: str | None) -> None:
    """Arrow's mimalloc keeps what a global task frees; Crucible's processes pick the system allocator."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "ARROW_DEFAULT_MEMORY_POOL"}
    if user_choice:
        env["ARROW_DEFAULT_MEMORY_POOL"] = user_choice
    probe = "import pipeline.cli, pyarrow; print(pyarrow.default_memory_pool().backend_name)"
    result = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == (user_choice or "system")


def test_progress_in_a_log_is_plain_lines_without_carriage_returns(tmp_path: Path) -> None:
    """stderr to a file (a job's log): each step says its count once it ends, with no bar redraws joined by \\r."""
    import subprocess
    import sys

    from tests.conftest import REPO, read_set, write_jsonl

    corpus = write_jsonl(tmp_path / "docs.jsonl", [{"id": r["id"], "text": r["text"]} for r in read_set("english", 40)])
    with open(tmp_path / "prep.log", "wb") as log:
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "pipeline",
                "prep",
                "--input",
                str(corpus),
                "--output",
                str(tmp_path / "out"),
                "--stages",
                "normalize,exact_dedup",
            ],
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=log,
            timeout=300,
        )
    logged = (tmp_path / "prep.log").read_bytes()
    assert result.returncode == 0, logged[-2000:]
    assert b"\r" not in logged
    lines = logged.decode().splitlines()
    assert any(line.startswith("normalize: 40 of 40 docs, done in") for line in lines), lines
    assert any(line.startswith("exact_dedup.find: 40 of 40 hashes, done in") for line in lines), lines
