"""Layouts that cannot run are refused with a clear message before any process group starts."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.config import ConfigError, load_config
from training.config import LayoutError, check_layout

REPO = Path(__file__).resolve().parents[1]


def layout(*overrides: str, world: int) -> int:
    config = load_config(None, list(overrides))
    return check_layout(config.model, config.parallel, config.train, world)


def test_valid_layout_gives_dp() -> None:
    assert layout("parallel.tp=2", "parallel.pp=2", world=8) == 2


@pytest.mark.parametrize(("overrides", "world", "message"), [
    (["parallel.tp=3", "model.n_heads=4"], 3, "divisible by tp 3"),
    (["parallel.pp=8", "model.n_layers=4"], 8, "fewer than pipeline stages"),
    (["parallel.tp=2"], 3, "world size 3 is not a multiple"),
    (["train.global_batch_size=8", "train.micro_batch_size=4"], 4, "not divisible by micro_batch_size 4 x dp 4"),
])
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
    result = subprocess.run([sys.executable, "-m", "pipeline", "train", "--data", str(tiny_shards), "--output",
                             str(tmp_path), "--set", "train.seq_len=128"], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 2
    assert "seq_len 64" in result.stderr and "manifest.json" in result.stderr
    assert not (tmp_path / "metrics.jsonl").exists()


def test_cli_refuses_world_size_mismatch(tiny_shards: Path, tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "pipeline", "train", "--data", str(tiny_shards), "--output",
                             str(tmp_path), "--set", "parallel.tp=2"], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 2 and "world size 1 is not a multiple of tp*pp" in result.stderr


def test_a_user_error_on_every_rank_prints_one_line_under_the_agent(tiny_shards: Path, tmp_path: Path) -> None:
    """Under `launch.agent` (what `run` and the Slurm job use), two ranks refusing the same config end
    in one message and exit status 2, without torchrun's traceback."""
    from launch.torchrun import free_port

    result = subprocess.run([sys.executable, "-m", "launch.agent", "--nproc_per_node", "2", "--rdzv-backend", "c10d",
                             "--rdzv-endpoint", f"127.0.0.1:{free_port()}", "-m", "pipeline", "train", "--data",
                             str(tiny_shards), "--output", str(tmp_path), "--set", "train.seq_len=128"],
                            cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert result.stderr.count("crucible train:") == 1 and "seq_len 64" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout and "ChildFailedError" not in result.stderr
