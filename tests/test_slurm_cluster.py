"""The local one-node Slurm cluster runs arrays, dependencies, multi-task steps and requeues."""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path

import pytest

from tests.slurm_cluster import ensure_cluster, job_state, wait_for_jobs


@pytest.fixture(scope="session")
def slurm_cluster() -> None:
    ensure_cluster()


pytestmark = pytest.mark.usefixtures("slurm_cluster")

# Jobs take about a second each; the margin is for a node (8 CPUs) shared with other test sessions.
TIMEOUT = 60


def sbatch(workdir: Path, *args: str) -> str:
    out = subprocess.run(
        ["sbatch", "--parsable", f"--chdir={workdir}", "--output=slurm-%j.out", *args],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return out.strip().split(";")[0]


def test_array_elements_all_run(tmp_path: Path) -> None:
    array = sbatch(tmp_path, "--array=0-3", "--wrap", "echo $SLURM_ARRAY_JOB_ID > task_$SLURM_ARRAY_TASK_ID")

    states = wait_for_jobs([array], timeout=TIMEOUT)

    assert states == {f"{array}_{i}": "COMPLETED" for i in range(4)}
    for i in range(4):
        assert (tmp_path / f"task_{i}").read_text().strip() == array


def test_afterok_dependent_runs_after_the_whole_array(tmp_path: Path) -> None:
    array = sbatch(tmp_path, "--array=0-2", "--wrap", "sleep 0.5; date +%s.%N > end_$SLURM_ARRAY_TASK_ID")
    after = sbatch(tmp_path, f"--dependency=afterok:{array}", "--wrap", "date +%s.%N > start_dependent")

    states = wait_for_jobs([array, after], timeout=TIMEOUT)

    assert set(states.values()) == {"COMPLETED"} and len(states) == 4
    ends = [float((tmp_path / f"end_{i}").read_text()) for i in range(3)]
    assert float((tmp_path / "start_dependent").read_text()) >= max(ends)


def test_dependent_of_failed_job_is_cancelled(tmp_path: Path) -> None:
    failing = sbatch(tmp_path, "--wrap", "exit 1")
    dependent = sbatch(tmp_path, f"--dependency=afterok:{failing}", "--wrap", "touch ran")

    states = wait_for_jobs([failing, dependent], timeout=TIMEOUT)

    assert states == {failing: "FAILED", dependent: "CANCELLED"}
    assert not (tmp_path / "ran").exists()


def test_srun_two_tasks_inside_batch_job(tmp_path: Path) -> None:
    job = sbatch(tmp_path, "-n", "2", "--wrap", "srun -n 2 hostname")

    assert wait_for_jobs([job], timeout=TIMEOUT) == {job: "COMPLETED"}
    lines = (tmp_path / f"slurm-{job}.out").read_text().split()
    assert lines == [socket.gethostname()] * 2


def test_requeued_job_runs_again_before_wait_returns(tmp_path: Path) -> None:
    # SLURM_RESTART_COUNT is unset on the first run.
    script = 'echo "run ${SLURM_RESTART_COUNT:-0}" >> runs; [ "${SLURM_RESTART_COUNT:-0}" = 1 ] || sleep 60'
    job = sbatch(tmp_path, "--requeue", "--wrap", script)
    runs = tmp_path / "runs"
    deadline = time.monotonic() + TIMEOUT
    while not runs.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert job_state(job) == "RUNNING"

    subprocess.run(["scontrol", "requeue", job], check=True)

    # A requeued job is eligible again only after cred_expire (10 s in this cluster's config).
    assert wait_for_jobs([job], timeout=TIMEOUT) == {job: "COMPLETED"}
    assert runs.read_text().splitlines() == ["run 0", "run 1"]


def test_wait_for_jobs_times_out_naming_unfinished_jobs(tmp_path: Path) -> None:
    job = sbatch(tmp_path, "--begin=now+600", "--wrap", "true")
    try:
        with pytest.raises(TimeoutError, match=job):
            wait_for_jobs([job], timeout=0.5)
    finally:
        subprocess.run(["scancel", job], check=True)
    assert wait_for_jobs([job], timeout=10) == {job: "CANCELLED"}
