"""`run` refuses what cannot work before it spends time on prep, each time in one sentence."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.ground.errors import UserError
from tests.conftest import REPO, read_set, write_jsonl
from data_prep.shards import SplitIndex
from tests.conftest import hand_made_manifest
from training.preflight import check_disk, check_same_model, check_splits


def crucible_run(tmp_path: Path, *overrides: str) -> subprocess.CompletedProcess[str]:
    corpus = write_jsonl(tmp_path / "docs.jsonl", [{"text": r["text"]} for r in read_set("english", 20)])
    args = [
        sys.executable,
        "-m",
        "pipeline",
        "run",
        "--output",
        str(tmp_path / "run"),
        "--no-progress",
        "--set",
        f"prep.inputs=[{corpus}]",
    ]
    for override in overrides:
        args += ["--set", override]
    return subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=300)


def test_a_layout_that_cannot_run_is_refused_before_prep(tmp_path: Path) -> None:
    result = crucible_run(tmp_path, "launch.nproc_per_node=3", "parallel.tp=3", "model.n_heads=4")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == ["crucible run: n_heads 4 and n_kv_heads 2 must be divisible by tp 3"]
    assert not (tmp_path / "run" / "data").exists()


def write_checkpoint(run_dir: Path, model: dict) -> None:
    step = run_dir / "checkpoints" / "step-00000010"
    step.mkdir(parents=True)
    (step / "crucible.json").write_text(
        json.dumps({"step": 10, "healthy": True, "files": {}, "config": {"model": model}})
    )
    (run_dir / "checkpoints" / "latest").write_text("step-00000010")


def test_a_run_folder_of_another_model_is_refused_in_one_sentence(tmp_path: Path) -> None:
    from pipeline.config import load_config

    model = load_config(None).model.model_dump(mode="json")
    write_checkpoint(tmp_path / "run" / "train", model | {"d_model": 128})
    result = crucible_run(tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip() == (
        f"crucible run: {tmp_path / 'run' / 'train'} holds a checkpoint of another model "
        f"(d_model 128 -> 64): use a new --output, or --resume none to start over there"
    )
    check_same_model(tmp_path / "run" / "train", model | {"d_model": 128}, "auto")  # the same model passes
    check_same_model(tmp_path / "run" / "train", model, "none")  # and so does starting over


def test_empty_splits_and_a_full_disk_are_named(tmp_path: Path) -> None:
    manifest = hand_made_manifest(64, {"train": SplitIndex(sequences=103), "val": SplitIndex(sequences=0, documents=1)})
    with pytest.raises(UserError, match="the validation split is empty .* train.eval_batches=0"):
        check_splits(manifest, tmp_path, needs_validation=True)
    check_splits(manifest, tmp_path, needs_validation=False)
    with pytest.raises(UserError, match="train split is empty"):
        check_splits(hand_made_manifest(64, {"train": SplitIndex(sequences=0)}), tmp_path, needs_validation=False)
    with pytest.raises(UserError, match="GB free: free space, lower checkpoint.keep_last"):
        check_disk(tmp_path / "not" / "yet", params=10**15, keep=2)
    check_disk(tmp_path, params=1000, keep=2)
