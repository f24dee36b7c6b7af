"""The `prep` verb's engine: plan the run, execute it, publish the outputs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.config import PrepConfig
from pipeline.executors.local import run_local
from pipeline.outputs import publish
from pipeline.plan import build_plan


def run_prep(config: PrepConfig, output: Path, show_progress: bool = True) -> dict[str, Any]:
    """Run (or resume) data prep into `output` and return its stats."""
    plan = build_plan(config)
    work = output / "work"
    work.mkdir(parents=True, exist_ok=True)
    run_local(plan, work, config.workers, show_progress)
    return publish(plan, work, output)
