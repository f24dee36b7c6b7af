"""`prep --executor ray` runs the local executor's tasks on a Ray cluster and writes the same bytes, through a
killed worker (Ray retries its task), a killed driver (the same command resumes from the markers) and a
task that fails every try (one line naming the command that reruns it alone).

Each run starts its own local Ray cluster (prep.ray.address=auto finds none: the temp folder of these tests
holds no cluster), and the tests check that no Ray process outlives them.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import REPO

pytest.importorskip("ray")
pytestmark = pytest.mark.slow  # each test starts a Ray cluster and runs a prep (tens of seconds on 2 cores)

STAGES = "[normalize,exact_dedup,minhash_dedup,quality,tokenize,pack]"
PUBLISHED = ("clean", "dropped", "quarantine", "shards", "tokenizer")


def prep_command(corpus: Path, output: Path, *flags: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "pipeline",
        "prep",
        "--input",
        str(corpus),
        "--output",
        str(output),
        "--no-progress",
        "--set",
        "prep.shard_mb=0.25",
        "--set",
        "prep.workers=2",
        "--set",
        "prep.tokenizer.vocab_size=1000",
        "--set",
        f"prep.stages={STAGES}",
        *flags,
    ]


def ray_command(corpus: Path, output: Path, *sets: str) -> list[str]:
    return prep_command(corpus, output, "--executor", "ray", *(arg for value in sets for arg in ("--set", value)))


def published(output: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(output)): p.read_bytes()
        for folder in PUBLISHED
        for p in sorted((output / folder).rglob("*"))
        if p.is_file()
    }


def ray_processes(session: Path) -> list[int]:
    """Processes of Ray sessions under `session`, this module's folder for them."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and str(session) in (proc / "cmdline").read_bytes().decode(errors="replace"):
                found.append(int(proc.name))
        except OSError:
            continue
    return found


@pytest.fixture(scope="module")
def ray_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """The environment of the runs: a temp folder of their own for Ray's sessions, emptied of processes after."""
    session = Path(f"/tmp/crt{os.getpid()}")  # short: Ray's socket paths must fit 107 characters
    session.mkdir(exist_ok=True)
    env = os.environ | {"RAY_TMPDIR": str(session), "RAY_ADDRESS": "", "PYTHONPATH": str(REPO)}
    yield env
    time.sleep(1)
    left = ray_processes(session)
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    shutil.rmtree(session, ignore_errors=True)
    assert not left, f"Ray processes left behind: {left}"


@pytest.fixture(scope="module")
def reference(mixed_corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    output = tmp_path_factory.mktemp("local") / "prep"
    subprocess.run(prep_command(mixed_corpus, output), cwd=REPO, check=True, capture_output=True)
    return output


def run(command: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


def test_ray_gives_the_bytes_of_local_and_status_reads_it(
    mixed_corpus: Path, reference: Path, ray_env: dict, tmp_path: Path
) -> None:
    result = run(ray_command(mixed_corpus, tmp_path / "prep"), ray_env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert published(tmp_path / "prep") == published(reference)
    status = run([sys.executable, "-m", "pipeline", "status", "--output", str(tmp_path / "prep")], ray_env)
    assert "minhash_dedup.buckets" in status.stdout and "finished" in status.stdout, status.stdout


def _kill_first(prefix: str, deadline: float) -> bool:
    """SIGKILL the first process whose title starts with `prefix` (a Ray worker running that task)."""
    while time.monotonic() < deadline:
        for proc in Path("/proc").iterdir():
            try:
                if proc.name.isdigit() and (proc / "cmdline").read_bytes().startswith(prefix.encode()):
                    os.kill(int(proc.name), signal.SIGKILL)
                    return True
            except OSError:
                continue
        time.sleep(0.005)
    return False


def test_a_killed_worker_is_retried_to_the_same_bytes(
    mixed_corpus: Path, reference: Path, ray_env: dict, tmp_path: Path
) -> None:
    process = subprocess.Popen(
        ray_command(mixed_corpus, tmp_path / "prep"),
        cwd=REPO,
        env=ray_env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    killed = _kill_first("ray::prep:minhash_dedup.signatures:", time.monotonic() + 120)
    _, stderr = process.communicate(timeout=600)
    assert killed, "a worker ran a signatures task and was killed"
    assert process.returncode == 0, stderr[-3000:]
    assert published(tmp_path / "prep") == published(reference)


def test_a_killed_driver_resumes_to_the_same_bytes(
    mixed_corpus: Path, reference: Path, ray_env: dict, tmp_path: Path
) -> None:
    output = tmp_path / "prep"
    process = subprocess.Popen(
        ray_command(mixed_corpus, output),
        cwd=REPO,
        env=ray_env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    marker = output / "work" / "exact_dedup.filter" / "done-00000.json"
    deadline = time.monotonic() + 120
    while not marker.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert marker.exists() and not (output / "stats.json").exists(), "killed mid-way"
    status = run([sys.executable, "-m", "pipeline", "status", "--output", str(output)], ray_env)
    assert "rerun the same `crucible prep` command to resume" in status.stdout, status.stdout
    result = run(ray_command(mixed_corpus, output), ray_env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert published(output) == published(reference)


def test_a_task_failing_every_try_names_the_command_that_reruns_it(
    mixed_corpus: Path, reference: Path, ray_env: dict, tmp_path: Path
) -> None:
    output = tmp_path / "prep"
    shutil.copytree(reference, output)
    shard = output / "work" / "normalize" / "data-00001.parquet"
    intact = shard.read_bytes()
    shard.write_bytes(intact[: len(intact) // 2])  # damaged on disk after its step was sealed ...
    (output / "work" / "normalize" / "outputs.json").unlink()  # ... with the seal lost too
    (output / "work" / "exact_dedup.hash" / "done-00001.json").unlink()
    result = run(ray_command(mixed_corpus, output, "prep.ray.max_retries=1"), ray_env)
    assert result.returncode == 2, result.stderr[-3000:]
    line = result.stderr.strip().splitlines()[-1]
    assert "step exact_dedup.hash task 1 failed 2 time(s)" in line, line
    rerun = line.split("rerun it alone (with its traceback): ")[1].split()
    assert rerun[:2] == ["crucible", "prep-task"]
    shard.write_bytes(intact)
    alone = run([sys.executable, "-m", "pipeline", *rerun[1:]], ray_env)
    assert alone.returncode == 0 and "exact_dedup.hash task 1: done" in alone.stdout, alone.stderr[-3000:]
