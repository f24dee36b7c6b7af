"""Run another `crucible` verb in a child process, as `run` does for its side jobs (the toy world, the demo)."""

from __future__ import annotations

import subprocess
import sys

from pipeline.ground.errors import UserError


def run_crucible(args: list[str], settings: list[str], what: str) -> None:
    """`python -m pipeline ARGS --set S ...` to the end; its last error line, as `what` failing, if it fails."""
    command = [sys.executable, "-m", "pipeline", *args, *[arg for setting in settings for arg in ("--set", setting)]]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise UserError(f"{what}: {result.stderr.strip().splitlines()[-1:]}")
