"""Helpers for tests that submit real jobs to the one-node Slurm cluster of scripts/slurm_local.sh.

Job states come from `scontrol show job -o`: there is no accounting database, so no sacct.
"""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path

from launch.slurm import FINAL_STATES

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "slurm_local.sh"


_FIELD = re.compile(r"(?:^|\s)(\w+)=(\S*)")


def ensure_cluster() -> None:
    """Install and start the local cluster unless it is already up; raise RuntimeError if that fails."""
    for step, timeout in (("install", 900), ("start", 180)):
        try:
            proc = subprocess.run(
                ["bash", str(SCRIPT), step],
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                timeout=timeout,
            )
        except subprocess.TimeoutExpired as exc:
            raise RuntimeError(f"slurm_local.sh {step} took over {timeout}s:\n{exc.output or ''}") from exc
        if proc.returncode != 0:
            raise RuntimeError(f"slurm_local.sh {step} failed (exit {proc.returncode}):\n{proc.stdout}")


def _record_key(fields: dict[str, str]) -> str:
    """`123_4` for an array element, `123_[5-9]` for elements still pending as one record, else the job id."""
    task = fields.get("ArrayTaskId")
    if task is None:
        return fields["JobId"]
    array_id = fields["ArrayJobId"]
    return f"{array_id}_{task}" if task.isdigit() else f"{array_id}_[{task}]"


def job_states(job_id: str) -> dict[str, str]:
    """States of every record of a job: one for a plain job or element, one per element for an array.

    A freshly submitted array is a single record (`123_[0-3]`) until Slurm starts its elements.
    """
    for attempt in range(20):
        proc = subprocess.run(
            ["scontrol", "show", "job", "-o", str(job_id)], capture_output=True, text=True, timeout=30
        )
        if proc.returncode == 0:
            break
        if "Invalid job id" in proc.stderr:
            raise RuntimeError(f"Slurm does not know job {job_id}: {proc.stderr.strip()}")
        time.sleep(0.2)  # slurmctld busy or restarting
    else:
        raise RuntimeError(f"scontrol show job {job_id} failed: {proc.stderr.strip()}")
    states: dict[str, str] = {}
    for line in proc.stdout.splitlines():
        if not line.strip():
            continue
        fields: dict[str, str] = {}
        for key, value in _FIELD.findall(line):
            fields.setdefault(key, value)
        states[_record_key(fields)] = fields["JobState"]
    return states


def job_state(job_id: str) -> str:
    """State of one job or array element (`123_4`); an array id with several records is an error."""
    states = job_states(job_id)
    if len(states) != 1:
        raise ValueError(f"job {job_id} has {len(states)} records {states}; ask for one element or use job_states")
    return next(iter(states.values()))


def wait_for_jobs(job_ids: list[str], timeout: float) -> dict[str, str]:
    """Poll until every job (and every element of array jobs) is in a final state; return them all.

    Keys are job ids, or `ARRAYID_TASK` for array elements. A requeued job passes through
    COMPLETING and PENDING again, which are not final. Raises TimeoutError naming the others.
    """
    deadline = time.monotonic() + timeout
    while True:
        states: dict[str, str] = {}
        for job_id in job_ids:
            states.update(job_states(job_id))
        waiting = {key: state for key, state in states.items() if state not in FINAL_STATES}
        if not waiting:
            return states
        if time.monotonic() > deadline:
            raise TimeoutError(f"Slurm jobs not finished after {timeout}s: {waiting}")
        time.sleep(0.2)
