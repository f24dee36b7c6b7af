"""Training with shards and checkpoints on object storage (moto's S3 server on 127.0.0.1, one rank on gloo):
the same losses from shards that prep published to a bucket as from local disk, a resume with a wiped shard
cache, and a resume on a machine without the run folder from the remote checkpoints, where an upload that was
cut off is never chosen."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from pipeline.ground import storage
from tests.chat_data import write_chat
from tests.conftest import metrics, one_rank
from tests.s3_server import S3Server

pytestmark = pytest.mark.slow

BASE = [
    "--set",
    "train.global_batch_size=8",
    "--set",
    "train.micro_batch_size=2",
    "--set",
    "train.eval_interval=1000",
    "--set",
    "train.warmup_steps=3",
    "--set",
    "train.decay_steps=30",
    "--set",
    "train.peak_tflops=1",
]


def train(data: str, run: Path, steps: int, *extra: str) -> dict[int, float]:
    one_rank("train", "--data", data, "--output", str(run), *BASE, "--set", f"train.max_steps={steps}", *extra)
    return {r["step"]: r["loss"] for r in metrics(run)}


@pytest.fixture(autouse=True)
def machine_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What the runs download for themselves stays in the test's folder."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "machine-cache"))


def events(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "events.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def local_losses(tiny_shards: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[int, float]:
    """Six steps from the shards on local disk: what every run from object storage must match."""
    return train(str(tiny_shards), tmp_path_factory.mktemp("local") / "run", 6)


@pytest.fixture(scope="module")
def remote_shards(s3: S3Server, tiny_shards: Path, tmp_path_factory: pytest.TempPathFactory) -> str:
    """tiny_shards' prep again, its inputs read from and its outputs published to object storage."""
    from pipeline.config import load_config
    from pipeline.prep import run_prep

    s3.make_bucket("cloud-training")
    s3.upload_folder(
        Path(json.loads((tiny_shards / "manifest.json").read_text())["prep_config"]["inputs"][0]).parent,
        "s3://cloud-training/raw",
    )
    config = load_config(
        None,
        [
            "prep.stages=[normalize, tokenize, pack]",
            "prep.tokenizer.vocab_size=512",
            "prep.pack.seq_len=64",
            "prep.pack.val_fraction=0.1",
        ],
    )
    config.prep.inputs = ["s3://cloud-training/raw"]
    run_prep(config.prep, "s3://cloud-training/prep", show_progress=False, work=tmp_path_factory.mktemp("work"))
    return "s3://cloud-training/prep/shards"


def test_training_from_s3_matches_local_and_resumes_with_an_empty_cache(
    local_losses: dict[int, float], remote_shards: str, tiny_shards: Path, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    first = train(remote_shards, tmp_path / "run", 3, "--set", f"train.shard_cache.folder={cache}")
    assert first == {step: local_losses[step] for step in (1, 2, 3)}
    assert list((cache / "objects").glob("*.arrow")), "the shards came through the cache"
    shutil.rmtree(cache)
    resumed = train(remote_shards, tmp_path / "run", 6, "--set", f"train.shard_cache.folder={cache}")
    assert [e["step"] for e in events(tmp_path / "run") if e["event"] == "resume"] == [3]
    assert {step: resumed[step] for step in (4, 5, 6)} == {step: local_losses[step] for step in (4, 5, 6)}
    meta = json.loads((tmp_path / "run" / "checkpoints" / "step-00000006" / "crucible.json").read_text())
    assert meta["data_dir"] == remote_shards
    # eval --heldout reads the validation split where the run read its shards: the same scores as from disk
    from pipeline.cli import main

    for name, data in (("remote", []), ("local", ["--data", str(tiny_shards)])):
        assert (
            main(
                [
                    "eval",
                    "--checkpoint",
                    str(tmp_path / "run"),
                    "--heldout",
                    "--output",
                    str(tmp_path / f"{name}.json"),
                    *data,
                ]
            )
            == 0
        )
    remote, local = (json.loads((tmp_path / f"{name}.json").read_text())["heldout"] for name in ("remote", "local"))
    assert remote == local and remote["(all)"]["rows"] > 0


def test_a_run_resumes_from_its_remote_checkpoints_without_its_folder(
    s3: S3Server, tiny_shards: Path, local_losses: dict[int, float], tmp_path: Path
) -> None:
    s3.make_bucket("cloud-checkpoints")
    remote = [
        "--set",
        "checkpoint.remote=s3://cloud-checkpoints/run",
        "--set",
        "checkpoint.interval=2",
        "--set",
        "checkpoint.keep_last=1",
    ]
    run = tmp_path / "run"
    train(str(tiny_shards), run, 4, *remote)
    assert [e["step"] for e in events(run) if e["event"] == "upload"] == [2, 4]
    assert storage.listing("s3://cloud-checkpoints/run") == {"step-00000004": 0}, "keep_last applies remotely"
    # An upload of step 5 that was cut off: every file but crucible.json, which goes last.
    for path in (run / "checkpoints" / "step-00000004").iterdir():
        if path.name != "crucible.json":
            storage.upload(path, f"s3://cloud-checkpoints/run/step-00000005/{path.name}")
    shutil.rmtree(run)
    resumed = train(str(tiny_shards), run, 6, *remote)
    assert [(e["event"], e["step"]) for e in events(run) if e["event"] in ("download", "resume")] == [
        ("download", 4),
        ("resume", 4),
    ]
    assert {step: resumed[step] for step in (5, 6)} == {step: local_losses[step] for step in (5, 6)}
    sampled = one_rank(
        "generate", "--checkpoint", "s3://cloud-checkpoints/run", "--prompt", "The", "--max-new-tokens", "4"
    )
    assert "step-00000006" in sampled.stdout and "continuation" in sampled.stdout, "sampled from the newest remote one"
    # SFT from that remote checkpoint, its chat file in the bucket too
    chat = write_chat(tmp_path / "chat.jsonl", 40)
    storage.upload(chat, "s3://cloud-checkpoints/chat/chat.jsonl")
    post = tmp_path / "sft"
    one_rank(
        "sft",
        "--checkpoint",
        "s3://cloud-checkpoints/run",
        "--data",
        "s3://cloud-checkpoints/chat/chat.jsonl",
        "--output",
        str(post),
        *BASE,
        "--set",
        "train.max_steps=2",
        "--set",
        "train.warmup_steps=1",
        "--set",
        "train.eval_batches=0",
    )
    assert (post / "source" / "chat.jsonl").read_bytes() == chat.read_bytes()
    assert [r["step"] for r in metrics(post)] == [1, 2]
