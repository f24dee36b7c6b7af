"""torchrun command lines for `crucible train`, on one node or many."""

from __future__ import annotations

import socket
import sys
from pathlib import Path

from launch.config import LaunchConfig


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def torchrun_command(
    endpoint: str,
    nnodes: int,
    nproc_per_node: int,
    max_restarts: int,
    shutdown_seconds: int,
    run_id: str,
    train_args: list[str],
) -> list[str]:
    """One torchrun agent (with one-line user errors, `launch.agent`) with a c10d rendezvous at `endpoint`
    (host:port), running `crucible train`."""
    return [
        sys.executable,
        "-m",
        "launch.agent",
        "--nnodes",
        str(nnodes),
        "--nproc_per_node",
        str(nproc_per_node),
        "--max-restarts",
        str(max_restarts),
        "--shutdown-timeout",
        str(shutdown_seconds),
        "--rdzv-backend",
        "c10d",
        "--rdzv-endpoint",
        endpoint,
        "--rdzv-id",
        run_id,
        "-m",
        "pipeline",
        "train",
        *train_args,
    ]


def train_args(config: Path | None, overrides: list[str], data: Path, output: Path) -> list[str]:
    args = ["--data", str(data), "--output", str(output)]
    if config is not None:
        args += ["--config", str(config)]
    for assignment in overrides:
        args += ["--set", assignment]
    return args


def local_train_command(
    launch: LaunchConfig, config: Path | None, overrides: list[str], data: Path, output: Path
) -> list[str]:
    """torchrun on this machine only (a rendezvous on a free local port)."""
    return torchrun_command(
        f"127.0.0.1:{free_port()}",
        1,
        launch.nproc_per_node,
        launch.max_restarts,
        launch.shutdown_seconds,
        "local",
        train_args(config, overrides, data, output),
    )
