"""Run a prep plan on this machine with a pool of worker processes.

Steps run in order; the tasks of a step run in parallel. A task counts as done only when its
marker (written atomically, after its outputs) exists and carries the step's fingerprint, so a
killed run resumes where it stopped and a rerun of a finished run does no work. A step whose
config changed since its outputs were written is cleared and rerun, with everything after it.
"""

from __future__ import annotations

import multiprocessing as mp
import queue
import shutil
import time
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from pathlib import Path
from typing import Any

from tqdm import tqdm

from pipeline.ground.atomic import remove_temp_files, write_json
from pipeline.ground.markers import read_marker
from pipeline.plan import Plan, Step
from pipeline.tasks import TASKS, marker_file

_progress: Any = None


def _init_worker(progress: Any) -> None:
    global _progress
    _progress = progress


def _report(step: str, n: int) -> None:
    if _progress is not None and n:
        _progress.put((step, n))


def execute_task(plan: Plan, work: Path, step_name: str, task: int) -> dict[str, Any]:
    """Run one task and publish its marker; the same entry point serves every executor."""
    step = plan.step(step_name)
    started = time.perf_counter()
    payload = TASKS[step.kind](plan, work, step, task, lambda n: _report(step.name, n))
    payload |= {"fingerprint": step.fingerprint, "seconds": round(time.perf_counter() - started, 3)}
    write_json(marker_file(work, step.name, task), payload)
    return payload


def step_is_current(work: Path, step: Step) -> bool:
    """Whether the step folder was made for this step's fingerprint (its tasks' outputs are usable)."""
    return (read_marker(work / step.name / "step.json") or {}).get("fingerprint") == step.fingerprint


def pending_tasks(work: Path, step: Step) -> list[int]:
    """Tasks of `step` without a marker of its fingerprint (all of them in a stale folder)."""
    if not step_is_current(work, step):
        return list(range(step.n_tasks))
    return [t for t in range(step.n_tasks)
            if (read_marker(marker_file(work, step.name, t)) or {}).get("fingerprint") != step.fingerprint]


def prepare_step_dir(work: Path, step: Step) -> list[int]:
    """Clear a step folder made with another fingerprint; return the tasks still to run."""
    folder = work / step.name
    if folder.exists() and not step_is_current(work, step):
        shutil.rmtree(folder)
    if not folder.exists():
        write_json(folder / "step.json", {"fingerprint": step.fingerprint, "n_tasks": step.n_tasks})
    remove_temp_files(folder)
    return pending_tasks(work, step)


def _expected_units(work: Path, plan: Plan, step: Step) -> int | None:
    if step.source is None:
        return None
    markers = [read_marker(marker_file(work, step.source, t)) for t in range(len(plan.shards))]
    total = sum(m["docs_out"] for m in markers if m)
    return total * step.n_tasks if step.kind == "minhash_buckets" else total


def run_local(plan: Plan, work: Path, workers: int, show_progress: bool = True) -> None:
    """Run every step of `plan` whose tasks are not done yet."""
    context = mp.get_context("spawn")
    progress = context.Queue()
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker, initargs=(progress,)) as pool:
        for step in plan.steps:
            pending = prepare_step_dir(work, step)
            if not pending:
                continue
            bar = tqdm(total=_expected_units(work, plan, step), desc=f"{step.name:<26}", unit="doc",
                       disable=not show_progress, leave=True, dynamic_ncols=True)
            futures = {pool.submit(execute_task, plan, work, step.name, t): t for t in pending}
            try:
                _wait_with_progress(futures, progress, bar, step.name)
            finally:
                bar.close()


def _wait_with_progress(futures: dict[Future, int], progress: Any, bar: tqdm, step: str) -> None:
    remaining = set(futures)
    while remaining:
        done, remaining = wait(remaining, timeout=0.2, return_when=FIRST_COMPLETED)
        _drain(progress, bar)
        for future in done:
            error = future.exception()
            if error is not None:
                for other in remaining:
                    other.cancel()
                raise RuntimeError(f"task {futures[future]} of step {step} failed: {error}") from error
    _drain(progress, bar)


def _drain(progress: Any, bar: tqdm) -> None:
    while True:
        try:
            _, n = progress.get_nowait()
        except queue.Empty:
            return
        bar.update(n)
