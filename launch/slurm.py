"""The few Slurm commands Crucible needs: submit, ask a job's state, read a cluster limit.

Only the client commands every cluster has (sbatch, scontrol) are used: no accounting database
(sacct) is assumed. scontrol forgets finished jobs after MinJobAge; callers fall back on the
completion markers for those.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Sequence

from pipeline.ground.errors import UserError

FINAL_STATES = {
    "COMPLETED",
    "FAILED",
    "CANCELLED",
    "TIMEOUT",
    "NODE_FAIL",
    "OUT_OF_MEMORY",
    "PREEMPTED",
    "BOOT_FAIL",
    "DEADLINE",
}
DEFAULT_MAX_ARRAY_SIZE = 1001  # Slurm's default


def _run(command: list[str]) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(command, capture_output=True, text=True, timeout=60)
    except FileNotFoundError as exc:
        raise UserError(f"{command[0]} not found: run this on a machine with the Slurm client commands") from exc


def sbatch(script: str, dependency: Sequence[str] = (), array: str | None = None) -> str:
    """Submit a script; returns the job id."""
    command = ["sbatch", "--parsable"]
    if dependency:
        command.append("--dependency=afterok:" + ":".join(dependency))
    if array:
        command.append(f"--array={array}")
    result = _run([*command, script])
    if result.returncode != 0:
        raise UserError(f"sbatch {script} failed: {result.stderr.strip() or result.stdout.strip()}")
    return result.stdout.strip().split(";")[0]


def max_array_size() -> int:
    """The cluster's MaxArraySize; Slurm's default where no cluster answers (a dry run elsewhere)."""
    try:
        result = _run(["scontrol", "show", "config"])
    except UserError:
        return DEFAULT_MAX_ARRAY_SIZE
    found = re.search(r"^MaxArraySize\s*=\s*(\d+)", result.stdout, re.MULTILINE)
    return int(found.group(1)) if found else DEFAULT_MAX_ARRAY_SIZE


def _expand(spec: str) -> list[int]:
    """Array indices of `0-3,7%2` (scontrol's pending part of an array)."""
    indices: list[int] = []
    for part in spec.split("%")[0].split(","):
        first, _, last = part.partition("-")
        indices.extend(range(int(first), int(last or first) + 1))
    return indices


def job_states(job_id: str) -> dict[int | None, str]:
    """State of each array index of a job (key None for a plain job); {} once Slurm forgot it."""
    result = _run(["scontrol", "show", "job", "-o", job_id])
    states: dict[int | None, str] = {}
    if result.returncode != 0:
        return states
    for line in result.stdout.splitlines():
        fields = dict(re.findall(r"(\w+)=(\S*)", line))
        state = fields.get("JobState", "UNKNOWN")
        task = fields.get("ArrayTaskId")
        if task is None:
            states[None] = state
        else:
            for index in _expand(task):
                states[index] = state
    return states


def is_active(job_id: str) -> bool:
    return any(state not in FINAL_STATES for state in job_states(job_id).values())
