"""Run a prep plan on a Ray cluster: one Ray task per prep task, the steps, markers and seals of `local`.

The driver (the `crucible prep` process) prepares each step's folder, submits the step's pending
tasks, waits for them with a progress bar, seals the step and goes on to the next; then it runs
the publishing tasks the same way. Ray reruns a task whose worker died or that raised, up to
prep.ray.max_retries times; a task is a pure function of its inputs and writes through temporary
files and a marker last, so a rerun writes the same bytes. A task that fails every try ends the
run with its error and the command that reruns it alone. Every task reads and writes the output
folder, so every node of the cluster must see it (and the inputs) at the same path. The driver
writes where it stands to OUTPUT/ray/state.json for `crucible status`; killed, it leaves the
markers, and the same command resumes from them.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import yaml

from pipeline.config import load_config
from pipeline.executors.local import progress_bar
from pipeline.executors.steps import execute_task, expected_units, pending_tasks, prepare_step_dir, seal_step
from pipeline.ground import storage
from pipeline.ground.atomic import write_json, write_text
from pipeline.ground.errors import UserError
from pipeline.ground.markers import read_marker
from pipeline.ground.layout import PrepFolder
from pipeline.outputs import publish, publish_task
from pipeline.prep_graph import PrepGraph, build_prep_graph
from pipeline.prep_stats import PrepStats
from pipeline.status import StepStatus

STATE_FILE = "state.json"  # OUTPUT/ray/state.json: the driver's step, tasks running, pending and failed
CONFIG_FILE = "config.yaml"  # OUTPUT/ray/config.yaml: the config a task rerun by hand reads
PUBLISH = "publish"
OBJECT_STORE_BYTES = 128 * 2**20  # a local cluster's: tasks pass markers and file names, never documents
STATE_EVERY = 1.0  # seconds between state.json updates while tasks finish


class _Progress:
    """A Ray actor the tasks tell how many units they did; the driver takes the sum to its bar."""

    def __init__(self) -> None:
        self.units = 0

    def add(self, n: int) -> None:
        self.units += n

    def take(self) -> int:
        units, self.units = self.units, 0
        return units


def _run_task(
    plan: PrepGraph, work: Path, step: str, task: int, progress: Any, storage_settings: storage.StorageConfig
) -> dict[str, Any]:
    """One prep task in a Ray worker, with the driver's storage settings (an endpoint from the config)."""
    storage.configure(storage_settings)
    return execute_task(plan, work, step, task, lambda n: progress.add.remote(n) if n else None)


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise UserError("prep.executor: ray needs Ray, which is not installed: pip install 'crucible[ray]'") from None
    return ray


def _connect(ray: Any, address: str, workers: int) -> None:
    """Join the cluster at `address`; with `auto` and none running, start one on this machine of `workers` CPUs."""
    quiet = {"log_to_driver": False, "configure_logging": False}
    try:
        ray.init(address=address, **quiet)
    except ConnectionError:
        if address != "auto":
            raise UserError(
                f"prep.ray.address {address}: no Ray cluster answers there; start one (`ray start "
                f"--head`) or set prep.ray.address=auto to start one on this machine"
            ) from None
        ray.init(num_cpus=workers, include_dashboard=False, object_store_memory=OBJECT_STORE_BYTES, **quiet)


class RayRun:
    """One driver's run: the remote function with the run's settings, the state file and the rerun command."""

    def __init__(self, ray: Any, plan: PrepGraph, work: Path, output: Path) -> None:
        settings = plan.config.ray
        self.ray, self.plan, self.work, self.output, self.settings = ray, plan, work, output.resolve(), settings
        memory = int(settings.memory_gb_per_task * 2**30) if settings.memory_gb_per_task else None
        self.options = {
            "num_cpus": settings.cpus_per_task,
            "max_retries": settings.max_retries,
            "retry_exceptions": True,
        } | ({"memory": memory} if memory else {})
        self.plan_ref = ray.put(plan)
        self.progress = ray.remote(num_cpus=0)(_Progress).remote()
        self.folder = PrepFolder(output).ray
        self.state: dict[str, Any] = {
            "driver": {"host": socket.gethostname(), "pid": os.getpid()},
            "address": ray.get_runtime_context().gcs_address,
            "state": "running",
        }
        self.written = 0.0
        write_text(
            self.folder / CONFIG_FILE,
            yaml.safe_dump(
                {
                    "prep": plan.config.with_absolute_paths().model_dump(mode="json"),
                    "storage": storage.settings().model_dump(mode="json"),
                },
                sort_keys=False,
            ),
        )

    def run_step(self, name: str, tasks: list[int], submit: Callable[[int], Any], bar: Any) -> list[Any]:
        """Run `tasks` (at most prep.ray.max_parallel at once), updating `bar`; their results in task order."""
        limit = self.settings.max_parallel or len(tasks)
        waiting = list(tasks)
        running: dict[Any, int] = {}  # a task's object ref -> the task
        results: dict[int, Any] = {}
        while waiting or running:
            while waiting and len(running) < limit:
                task = waiting.pop(0)
                running[submit(task)] = task
            self._save(name, running.values(), waiting)
            done, _ = self.ray.wait(list(running), timeout=0.5)  # as soon as one is done, or half a second
            bar.update(self.ray.get(self.progress.take.remote()))
            for ref in done:
                task = running.pop(ref)
                try:
                    results[task] = self.ray.get(ref)
                except Exception as error:  # every try failed: Ray raises the task's error or the worker's death
                    self._fail(name, task, error, [*running.values(), *waiting])
        self._save(name, [], [], force=True)
        return [results[t] for t in tasks]

    def _save(self, step: str, running: Iterable[int], waiting: list[int], force: bool = False) -> None:
        """state.json for `crucible status`, at most every STATE_EVERY seconds unless `force`."""
        if force or time.monotonic() - self.written >= STATE_EVERY:
            self.state |= {
                "step": step,
                "running": sorted(running),
                "pending": sorted(waiting),
                "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            }
            write_json(self.folder / STATE_FILE, self.state)
            self.written = time.monotonic()

    def _fail(self, step: str, task: int, error: Exception, others: list[int]) -> None:
        cause = getattr(error, "cause", None) or error
        reason = " ".join(f"{type(cause).__name__}: {cause}".split())
        self.state |= {"state": "failed", "failed": {"step": step, "task": task, "error": reason}}
        self._save(step, others, [], force=True)
        rerun = (
            f"crucible prep-task --config {self.folder / CONFIG_FILE} --output {self.output} --step {step} "
            f"--task {task}"
            if step != PUBLISH
            else "the same command"
        )
        raise UserError(
            f"step {step} task {task} failed {self.settings.max_retries + 1} time(s): {reason[:500]}; "
            f"rerun it alone (with its traceback): {rerun}"
        )

    def finish(self) -> None:
        self.state |= {"state": "finished"}
        self._save(PUBLISH, [], [], force=True)


def run_ray(plan: PrepGraph, work: Path, output: Path, show_progress: bool = True) -> PrepStats:
    """Run every step of `plan` whose tasks are not done yet on a Ray cluster, then publish; return the stats."""
    ray = _import_ray()
    _connect(ray, plan.config.ray.address, plan.config.workers)
    try:
        run = RayRun(ray, plan, work, output)
        task = ray.remote(_run_task)
        for step in plan.steps:
            pending = prepare_step_dir(work, step)
            if pending:
                bar = progress_bar(expected_units(work, plan, step), f"{step.name:<26}", step.spec.unit, show_progress)

                def submit(t: int, s: str = step.name) -> Any:
                    return task.options(name=f"prep:{s}:{t}", **run.options).remote(
                        run.plan_ref, work, s, t, run.progress, storage.settings()
                    )

                try:
                    run.run_step(step.name, pending, submit, bar)
                finally:
                    bar.close()
            seal_step(work, step)
        publisher = ray.remote(publish_task)
        stats = publish(
            plan,
            work,
            output,
            lambda _, tasks: run.run_step(
                PUBLISH,
                list(tasks),
                lambda t: publisher.options(name=f"prep:{PUBLISH}:{t}", **run.options).remote(
                    run.plan_ref, work, output, t
                ),
                progress_bar(None, f"{PUBLISH:<26}", "task", False),
            ),
        )
        run.finish()
        return stats
    finally:
        ray.shutdown()


# ---- status ------------------------------------------------------------------------------------


def ray_status(prep: Path) -> tuple[list[StepStatus], str] | None:
    """Per step of a Ray-run prep in `prep`: tasks done (markers) and running, pending or failed (the driver's
    state file), as `crucible status` shows a Slurm run; and a line on the driver. None: not run on Ray."""
    folder = PrepFolder(prep)
    state = read_marker(folder.ray / STATE_FILE)
    if state is None:
        return None
    plan = build_prep_graph(load_config(folder.ray / CONFIG_FILE).prep)
    driver = state["driver"]
    live = state["state"] == "running" and _alive(driver)
    failed = state.get("failed", {})
    rows = []
    for name, total, pending in [
        *((s.name, s.n_tasks, pending_tasks(folder.work, s)) for s in plan.steps),
        (PUBLISH, 1, [] if folder.local_stats.exists() else [0]),
    ]:
        states = {"FAILED": [failed["task"]]} if failed.get("step") == name else {}
        if live:
            running = state["running"] if state["step"] == name else []
            states |= {"RUNNING": running, "PENDING": [t for t in pending if t not in running]}
        rows.append(StepStatus(name, total, total - len(pending), states, []))
    what = {
        "running": "running" if live else "gone (killed?): rerun the same `crucible prep` command to resume",
        "failed": f"stopped: step {failed.get('step')} task {failed.get('task')} failed: {failed.get('error')}",
        "finished": "finished",
    }[state["state"]]
    line = (
        f"ray: driver PID {driver['pid']} on {driver['host']}, {what}; cluster {state['address']}; "
        f"as of {state['updated']}"
    )
    return rows, line


def _alive(driver: dict[str, Any]) -> bool:
    """Whether the driver process still runs (unknown on another host: taken as running)."""
    if driver["host"] != socket.gethostname():
        return True
    try:
        os.kill(driver["pid"], 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
