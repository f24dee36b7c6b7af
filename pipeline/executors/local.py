"""Run a prep plan on this machine with a pool of worker processes.

Steps run in order; the tasks of a step run in parallel, each through `steps.execute_task`, as
a Slurm array element would run it; then the publishing tasks, in the same pool. Progress is a bar on a terminal and plain lines in a log.

Workers fork from a server process that has imported the step code once (multiprocessing's
forkserver, preloaded): a pool's workers then start at once, where each spawned one imported pyarrow,
numpy and every stage itself, about 1.3 s of CPU apiece. The server runs no threads, so forking it
is safe, and it starts with the driver's first pool; its environment and folder are those of that
moment, so each worker takes the driver's current ones in its initializer.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue
import signal
import sys
import time
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from pathlib import Path
from typing import Any

from tqdm import tqdm

from pipeline.executors.steps import execute_task, expected_units, prepare_step_dir, seal_step
from pipeline.ground.errors import UserError
from pipeline.ground import storage
from pipeline.ground.storage import Location
from pipeline.outputs import publish
from pipeline.prep_graph import PrepGraph
from pipeline.prep_stats import PrepStats
from pipeline.ground.console import say

_progress: Any = None
PRELOADED = ["pipeline.executors.steps"]  # the stages, the step code and publishing: what every task imports
LOG_EVERY = 30.0  # seconds between progress lines where stderr is a log, not a terminal


class LogProgress:
    """Progress for a log file or pipe: a plain line at most every LOG_EVERY seconds and one when the step
    ends. A bar redraws itself with carriage returns, which a log keeps as one line of joined redraws."""

    def __init__(self, total: int | None, desc: str, unit: str) -> None:
        self.total, self.step, self.n = total, desc.strip(), 0
        self.unit = f"{unit}es" if unit.endswith(("s", "sh")) else f"{unit}s"
        self.started = self.said = time.monotonic()

    def update(self, n: int) -> None:
        self.n += n
        if time.monotonic() - self.said >= LOG_EVERY:
            self._say("so far")

    def close(self) -> None:
        self._say("done")

    def _say(self, state: str) -> None:
        self.said = time.monotonic()
        of = f" of {self.total:,}" if self.total is not None else ""
        say(f"{self.step}: {self.n:,}{of} {self.unit}, {state} in {self.said - self.started:.1f} s", to_stderr=True)


def progress_bar(total: int | None, desc: str, unit: str, show: bool) -> tqdm | LogProgress:
    """A bar on a terminal; plain lines where stderr goes to a file or a pipe; nothing when not `show`."""
    if show and not sys.stderr.isatty():
        return LogProgress(total, desc, unit)
    return tqdm(total=total, desc=desc, unit=unit, disable=not show, leave=True, dynamic_ncols=True)


def _init_worker(
    progress: Any, storage_settings: storage.StorageConfig, environment: dict[str, str], folder: str
) -> None:
    """A worker takes the driver's environment and folder as they are now, the queue for its counts and the
    run's storage settings (an endpoint from the config, not only from AWS_* variables, reaches its reads and
    uploads)."""
    global _progress
    os.environ.clear()
    os.environ.update(environment)
    os.chdir(folder)
    _progress = progress
    storage.configure(storage_settings)
    signal.signal(signal.SIGINT, _leave_quietly)


def _leave_quietly(signum: int, frame: Any) -> None:
    """Ctrl-C reaches the workers too: the parent says it once; a worker ends its task without a traceback."""
    raise SystemExit(128 + signum)


def _report(step: str, n: int) -> None:
    if _progress is not None and n:
        _progress.put((step, n))


def _execute_in_worker(plan: PrepGraph, work: Path, step_name: str, task: int) -> dict[str, Any]:
    try:
        return execute_task(plan, work, step_name, task, lambda n: _report(step_name, n))
    finally:
        if _progress is not None:
            _progress.put((step_name, None))  # the task's last report: all its counts are before it in the queue


def _context() -> Any:
    context = mp.get_context("forkserver")
    context.set_forkserver_preload(PRELOADED)  # read when the server starts: the first pool of this process
    return context


def _pool(workers: int, progress: Any = None) -> ProcessPoolExecutor:
    return ProcessPoolExecutor(
        workers,
        mp_context=_context(),
        initializer=_init_worker,
        initargs=(progress, storage.settings(), dict(os.environ), os.getcwd()),
    )


def run_local(plan: PrepGraph, work: Path, output: Location, workers: int, show_progress: bool = True) -> PrepStats:
    """Run every step of `plan` whose tasks are not done yet, then publish into `output`; return the stats."""
    progress = _context().Queue()
    with _pool(workers, progress) as pool:
        for step in plan.steps:
            pending = prepare_step_dir(work, step)
            if not pending:
                seal_step(work, step)
                continue
            bar = progress_bar(expected_units(work, plan, step), f"{step.name:<26}", step.spec.unit, show_progress)
            futures = {pool.submit(_execute_in_worker, plan, work, step.name, t): t for t in pending}
            try:
                _wait_with_progress(futures, progress, bar, step.name)
            finally:
                bar.close()
            seal_step(work, step)
        return publish(plan, work, output, pool.map)


def publish_local(plan: PrepGraph, work: Path, output: Location, workers: int) -> PrepStats:
    """Publish a prep whose steps all ran elsewhere (the Slurm publishing job), its tasks in a local pool."""
    with _pool(workers) as pool:
        return publish(plan, work, output, pool.map)


def _wait_with_progress(futures: dict[Future, int], progress: Any, bar: tqdm | LogProgress, step: str) -> None:
    remaining, ended = set(futures), 0
    while remaining:
        done, remaining = wait(remaining, timeout=0.2, return_when=FIRST_COMPLETED)
        ended += _drain(progress, bar)
        for future in done:
            error = future.exception()
            if error is not None:
                for other in remaining:
                    other.cancel()
                if isinstance(error, UserError):
                    raise UserError(f"task {futures[future]} of step {step}: {error}") from None
                raise RuntimeError(f"task {futures[future]} of step {step} failed: {error}") from error
    while ended < len(futures):  # a finished task's counts may still be in the queue's pipe
        ended += _drain(progress, bar, block=True)


def _drain(progress: Any, bar: tqdm | LogProgress, block: bool = False) -> int:
    """Put the counts waiting in the queue on the bar (blocking: up to the next task's end); how many tasks ended."""
    ended = 0
    while True:
        try:
            _, n = progress.get(timeout=1.0) if block else progress.get_nowait()
        except queue.Empty:
            return ended
        if n is None:
            ended += 1
            if block:
                return ended
        else:
            bar.update(n)
