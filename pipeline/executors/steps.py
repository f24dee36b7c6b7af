"""What every executor shares: the step folders, their completion markers and one task's run.

A task counts as done only when its marker (written atomically, after its outputs) exists and
carries the step's fingerprint, so a killed run resumes where it stopped and a rerun of a
finished run does no work. A step whose config changed since its outputs were written is
cleared and rerun, with everything after it. A finished step is sealed with the SHA-256 of
every file it wrote, and with the seals of the steps it read (its declared reads); a rerun checks
both and rebuilds a step whose files were edited or removed since, or one whose inputs were
rebuilt into other bytes (a rebuild into the same bytes leaves what read them valid).
The local executor calls `execute_task` in a process pool; the Slurm executor's array jobs
call it through `crucible prep-task`.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

from data_prep.books import MARKER_PREFIX, marker_file
from pipeline.ground.atomic import TMP_PREFIX, remove_temp_files, write_json
from pipeline.ground.console import console
from pipeline.ground.hashing import file_sha256
from pipeline.ground.markers import read_marker
from pipeline.prep_graph import PrepGraph, Step

STEP_FILE = "step.json"  # the fingerprint a step folder was made for
SEAL_FILE = "outputs.json"  # the SHA-256 of every file of a finished step
READS_FILE = "reads.json"  # a digest of the seal of each step a finished step read, when it was sealed


def execute_task(
    plan: PrepGraph, work: Path, step_name: str, task: int, report: Callable[[int], None] = lambda n: None
) -> dict[str, Any]:
    """Run one task and publish its marker, with its wall time, the CPU time (user + sys, all
    threads) of the process that ran it (it does not grow when other work shares the cores) and,
    on Linux, the process's peak resident memory during the task."""
    step = plan.step(step_name)
    _reset_peak_memory()
    started, cpu_started = time.perf_counter(), time.process_time()
    payload = step.spec.run(plan.context(work, step, task, report))
    payload |= {
        "fingerprint": step.fingerprint,
        "seconds": round(time.perf_counter() - started, 3),
        "cpu_seconds": round(time.process_time() - cpu_started, 3),
    } | _peak_memory()
    write_json(marker_file(work, step.name, task), payload)
    return payload


def _reset_peak_memory() -> None:
    """Start the process's high-water mark of resident memory afresh (a pool worker runs many tasks)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def _peak_memory() -> dict[str, float]:
    """{"peak_rss_mb": the high-water mark of resident memory since the reset}; empty where /proc lacks it."""
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        return {}
    kb = next((int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM:")), None)
    return {} if kb is None else {"peak_rss_mb": round(kb / 1024, 1)}


def step_is_current(work: Path, step: Step) -> bool:
    """Whether the step folder was made for this step's fingerprint (its tasks' outputs are usable)."""
    return (read_marker(work / step.name / STEP_FILE) or {}).get("fingerprint") == step.fingerprint


def pending_tasks(work: Path, step: Step) -> list[int]:
    """Tasks of `step` without a marker of its fingerprint (all of them in a stale folder)."""
    if not step_is_current(work, step):
        return list(range(step.n_tasks))
    return [
        t
        for t in range(step.n_tasks)
        if (read_marker(marker_file(work, step.name, t)) or {}).get("fingerprint") != step.fingerprint
    ]


def prepare_step_dir(work: Path, step: Step, rebuilding: Collection[str] = ()) -> list[int]:
    """Clear a step folder made with another fingerprint, with changed files, or that read a step rebuilt
    since into other bytes (or one in `rebuilding`, being rebuilt before this step's turn to be checked);
    return the tasks still to run."""
    folder = work / step.name
    if folder.exists() and not step_is_current(work, step):
        shutil.rmtree(folder)
    changed = changed_outputs(work, step) if folder.exists() else []
    if changed:
        console().print(
            f"[yellow]{folder}: {len(changed)} file(s) changed or missing since the step finished "
            f"({', '.join(changed[:3])}{', ...' if len(changed) > 3 else ''}); rebuilding it[/]"
        )
        shutil.rmtree(folder)
    moved: list[str] = []
    if folder.exists():
        being_rebuilt = [name for name in step.reads if name in rebuilding]
        stale_outputs = bool(being_rebuilt) and len(pending_tasks(work, step)) < step.n_tasks  # a finished task
        moved = being_rebuilt if stale_outputs else changed_reads(work, step)
    if moved:
        console().print(f"[yellow]{folder}: {', '.join(moved)} changed since this step read it; rebuilding it[/]")
        shutil.rmtree(folder)
    if not folder.exists():
        write_json(folder / STEP_FILE, {"fingerprint": step.fingerprint, "n_tasks": step.n_tasks})
    remove_temp_files(folder)
    return pending_tasks(work, step)


def expected_units(work: Path, plan: PrepGraph, step: Step) -> int | None:
    """The progress total of `step`: from the documents its source step kept (None before any)."""
    if step.source is None:
        return None
    markers = [read_marker(marker_file(work, step.source, t)) for t in range(len(plan.shards))]
    return step.spec.units(sum(m["docs_out"] for m in markers if m), step.n_tasks)


def _output_files(folder: Path) -> list[Path]:
    return sorted(
        p
        for p in folder.rglob("*")
        if p.is_file() and p.name not in (STEP_FILE, SEAL_FILE, READS_FILE) and not p.name.startswith(TMP_PREFIX)
    )


def _seal_digest(work: Path, step: str) -> str | None:
    """A digest of a sealed step's files but its markers, whose times differ from run to run; None: not sealed."""
    sealed = read_marker(work / step / SEAL_FILE)
    if sealed is None:
        return None
    files = {name: digest for name, digest in sealed.items() if not name.startswith(MARKER_PREFIX)}
    return hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()


def seal_step(work: Path, step: Step) -> None:
    """Record the hashes of a finished step's files and the seals of the steps it read (once; a seal is only
    rewritten after a rebuild). The reads go first: a step is sealed when its SEAL_FILE exists."""
    folder = work / step.name
    if read_marker(folder / SEAL_FILE) is None and not pending_tasks(work, step):
        read_seals = {name: _seal_digest(work, name) for name in step.reads}
        write_json(folder / READS_FILE, {name: digest for name, digest in read_seals.items() if digest})
        hashes = {p.relative_to(folder).as_posix(): file_sha256(p) for p in _output_files(folder)}
        write_json(folder / SEAL_FILE, hashes)


def changed_reads(work: Path, step: Step) -> list[str]:
    """The steps a sealed step read whose seal differs now from the one it was sealed with (a step not
    sealed now is being rebuilt: the check waits for its new seal)."""
    recorded = read_marker(work / step.name / READS_FILE) or {}
    now = {name: _seal_digest(work, name) for name in recorded}
    return [name for name, digest in recorded.items() if now[name] is not None and now[name] != digest]


def changed_outputs(work: Path, step: Step) -> list[str]:
    """Files of a sealed step that are missing or hash differently now (none for an unsealed step)."""
    folder = work / step.name
    sealed = read_marker(folder / SEAL_FILE)
    if sealed is None:
        return []
    return [
        name for name, digest in sealed.items() if not (folder / name).is_file() or file_sha256(folder / name) != digest
    ]
