"""The Slurm executor (`crucible submit` and `crucible status`): a run as a chain of Slurm jobs.

The chain: one array job per data-prep step (split where a step has more tasks than the
cluster's MaxArraySize), each after the one before succeeded (`afterok`); a publishing job (its
tasks in `prep.workers` processes, then the manifest and stats.json); the training job. A submission first prepares the step folders and asks each step which tasks lack a
completion marker, and submits only those: resubmitting after a failure or a `scancel` reruns
just the tasks that did not finish. Everything lands in RUN/slurm: the config snapshot every job
reads, the scripts (runnable by hand, see submit.sh), jobs.json and the logs.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from launch import slurm
from launch.sbatch import (
    RunPaths,
    Script,
    array_spec,
    by_hand_script,
    prep_single_script,
    prep_task_script,
    train_script,
)
from pipeline.config import CrucibleConfig, load_config
from pipeline.executors.steps import pending_tasks
from pipeline.ground.atomic import write_json, write_text
from pipeline.ground.errors import UserError
from pipeline.ground.markers import read_jsonl
from pipeline.ground.layout import TrainFolder
from pipeline.prep_graph import PrepGraph, build_prep_graph
from pipeline.prep import prepare_steps
from pipeline.status import StepStatus


@dataclass
class Job:
    part: str  # a step name, "publish" or "train"
    script: Script
    tasks: list[int] = field(default_factory=list)  # step tasks this job runs (array jobs)
    offset: int = 0
    array: str | None = None
    after: list[str] = field(default_factory=list)
    job_id: str | None = None


def run_paths(config: CrucibleConfig, output: Path) -> RunPaths:
    return RunPaths(output.resolve(), Path.cwd(), config.launch.slurm.python or sys.executable)


def step_jobs(
    plan: PrepGraph, paths: RunPaths, config: CrucibleConfig, pending: dict[str, list[int]], max_size: int
) -> list[list[Job]]:
    """Per step, its array jobs: one per block of `max_size` tasks, each with the pending indices."""
    slurm_cfg, groups = config.launch.slurm, []
    for step in plan.steps:
        group = []
        for offset in range(0, step.n_tasks, max_size):
            count = min(max_size, step.n_tasks - offset)
            script = prep_task_script(paths, config.run_name, slurm_cfg, step.name, count, offset)
            tasks = [t for t in pending[step.name] if offset <= t < offset + count]
            array = array_spec([t - offset for t in tasks], slurm_cfg.prep.max_parallel) if tasks else None
            group.append(Job(step.name, script, tasks, offset, array))
        groups.append(group)
    return groups


def last_submission(paths: RunPaths) -> list[dict[str, Any]]:
    """The jobs of the latest submission, as recorded in jobs.json (none before the first)."""
    record = paths.jobs
    return json.loads(record.read_text())["submissions"][-1]["jobs"] if record.exists() else []


def _previous_active(paths: RunPaths) -> list[str]:
    return [job["job_id"] for job in last_submission(paths) if job["job_id"] and slurm.is_active(job["job_id"])]


def submit(config: CrucibleConfig, output: Path, dry_run: bool = False, prep_only: bool = False) -> list[Job]:
    """Render the scripts into OUTPUT/slurm and submit the jobs still needed (none with dry_run)."""
    config = config.model_copy(update={"prep": config.prep.with_absolute_paths()})
    paths = run_paths(config, output)
    if not dry_run and (active := _previous_active(paths)):
        raise UserError(
            f"jobs {', '.join(active)} of the previous submission of {output} are still queued or "
            f"running; wait for them or scancel them, then submit again"
        )
    paths.logs.mkdir(parents=True, exist_ok=True)
    write_text(paths.config, yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))
    plan = build_prep_graph(config.prep)
    work = paths.data.work
    pending = (
        {step.name: pending_tasks(work, step) for step in plan.steps}
        if dry_run
        else prepare_steps(config.prep, Path(paths.data.root))
    )
    max_size = config.launch.slurm.max_array_size or slurm.max_array_size()
    steps = step_jobs(plan, paths, config, pending, max_size)
    publish = Job(
        "publish", prep_single_script(paths, config.run_name, config.launch.slurm, "publish", config.prep.workers)
    )
    train = Job("train", train_script(paths, config.run_name, config.launch))
    prepare = prep_single_script(paths, config.run_name, config.launch.slurm, "prepare")
    chain = [[prepare], *[[job.script for job in group] for group in steps], [publish.script]]
    chain += [] if prep_only else [[train.script]]
    for script in [s for group in chain for s in group] + [by_hand_script(paths, chain)]:
        write_text(script.file, script.text)
        os.chmod(script.file, 0o755)

    todo = [[job for job in group if job.array] for group in steps]
    prep_needed = any(todo) or not paths.data.local_stats.exists()
    groups = [group for group in todo if group] + ([[publish]] if prep_needed else [])
    groups += [] if prep_only else [[train]]
    after: list[str] = []
    for group in groups:
        for job in group:
            job.after = after
            if not dry_run:
                job.job_id = slurm.sbatch(str(job.script.file), after, job.array)
        after = [job.job_id or job.script.name for job in group]
    jobs = [job for group in groups for job in group]
    if not dry_run:
        _record(paths, jobs)
    return jobs


def _record(paths: RunPaths, jobs: list[Job]) -> None:
    record = paths.jobs
    history = json.loads(record.read_text()) if record.exists() else {"submissions": []}
    history["submissions"].append(
        {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "jobs": [asdict(job) | {"script": str(job.script.file)} for job in jobs],
        }
    )
    write_json(record, history)


# ---- status ------------------------------------------------------------------------------------


def _count_states(job: dict[str, Any]) -> dict[str, list[int]]:
    states: dict[str, list[int]] = {}
    for index, state in slurm.job_states(job["job_id"]).items():
        task = job["offset"] + (index or 0)
        states.setdefault(state, []).append(task)
    return states


def status(output: Path) -> tuple[list[StepStatus], dict[str, Any]]:
    """Per step: tasks done (markers), and the Slurm state of the latest submission's jobs."""
    paths = RunPaths(output.resolve(), Path.cwd(), sys.executable)
    if not paths.config.exists():
        raise UserError(f"{output} holds no submitted run ({paths.config} is missing): run `crucible submit` first")
    config = load_config(paths.config)
    plan = build_prep_graph(config.prep)
    jobs = last_submission(paths)
    rows = []
    for part, total, done in [
        *((s.name, s.n_tasks, s.n_tasks - len(pending_tasks(paths.data.work, s))) for s in plan.steps),
        ("publish", 1, int(paths.data.local_stats.exists())),
    ]:
        mine = [job for job in jobs if job["part"] == part]
        states: dict[str, list[int]] = {}
        for job in mine:
            for state, tasks in _count_states(job).items():
                states.setdefault(state, []).extend(tasks)
        rows.append(StepStatus(part, total, done, states, [job["job_id"] for job in mine]))
    train_jobs = [job for job in jobs if job["part"] == "train"]
    train = {
        "job_ids": [job["job_id"] for job in train_jobs],
        "states": {state: tasks for job in train_jobs for state, tasks in _count_states(job).items()},
        "last": _last_metrics(paths.train),
    }
    return rows, train


def _last_metrics(train: TrainFolder) -> dict[str, Any] | None:
    records = read_jsonl(train.metrics)
    return records[-1] if records else None
