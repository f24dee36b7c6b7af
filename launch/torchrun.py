"""Build torchrun command lines for `crucible train`, on one node or many."""

from __future__ import annotations

import socket
import sys
from pathlib import Path

from launch.config import LaunchConfig


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def local_train_command(launch: LaunchConfig, config: Path | None, overrides: list[str], data: Path,
                        output: Path) -> list[str]:
    """torchrun on this machine only (a standalone rendezvous on a free port)."""
    command = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1",
               "--nproc_per_node", str(launch.nproc_per_node), "--max-restarts", str(launch.max_restarts),
               "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{free_port()}",
               "-m", "pipeline", "train", "--data", str(data), "--output", str(output)]
    if config is not None:
        command += ["--config", str(config)]
    for assignment in overrides:
        command += ["--set", assignment]
    return command
