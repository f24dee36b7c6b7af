"""The `prep` verb's engine: plan the run, execute it, publish the outputs.

`run_prep` does it all on this machine. The other three split it for a scheduler: `prepare_steps`
once before any task (it clears step folders of another config), `run_prep_task` for each task of
each step (anywhere, in any order a step's dependencies allow), `publish_prep` once at the end.
All but the tasks (which run side by side by design) hold the output folder's lock.

`run_prep` may publish to object storage (`--output s3://bucket/prep`); its step files, markers and lock
then stay in a local or shared work folder, `--work`, which object storage (no appends, no locks) cannot be.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pipeline.config import PrepConfig
from pipeline.ground import storage
from pipeline.executors.local import publish_local, run_local
from pipeline.executors.steps import execute_task, pending_tasks, prepare_step_dir, seal_step, step_is_current
from pipeline.ground.errors import UserError
from pipeline.ground.layout import PrepFolder
from pipeline.ground.lock import folder_lock
from pipeline.ground.storage import Location
from pipeline.prep_graph import build_prep_graph
from pipeline.prep_stats import PrepStats


def work_folder(output: Location, work: Path | None) -> Path:
    """Where prep keeps its step files, markers and lock: `work`, else OUTPUT/work; an output in object storage
    needs one given (`--work`), as a store can neither append to a file nor lock one."""
    if work is not None:
        return work
    if storage.is_remote(output):
        raise UserError(
            f"--output {output} is in object storage: give --work DIR, a local or shared folder for "
            f"prep's step files, markers and lock (a rerun with the same --work resumes)"
        )
    return PrepFolder(output).work


def _lock_folder(output: Location, work: Path) -> Path:
    """The folder whose lock a prep holds: the output's, or the work folder's when the output is in object storage."""
    return work if storage.is_remote(output) else Path(output)


def check_output_apart(config: PrepConfig, output: Location, flag: str = "--output") -> None:
    """Refuse an output folder inside an input folder, or an input inside the output folder (symbolic links
    and relative paths resolved): a second run would read the first one's outputs back in as documents."""
    groups = [("prep.inputs", config.inputs)] + [(f"prep.sources[{s.name}].inputs", s.inputs) for s in config.sources]
    if storage.is_remote(output):
        _check_prefix_apart(groups, str(output), flag)
        return
    local = Path(output)
    target = local.resolve()
    for key, inputs in groups:
        for given in inputs:
            if storage.is_remote(given):
                continue
            source = Path(given).resolve()
            if target.is_relative_to(source):
                where = "the input folder" if target == source else "inside the input folder"
                raise UserError(
                    f"{flag} {_shown(local, target)} is {where} {_shown(given, source)} ({key}): prep "
                    f"would read its own outputs back in; give an {flag} outside every input folder"
                )
            if source.is_relative_to(target):
                raise UserError(
                    f"input {_shown(given, source)} ({key}) is inside {flag} {_shown(local, target)}: "
                    f"prep would read back what it writes there; give an {flag} that holds no input"
                )


def _check_prefix_apart(groups: list[tuple[str, list[Any]]], output: str, flag: str) -> None:
    """The same refusal for an output in object storage, by prefix."""
    target = output.rstrip("/") + "/"
    for key, inputs in groups:
        for given in inputs:
            source = str(given).rstrip("/") + "/"
            if storage.is_remote(given) and (target.startswith(source) or source.startswith(target)):
                raise UserError(
                    f"{flag} {output} and input {given} ({key}) overlap: prep would read back what it "
                    f"writes; give an {flag} apart from every input"
                )


def _shown(given: Location, resolved: Path) -> str:
    """A path as the user gave it, and where it leads when a link or `..` makes that another place."""
    return str(given) if os.path.abspath(given) == str(resolved) else f"{given} (that is {resolved})"


def run_prep(config: PrepConfig, output: Location, show_progress: bool = True, work: Path | None = None) -> PrepStats:
    """Run (or resume) data prep into `output`, its steps in `work` (default OUTPUT/work), and return its stats."""
    plan = build_prep_graph(config)
    work = work_folder(output, work)
    if config.executor == "ray" and storage.is_remote(output):
        raise UserError(
            "prep.executor=ray publishes to a local or shared folder only: give a folder as --output, "
            "or run this prep with prep.executor=local"
        )
    with folder_lock(_lock_folder(output, work), "crucible prep"):
        work.mkdir(parents=True, exist_ok=True)
        if config.executor == "ray":
            from pipeline.executors.ray import run_ray

            return run_ray(plan, work, Path(output), show_progress)
        return run_local(plan, work, output, config.workers, show_progress)


def pending_task_count(config: PrepConfig, output: Location, work: Path | None = None) -> int:
    """How many tasks a `run_prep` into `output` would run now (0: it only republishes)."""
    plan = build_prep_graph(config)
    return sum(len(pending_tasks(work_folder(output, work), step)) for step in plan.steps)


def prepare_steps(config: PrepConfig, output: Path) -> dict[str, list[int]]:
    """Make every step folder current for this config; the tasks each step still has to run."""
    plan = build_prep_graph(config)
    work = PrepFolder(output).work
    with folder_lock(output, "crucible prep-task --prepare"):
        work.mkdir(parents=True, exist_ok=True)
        todo: dict[str, list[int]] = {}
        for step in plan.steps:  # all before any task runs: a step rerun from its start reruns what reads it
            todo[step.name] = prepare_step_dir(work, step, [name for name, tasks in todo.items() if tasks])
        return todo


def run_prep_task(config: PrepConfig, output: Path, step_name: str, task: int) -> str:
    """Run task `task` of step `step_name` unless its completion marker says it is done."""
    plan = build_prep_graph(config)
    work = PrepFolder(output).work
    try:
        step = plan.step(step_name)
    except KeyError as exc:
        raise UserError(str(exc.args[0])) from None
    if not 0 <= task < step.n_tasks:
        raise UserError(f"step {step_name} has tasks 0..{step.n_tasks - 1}, not {task}")
    if not step_is_current(work, step):
        raise UserError(
            f"{work / step.name} is not prepared for this config: run `crucible prep-task --prepare` "
            f"(or `crucible submit`, which does it) first"
        )
    if task not in pending_tasks(work, step):
        return f"{step_name} task {task}: done already"
    marker = execute_task(plan, work, step_name, task)
    counts = ", ".join(f"{key} {marker[key]:,}" for key in ("docs_in", "docs_out") if key in marker)
    return f"{step_name} task {task}: done in {marker['seconds']:.1f}s" + (f" ({counts})" if counts else "")


def publish_prep(config: PrepConfig, output: Path) -> PrepStats:
    plan = build_prep_graph(config)
    work = PrepFolder(output).work
    with folder_lock(output, "crucible prep-task --publish"):
        for step in plan.steps:
            seal_step(work, step)
        return publish_local(plan, work, output, config.workers)
