"""Trainings beside each other on one machine: a run folder is one job's, and a single process needs no port."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from launch.torchrun import free_port
from tests.conftest import REPO, metrics

SMALL = [
    "--set",
    "train.global_batch_size=8",
    "--set",
    "train.micro_batch_size=2",
    "--set",
    "train.eval_interval=1000",
    "--set",
    "train.warmup_steps=1",
    "--set",
    "train.peak_tflops=1",
]


def train_command(shards: Path, run: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "pipeline", "train", "--data", str(shards), "--output", str(run), *SMALL, *extra]


def test_a_second_train_into_a_folder_in_use_is_refused_and_the_first_finishes(
    tiny_shards: Path, tmp_path: Path
) -> None:
    run, reached, go = tmp_path / "run", tmp_path / "reached", tmp_path / "go"
    pause = f'hooks=[{{target: "tests.fault_hooks:PauseAt", args: {{step: 1, reached: "{reached}", go: "{go}"}}}}]'
    first = subprocess.Popen(
        train_command(tiny_shards, run, "--set", "train.max_steps=3", "--set", pause),
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 300
        while not reached.exists() and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert reached.exists(), "the first run reached its first step"
        # Under the agent rank 0 holds the lock and refuses; rank 1 learns it from rank 0 instead of waiting.
        agent = subprocess.run(
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
                *train_command(tiny_shards, run, "--set", "train.max_steps=3")[1:],
            ],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=300,
        )
        single = subprocess.run(
            train_command(tiny_shards, run, "--set", "train.max_steps=3"),
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=300,
        )
    finally:
        go.touch()
    _, err = first.communicate(timeout=300)
    assert first.returncode == 0, err[-3000:]
    for second in (agent, single):
        assert second.returncode == 2, second.stderr[-3000:]
        assert second.stderr.count("crucible train:") == 1 and f"in use by PID {first.pid} " in second.stderr
        assert "Traceback" not in second.stderr + second.stdout
    assert [r["step"] for r in metrics(run)] == [1, 2, 3]
    assert (
        subprocess.run(
            train_command(tiny_shards, run, "--set", "train.max_steps=4"),
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=300,
        ).returncode
        == 0
    ), "released at the end"


def test_a_single_process_train_needs_no_port(tiny_shards: Path, tmp_path: Path) -> None:
    """Port 29500, the rendezvous default, held by another program (another single-process run)."""
    env = {k: v for k, v in os.environ.items() if k not in ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE")}
    with socket.socket(socket.AF_INET6) as held:
        held.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # past a closed run's TIME_WAIT
        try:
            held.bind(("::", 29500))
            held.listen()
        except OSError:
            pass  # someone holds it already
        result = subprocess.run(
            train_command(tiny_shards, tmp_path / "run", "--set", "train.max_steps=1"),
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
    assert result.returncode == 0, result.stderr[-3000:]
