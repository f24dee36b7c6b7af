"""`crucible status`: where a run stands, for any run folder this tool writes.

A folder made by `submit` is asked of Slurm too (`executors.slurm.status`). Any other folder is
read from what it holds: a prep work folder's step folders (each knows its task count and
fingerprint, and each finished task leaves a marker), a training folder's metrics, events and
checkpoint pointer. Nothing is imported from the trainer, so the answer comes at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from data_prep import registry
from data_prep.books import marker_file
from pipeline.ground.errors import UserError
from pipeline.ground.layout import PrepFolder, RunFolder, TrainFolder
from pipeline.ground.markers import read_jsonl, read_marker, read_pointer


@dataclass
class StepStatus:
    """A scheduled step (a Slurm or Ray run): its tasks, those done, and the others by state."""

    part: str
    total: int
    done: int
    states: dict[str, list[int]]  # state (Slurm's names: RUNNING, PENDING, FAILED ...) -> tasks
    job_ids: list[str]


@dataclass
class LocalStatus:
    folder: Path
    prep: Path | None  # the prep output folder (with work/), if any
    steps: list[tuple[str, int, int]]  # (step, tasks, done) in pipeline order
    published: bool  # stats.json written: clean/, shards/ are current
    train: Path | None  # the training folder, if any
    last_metrics: dict[str, Any] | None
    latest_checkpoint: str | None
    events: list[dict[str, Any]]


def _step_order(name: str) -> tuple[int, int]:
    """Pipeline order: the stage's place in the registry, then the step's place in its stage."""
    stages = [*registry.FIRST, *registry.DEFAULT.stages]
    for i, stage in enumerate(stages):
        names = [stage.step_name(step) for step in stage.steps]
        if name in names:
            return i, names.index(name)
    return len(stages), 0


def prep_steps(work: Path) -> list[tuple[str, int, int]]:
    """(step, tasks, tasks done) for every step folder under `work`."""
    rows = []
    for step_file in sorted(work.glob("*/step.json"), key=lambda p: _step_order(p.parent.name)):
        step = read_marker(step_file) or {}
        name, n_tasks = step_file.parent.name, int(step.get("n_tasks", 0))
        done = sum(
            (read_marker(marker_file(work, name, t)) or {}).get("fingerprint") == step.get("fingerprint")
            for t in range(n_tasks)
        )
        rows.append((name, n_tasks, done))
    return rows


def local_status(folder: Path) -> LocalStatus:
    """The state of a `run`, `prep` or `train` output folder."""
    if not folder.exists():
        raise UserError(f"no such folder: {folder}")
    run = RunFolder(folder)
    prep = next((p for p in (run.data, PrepFolder(folder)) if p.holds_a_prep()), None)
    train = next((t for t in (run.train, TrainFolder(folder)) if t.holds_a_run()), None)
    if prep is None and train is None:
        raise UserError(
            f"{folder} holds no Crucible run: expected work/ (from prep), metrics.jsonl or "
            f"checkpoints/ (from train), or data/ and train/ (from run)"
        )
    metrics = [m for m in read_jsonl(train.metrics) if "loss" in m] if train else []
    return LocalStatus(
        folder=folder,
        prep=Path(prep.root) if prep else None,
        steps=prep_steps(prep.work) if prep else [],
        published=bool(prep and prep.local_stats.exists()),
        train=train.root if train else None,
        last_metrics=metrics[-1] if metrics else None,
        latest_checkpoint=read_pointer(train.latest) if train else None,
        events=read_jsonl(train.events) if train else [],
    )
