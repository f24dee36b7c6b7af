"""Layouts that cannot run are refused with a clear message before any process group starts."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.config import ConfigError, load_config
from tests.conftest import crucible_in_process
from training.config import LayoutError, check_layout

REPO = Path(__file__).resolve().parents[1]


def layout(*overrides: str, world: int) -> int:
    config = load_config(None, list(overrides))
    return check_layout(config.model, config.parallel, config.train, world)


def test_valid_layout_gives_dp() -> None:
    assert layout("parallel.tp=2", "parallel.pp=2", world=8) == 2


@pytest.mark.parametrize(
    ("overrides", "world", "message"),
    [
        (["parallel.tp=3", "model.n_heads=4"], 3, "divisible by tp 3"),
        (["parallel.pp=8", "model.n_layers=4"], 8, "fewer than pipeline stages"),
        (["parallel.tp=2"], 3, "world size 3 is not a multiple"),
        (["train.global_batch_size=8", "train.micro_batch_size=4"], 4, "not divisible by micro_batch_size 4 x dp 4"),
    ],
)
def test_bad_layouts_are_explained(overrides: list[str], world: int, message: str) -> None:
    with pytest.raises(LayoutError, match=message):
        layout(*overrides, world=world)


def test_zero_2_and_3_with_pipeline_are_refused_at_config_time() -> None:
    for stage in (2, 3):
        with pytest.raises(ConfigError, match="pipeline engine supports ZeRO 0 or 1"):
            load_config(None, ["parallel.pp=2", f"parallel.zero_stage={stage}"])


def test_compile_with_zero_3_is_refused_at_config_time() -> None:
    with pytest.raises(ConfigError, match="compile with zero_stage 3"):
        load_config(None, ["parallel.compile=true", "parallel.zero_stage=3"])
    assert load_config(None, ["parallel.compile=true", "parallel.zero_stage=2"]).parallel.compile


def test_model_shapes_are_checked() -> None:
    with pytest.raises(ConfigError, match="n_kv_heads"):
        load_config(None, ["model.n_heads=4", "model.n_kv_heads=3"])
    assert load_config(None, ["model.preset=7b"]).model.d_model == 4096
    assert load_config(None, ["model.preset=7b", "model.n_layers=2"]).model.n_layers == 2


def test_cli_refuses_seq_len_mismatch_before_training(tiny_shards: Path, tmp_path: Path) -> None:
    result = crucible_in_process(
        "train",
        "--data",
        str(tiny_shards),
        "--output",
        str(tmp_path),
        "--set",
        "train.seq_len=128",
    )
    assert result.returncode == 2
    assert "seq_len 64" in result.stderr and "manifest.json" in result.stderr
    assert not (tmp_path / "metrics.jsonl").exists()


def test_cli_refuses_world_size_mismatch(tiny_shards: Path, tmp_path: Path) -> None:
    result = crucible_in_process(
        "train",
        "--data",
        str(tiny_shards),
        "--output",
        str(tmp_path),
        "--set",
        "parallel.tp=2",
    )
    assert result.returncode == 2 and "world size 1 is not a multiple of tp*pp" in result.stderr


@pytest.mark.slow
def test_a_user_error_on_every_rank_prints_one_line_under_the_agent(tiny_shards: Path, tmp_path: Path) -> None:
    """Under `launch.agent` (what `run` and the Slurm job use), two ranks refusing the same config end
    in one message and exit status 2, without torchrun's traceback."""
    from launch.torchrun import free_port

    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "launch.agent",
            "--nproc_per_node",
            "2",
            "--rdzv-backend",
            "c10d",
            "--rdzv-endpoint",
            f"127.0.0.1:{free_port()}",
            "-m",
            "pipeline",
            "train",
            "--data",
            str(tiny_shards),
            "--output",
            str(tmp_path),
            "--set",
            "train.seq_len=128",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2
    assert result.stderr.count("crucible train:") == 1 and "seq_len 64" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout and "ChildFailedError" not in result.stderr


def test_no_validation_split_is_refused_with_the_fix_and_eval_batches_0_trains_without(tmp_path: Path) -> None:
    from pipeline.prep import run_prep
    from tests.conftest import read_set, write_jsonl

    corpus = write_jsonl(tmp_path / "docs.jsonl", [{"id": r["id"], "text": r["text"]} for r in read_set("english", 60)])
    config = load_config(
        None,
        [
            "prep.stages=[normalize, tokenize, pack]",
            "prep.tokenizer.vocab_size=512",
            "prep.pack.seq_len=64",
            "prep.pack.val_fraction=0",
        ],
    )
    config.prep.inputs = [corpus]
    run_prep(config.prep, tmp_path / "prep", show_progress=False)
    train = [
        "train",
        "--data",
        str(tmp_path / "prep" / "shards"),
        "--set",
        "model.d_model=32",
        "--set",
        "model.n_layers=1",
        "--set",
        "model.n_heads=2",
        "--set",
        "model.n_kv_heads=1",
        "--set",
        "model.ffn_hidden=64",
        "--set",
        "train.max_steps=3",
        "--set",
        "train.eval_interval=1",
        "--set",
        "checkpoint.enabled=false",
    ]
    refused = crucible_in_process(*train, "--output", str(tmp_path / "refused"))
    assert refused.returncode == 2 and "Traceback" not in refused.stderr, refused.stderr[-2000:]
    assert "the validation split is empty" in refused.stderr and "train.eval_batches=0" in refused.stderr

    ran = crucible_in_process(*train, "--output", str(tmp_path / "run"), "--set", "train.eval_batches=0")
    assert ran.returncode == 0, ran.stderr[-2000:]
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "loss" in r]
    assert [r["step"] for r in steps] == [1, 2, 3]
    assert not any(key.startswith("val_loss") for r in records for key in r)


def test_a_validation_split_short_of_one_global_batch_is_named_with_its_fixes(
    tiny_shards: Path, tmp_path: Path
) -> None:
    val_rows = json.loads((tiny_shards / "manifest.json").read_text())["splits"]["val"]["sequences"]
    result = crucible_in_process(
        "train",
        "--data",
        str(tiny_shards),
        "--output",
        str(tmp_path),
        "--set",
        f"train.global_batch_size={val_rows + 1}",
        "--set",
        "train.micro_batch_size=1",
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
    [line] = [line for line in result.stderr.splitlines() if line.startswith("crucible train:")]
    assert (
        f"the validation split holds {val_rows:,} rows, fewer than one global batch of {val_rows + 1:,} "
        f"(train.global_batch_size)"
    ) in line
    assert all(
        fix in line
        for fix in ("add data", "prep.pack.val_fraction", "lower train.global_batch_size", "train.eval_batches=0")
    )


def test_a_warmup_longer_than_the_run_is_one_warning_line_and_trains(tiny_shards: Path, tmp_path: Path) -> None:
    """Said, not refused: short smoke runs keep the default warmup of 10 steps on purpose."""
    result = crucible_in_process(
        "train",
        "--data",
        str(tiny_shards),
        "--output",
        str(tmp_path),
        "--set",
        "train.max_steps=2",
        "--set",
        "train.warmup_steps=5",
        "--set",
        "train.lr=0.002",
        "--set",
        "model.d_model=32",
        "--set",
        "model.n_layers=1",
        "--set",
        "model.n_heads=2",
        "--set",
        "model.n_kv_heads=1",
        "--set",
        "model.ffn_hidden=64",
        "--set",
        "checkpoint.enabled=false",
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert [line for line in result.stderr.splitlines() if "train.warmup_steps" in line] == [
        "warning: train.warmup_steps 5 is longer than the run (train.max_steps 2): the learning rate never reaches "
        "train.lr 0.002; lower train.warmup_steps or raise train.max_steps"
    ]


@pytest.mark.slow  # starts torchrun's agent
def test_pipeline_stages_without_weight_matrices_are_refused_in_one_line(tiny_shards: Path, tmp_path: Path) -> None:
    """Two layers over two stages partitioned by layer count leave the last stage only the final norm and the tied
    head: its optimizer has no group to decay, and DeepSpeed's per-group norm reduction would hang the first step."""
    from launch.torchrun import free_port

    tiny = [
        "model.preset=null",
        "model.d_model=32",
        "model.n_layers=2",
        "model.n_heads=2",
        "model.n_kv_heads=2",
        "model.ffn_hidden=64",
        "train.global_batch_size=4",
        "train.micro_batch_size=2",
        "train.max_steps=2",
        "parallel.pp=2",
        "parallel.partition_method=uniform",
    ]
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "launch.agent",
            "--nproc_per_node",
            "2",
            "--rdzv-backend",
            "c10d",
            "--rdzv-endpoint",
            f"127.0.0.1:{free_port()}",
            "-m",
            "pipeline",
            "train",
            "--data",
            str(tiny_shards),
            "--output",
            str(tmp_path),
            *[arg for setting in tiny for arg in ("--set", setting)],
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.count("crucible train:") == 1
    assert "pipeline stage(s) [1] of 2 hold no weight matrices" in result.stderr
    assert "parallel.partition_method=type:Block" in result.stderr
    assert not (tmp_path / "metrics.jsonl").exists()
