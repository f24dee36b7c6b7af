"""Shared fixtures: real text from the test sets in tests/data, written as pipeline inputs."""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import zstandard

# Two test workers on two cores: one compute thread per process (set before torch loads, and inherited by every
# process a test starts). More threads on the tests' tiny models only contend with the other worker.
os.environ.setdefault("OMP_NUM_THREADS", "1")

from data_prep.shards import ShardManifest, SplitIndex, TokenizerRecord
from launch.torchrun import free_port
from tests.running_item import RUNNING
from tests.s3_server import S3Server
from tests.trainer_harness import leaves_no_trace

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "tests" / "data"  # built by scripts/build_test_data.py; see SOURCES.md there


def read_set(name: str, limit: int | None = None) -> list[dict]:
    """The first `limit` records of tests/data/NAME.jsonl.zst (all when None)."""
    records = []
    stream = zstandard.ZstdDecompressor().stream_reader(open(DATA / f"{name}.jsonl.zst", "rb"), closefd=True)
    with io.TextIOWrapper(stream, encoding="utf-8") as handle:
        for line in handle:
            records.append(json.loads(line))
            if limit is not None and len(records) >= limit:
                break
    return records


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    return path


@pytest.fixture(scope="session")
def mixed_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """~900 real documents: multilingual, near-duplicates, English prose, as one JSONL file."""
    records = read_set("multilingual", 400) + read_set("neardup", 400) + read_set("english", 100)
    keep = [{"id": r["id"], "text": r["text"]} for r in records]
    return write_jsonl(tmp_path_factory.mktemp("corpus") / "mixed.jsonl", keep)


def english_shards(tmp_path_factory: pytest.TempPathFactory, name: str, records: list[dict], *settings: str) -> Path:
    """Shards (vocab 512, seq_len 64) of `records` prepped by normalize, tokenize and pack, with `settings` on top."""
    from pipeline.config import load_config
    from pipeline.prep import run_prep

    corpus = write_jsonl(tmp_path_factory.mktemp(f"{name}_corpus") / "english.jsonl", records)
    output = tmp_path_factory.mktemp(name)
    config = load_config(
        None,
        [
            "prep.stages=[normalize, tokenize, pack]",
            "prep.tokenizer.vocab_size=512",
            "prep.pack.seq_len=64",
            "prep.pack.val_fraction=0.1",
            *settings,
        ],
    )
    config.prep.inputs = [corpus]
    run_prep(config.prep, output, show_progress=False)
    return output / "shards"


@pytest.fixture(scope="session")
def tiny_shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Packed shards (vocab 512, seq_len 64) of 150 real English documents, for training tests."""
    return english_shards(
        tmp_path_factory, "tiny_shards", [{"id": r["id"], "text": r["text"]} for r in read_set("english", 150)]
    )


@pytest.fixture(scope="session")
def s3() -> Iterator[S3Server]:
    """A real S3 API on 127.0.0.1 (moto's server in a subprocess), with the standard AWS_* variables pointing at
    it for this process and every command it starts; tests make their own buckets."""
    server = S3Server()
    server.start()
    saved = {key: os.environ.get(key) for key in server.env}
    os.environ.update(server.env)
    yield server
    server.kill()
    for key, value in saved.items():
        os.environ.pop(key) if value is None else os.environ.__setitem__(key, value)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    RUNNING[:] = [item]


def torchrun(
    nproc: int, *args: str, timeout: int = 900, check: bool = True, launcher_args: tuple[str, ...] = ()
) -> subprocess.CompletedProcess[str]:
    """Run `python -m pipeline ARGS` under torchrun with `nproc` local processes (gloo on CPU). Only a test marked
    slow may: `make test-fast` starts no torchrun."""
    if RUNNING and RUNNING[0].get_closest_marker("slow") is None:
        raise AssertionError(f"{RUNNING[0].nodeid} starts torchrun: mark it slow (or its file, in SLOW_FILES)")
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        str(nproc),
        "--rdzv-backend",
        "c10d",
        "--rdzv-endpoint",
        f"127.0.0.1:{free_port()}",
        *launcher_args,
        "-m",
        "pipeline",
        *args,
    ]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(
            f"torchrun failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}"
        )
    return result


def crucible_in_process(*args: object) -> subprocess.CompletedProcess[str]:
    """`crucible ARGS` through the front door in this process: its exit status and what it printed, as a
    subprocess would give them, without a new interpreter's imports (seconds each). Process groups and
    environment variables that the verb leaves are undone, so the next test starts clean."""
    from pipeline.cli import main

    argv = [str(arg) for arg in args]
    stdout, stderr = io.StringIO(), io.StringIO()
    with leaves_no_trace(), contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        try:
            status = main(argv)
        except SystemExit as exit_:  # --help and --version end in argparse's exit
            status = int(exit_.code or 0)
    return subprocess.CompletedProcess(argv, status, stdout.getvalue(), stderr.getvalue())


def one_rank(*args: object) -> subprocess.CompletedProcess[str]:
    """A training verb (`train`, `sft`, `dpo`, `generate`) as one rank in this process, the single-process
    reference of the multi-rank tests; a non-zero exit fails the test."""
    result = crucible_in_process(*args)
    if result.returncode != 0:
        raise AssertionError(
            f"crucible {args[0]} failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}"
        )
    return result


def ranks(nproc: int, *args: str) -> subprocess.CompletedProcess[str]:
    """`crucible ARGS` on `nproc` ranks: one runs in this process, more under torchrun."""
    return one_rank(*args) if nproc == 1 else torchrun(nproc, *args)


def hand_made_manifest(seq_len: int, splits: dict[str, SplitIndex], pad_id: int = 1) -> ShardManifest:
    """The manifest of shards a test wrote itself (vocabulary 4096, a tokenizer the loader never reads)."""
    return ShardManifest(
        seq_len=seq_len,
        row_width=seq_len + 1,
        packing="concat",
        token_type="uint16",
        tokenizer=TokenizerRecord(file="tokenizer.json", sha256="0" * 64, vocab_size=4096, eod_id=0, pad_id=pad_id),
        splits=splits,
    )


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


# Files whose tests start real ranks, Slurm jobs or whole runs: minutes each on two cores.
# `make test-fast` (pytest -m "not slow") leaves them out; `make test` and CI run everything.
SLOW_FILES = {
    "test_checkpoint.py",
    "test_train_equivalence.py",
    "test_slurm_submit.py",
    "test_slurm_cluster.py",
    "test_launch.py",
    "test_run_verb.py",
    "test_resume.py",
    "test_generate_export.py",
    "test_toy_world.py",
    "test_outputs_unchanged.py",
    "test_preflight.py",
    "test_shared_machine.py",
}


# The longest files, longest first (minutes each on two cores): run first, so that no worker starts one of them
# while the other has nothing left to do. pytest-xdist hands out files in collection order with
# --no-loadscope-reorder (the Makefile's); by default it sorts them by their number of tests.
LONGEST_FIRST = [
    "test_checkpoint.py",
    "test_safe_checkpoints.py",
    "test_post_training.py",
    "test_cloud_training.py",
    "test_slurm_submit.py",
    "test_resume.py",
    "test_task_eval.py",
    "test_train_equivalence.py",
    "test_generate_export.py",
    "test_run_verb.py",
    "test_launch.py",
    "test_toy_world.py",
    "test_train_errors.py",
    "test_mixture_resume.py",
    "test_trackers.py",
    "test_ray_executor.py",
]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.name in SLOW_FILES:
            item.add_marker(pytest.mark.slow)
    rank = {name: place for place, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: each file's tests keep their order
