"""`crucible submit` against a real one-node Slurm cluster (slurmctld + slurmd + munge).

The sample config's run, as array jobs of 2 tasks per step and a 2-process training job, must
give the local executor's bytes and loss (with a stage of each kind of step: per document, by hash
range, by LSH band, global, the tokenizer and pack; every stage's steps run through the same task
runner, `pipeline.executors.steps.execute_task`); a cancelled array task is rerun alone by a
resubmission; SIGUSR1 makes training checkpoint, stop, requeue and resume.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO, metrics, torchrun
from tests.slurm_cluster import ensure_cluster, job_states, wait_for_jobs

SAMPLE = ["--config", "configs/sample.yaml"]
SETS = [
    "prep.shard_mb=3",  # two input shards: each step an array job of two tasks, which the two cores run at once
    "launch.nproc_per_node=2",
    "train.max_steps=6",
    "train.eval_interval=3",
    "checkpoint.interval=3",
    "train.log_interval=1",
    "eval.tasks=[]",  # the executors are under test here, not task scores (tests/test_task_eval.py)
    "prep.stages=[normalize, exact_dedup, minhash_dedup, langid, tokenize, pack]",
]
JOB_TIMEOUT = 600


def sets(*assignments: str) -> list[str]:
    return [arg for value in assignments for arg in ("--set", value)]


def crucible(*args: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "pipeline", *args], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, f"crucible {args[0]} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result.stdout


def last_submission(run: Path) -> list[dict]:
    return json.loads((run / "slurm" / "jobs.json").read_text())["submissions"][-1]["jobs"]


def submit_and_wait(run: Path, *args: str) -> dict[str, str]:
    crucible("submit", *SAMPLE, "--output", str(run), *args)
    return wait_for_jobs([job["job_id"] for job in last_submission(run)], JOB_TIMEOUT)


def tree_bytes(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def cluster() -> None:
    ensure_cluster()


@pytest.fixture(scope="module")
def slurm_run(cluster: None, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sample run submitted to Slurm, into a folder whose name needs quoting."""
    run = tmp_path_factory.mktemp("slurm") / "run $HOME 'quoted' ;&"
    states = submit_and_wait(run, *sets(*SETS))
    assert set(states.values()) == {"COMPLETED"}, states
    return run


@pytest.fixture(scope="module")
def local_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same run with the local executor and torchrun."""
    run = tmp_path_factory.mktemp("local")
    crucible("prep", *SAMPLE, "--output", str(run / "data"), "--no-progress", *sets(*SETS))
    torchrun(2, "train", *SAMPLE, "--data", str(run / "data" / "shards"), "--output", str(run / "train"), *sets(*SETS))
    return run


def test_slurm_run_equals_local_run(slurm_run: Path, local_run: Path) -> None:
    submitted = last_submission(slurm_run)
    assert [job["part"] for job in submitted][-2:] == ["publish", "train"]
    assert all(len(job["tasks"]) == 2 for job in submitted if job["part"] in ("read", "normalize", "langid", "pack"))
    for folder in ("clean", "dropped", "quarantine", "shards"):
        ours, theirs = tree_bytes(slurm_run / "data" / folder), tree_bytes(local_run / "data" / folder)
        assert ours.keys() == theirs.keys(), folder
        assert [name for name in ours if ours[name] != theirs[name]] == [], folder
    slurm_losses = [(r["step"], r["loss"], r.get("val_loss")) for r in metrics(slurm_run / "train")]
    local_losses = [(r["step"], r["loss"], r.get("val_loss")) for r in metrics(local_run / "train")]
    assert slurm_losses == local_losses


def test_status_reports_every_step_done(slurm_run: Path) -> None:
    from pipeline.executors.slurm import status

    steps, train = status(slurm_run)
    assert steps and all(row.done == row.total for row in steps)
    assert set(train["states"]) == {"COMPLETED"} and train["last"]["step"] == 6
    assert "training: job" in crucible("status", "--output", str(slurm_run))


def test_sigusr1_checkpoints_requeues_and_resumes(slurm_run: Path) -> None:
    """Resubmitting with more steps runs training only (prep is done); SIGUSR1 mid-run stops it
    after a checkpoint, the job requeues itself and the requeued job resumes from there."""
    run_sets = [s for s in SETS if not s.startswith("train.max_steps")] + ["train.max_steps=18"]
    crucible("submit", *SAMPLE, "--output", str(slurm_run), *sets(*run_sets))
    (train_job,) = [job["job_id"] for job in last_submission(slurm_run)]
    deadline = time.monotonic() + JOB_TIMEOUT
    while not any(r["step"] >= 9 for r in metrics(slurm_run / "train")):
        assert time.monotonic() < deadline, "training did not reach step 9"
        time.sleep(0.5)
    subprocess.run(["scancel", "--signal=USR1", train_job], check=True)
    assert wait_for_jobs([train_job], JOB_TIMEOUT) == {train_job: "COMPLETED"}
    shown = subprocess.run(["scontrol", "show", "job", "-o", train_job], capture_output=True, text=True).stdout
    assert "Restarts=1" in shown
    events = [json.loads(line) for line in (slurm_run / "train" / "events.jsonl").read_text().splitlines()]
    (stop,) = [e for e in events if e["event"] == "stop"]
    assert stop["signal"] == "SIGUSR1" and stop["step"] >= 9
    resumes = [e for e in events if e["event"] == "resume"]
    assert resumes[-1]["step"] == stop["step"] and resumes[-1]["checkpoint"] == f"step-{stop['step']:08d}"
    assert metrics(slurm_run / "train")[-1]["step"] == 18
    assert not (slurm_run / "train" / "stopped.json").exists()


def test_cancelled_task_reruns_alone(cluster: None, tmp_path: Path) -> None:
    """scancel of one running array element: the chain after it is cancelled; a resubmission
    runs that task (and the steps after it) only. Arrays are split at 3 tasks here, as a cluster
    with MaxArraySize 3 needs."""
    prep = [*SETS, "prep.stages=[normalize, exact_dedup, langid]", "prep.shard_mb=1", "launch.slurm.max_array_size=3"]
    for attempt in range(3):  # the cancel must land while task 2 works, not after it wrote its marker
        run = tmp_path / f"run-{attempt}"
        crucible("submit", *SAMPLE, "--output", str(run), "--prep-only", *sets(*prep))
        first = last_submission(run)
        normalize = [job for job in first if job["part"] == "normalize"]
        assert [(job["offset"], job["tasks"]) for job in normalize] == [(0, [0, 1, 2]), (3, [3])]
        target = normalize[0]["job_id"]
        deadline = time.monotonic() + JOB_TIMEOUT
        while job_states(target).get(f"{target}_2") != "RUNNING":
            assert time.monotonic() < deadline, "normalize task 2 never ran"
            time.sleep(0.05)
        subprocess.run(["scancel", f"{target}_2"], check=True)
        states = wait_for_jobs([job["job_id"] for job in first], JOB_TIMEOUT)
        assert states[f"{target}_2"] == "CANCELLED"
        markers = run / "data" / "work" / "normalize"
        if not (markers / "done-00002.json").exists():
            break  # else task 2 had finished its work (a done task stays done): try again
    else:
        pytest.fail("every cancel landed after normalize task 2 had finished")
    kept = {p.name: p.stat().st_mtime_ns for p in markers.glob("done-*.json")}
    assert sorted(kept) == ["done-00000.json", "done-00001.json", "done-00003.json"]

    crucible("submit", *SAMPLE, "--output", str(run), "--prep-only", *sets(*prep))
    second = last_submission(run)
    assert [(job["part"], job["tasks"]) for job in second if job["part"] in ("read", "normalize")] == [
        ("normalize", [2])
    ]
    states = wait_for_jobs([job["job_id"] for job in second], JOB_TIMEOUT)
    assert set(states.values()) == {"COMPLETED"}, states
    assert {p.name: p.stat().st_mtime_ns for p in markers.glob("done-*.json") if p.name in kept} == kept

    local = tmp_path / "local"
    crucible("prep", *SAMPLE, "--output", str(local), "--no-progress", *sets(*prep))
    for folder in ("clean", "dropped", "quarantine"):
        assert tree_bytes(run / "data" / folder) == tree_bytes(local / folder), folder
