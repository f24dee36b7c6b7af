"""Launching: torchrun on one node and on two (simulated) nodes trains alike; the Slurm rendezvous
every node derives; the scripts `submit --dry-run` writes (quoting, array splitting)."""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from launch.node import PORT_BASE, slurm_rendezvous
from launch.sbatch import array_spec, directive
from launch.torchrun import free_port, torchrun_command
from pipeline.ground.errors import UserError
from tests.conftest import REPO, metrics, torchrun

STEPS = 8
TRAIN = [
    "--set",
    f"train.max_steps={STEPS}",
    "--set",
    "train.global_batch_size=8",
    "--set",
    "train.micro_batch_size=2",
    "--set",
    "train.eval_interval=4",
    "--set",
    "train.peak_tflops=1",
]


def losses(run: Path) -> list[tuple[int, float]]:
    return [(r["step"], r["loss"]) for r in metrics(run)]


def two_agents(shards: Path, run: Path, nproc_per_node: int) -> None:
    """Two torchrun agents on this machine, as two nodes of one c10d rendezvous."""
    command = torchrun_command(
        f"127.0.0.1:{free_port()}",
        2,
        nproc_per_node,
        0,
        30,
        "two-nodes",
        ["--data", str(shards), "--output", str(run), *TRAIN],
    )
    agents = [
        subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for _ in range(2)
    ]
    outputs = [agent.communicate(timeout=900)[0] for agent in agents]
    for agent, output in zip(agents, outputs):
        assert agent.returncode == 0, output[-4000:]


def test_one_node_and_two_nodes_train_alike(tiny_shards: Path, tmp_path: Path) -> None:
    """Four ranks on two nodes (dp 4) follow the curve of two ranks on one (dp 2): the global batch is the same."""
    torchrun(2, "train", "--data", str(tiny_shards), "--output", str(tmp_path / "one-node-2"), *TRAIN)
    two_agents(tiny_shards, tmp_path / "two-nodes-2x2", 2)
    reference = losses(tmp_path / "one-node-2")
    assert [step for step, _ in reference] == list(range(1, STEPS + 1))
    curve = losses(tmp_path / "two-nodes-2x2")
    assert [step for step, _ in curve] == [step for step, _ in reference]
    for (step, ours), (_, ref) in zip(curve, reference):
        assert ours == pytest.approx(ref, rel=1e-4), f"step {step}"


def slurm_env(job: str, nodes: int) -> dict[str, str]:
    return {"SLURM_JOB_ID": job, "SLURM_JOB_NUM_NODES": str(nodes), "SLURM_JOB_NODELIST": "gpu[07-08]"}


def test_verbs_tear_their_process_groups_down(tiny_shards: Path, tmp_path: Path) -> None:
    """Groups left to interpreter exit can abort a rank at the end of a finished run (gloo's threads
    outlive the interpreter); `train` and `generate` leave none behind, so one process can also train twice
    (and a third time into a finished run, which says there is nothing to train)."""
    driver = f"""
import torch.distributed as dist
from megatron.core import parallel_state
from pipeline.cli import main
for run in ("first", "second", "second"):
    args = ["train", "--data", {str(tiny_shards)!r}, "--output", {str(tmp_path)!r} + "/" + run,
            "--set", "train.max_steps=2", "--set", "train.global_batch_size=4", "--set", "train.micro_batch_size=2"]
    assert main(args) == 0, run
    assert not dist.is_initialized() and not parallel_state.model_parallel_is_initialized(), run
assert main(["generate", "--checkpoint", {str(tmp_path)!r} + "/second", "--prompt", "a", "--max-new-tokens", "2"]) == 0
assert not dist.is_initialized() and not parallel_state.model_parallel_is_initialized(), "generate"
print("no groups left")
"""
    result = subprocess.run([sys.executable, "-c", driver], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0 and "no groups left" in result.stdout, result.stderr[-3000:]
    assert [step for step, _ in losses(tmp_path / "second")] == [1, 2]
    assert result.stdout.count("training finished in") == 2
    assert f"nothing to train: {tmp_path / 'second'} is at step 2 of train.max_steps=2 already" in result.stdout


def test_rendezvous_comes_from_the_job() -> None:
    hosts = lambda nodelist: ["gpu07", "gpu08"]  # noqa: E731
    rdzv = slurm_rendezvous(slurm_env("123456", 2), hostnames=hosts, resolve=lambda host: "10.1.2.7")
    assert (rdzv.head, rdzv.nnodes, rdzv.run_id) == ("gpu07", 2, "crucible-123456")
    assert rdzv.port == PORT_BASE + 123456 % 30000
    assert slurm_rendezvous(slurm_env("123457", 2), hostnames=hosts, resolve=lambda h: "10.1.2.7").port != rdzv.port


def test_head_resolving_to_localhost_fails_fast_on_several_nodes() -> None:
    hosts = lambda nodelist: ["gpu07", "gpu08"]  # noqa: E731
    with pytest.raises(UserError, match="resolves to a loopback address"):
        slurm_rendezvous(slurm_env("7", 2), hostnames=hosts, resolve=lambda host: "127.0.1.1")
    assert slurm_rendezvous(slurm_env("7", 1), hostnames=hosts, resolve=lambda host: "127.0.1.1").nnodes == 1
    with pytest.raises(UserError, match="not inside a Slurm job"):
        slurm_rendezvous({}, hostnames=hosts)


def test_array_spec_collapses_runs() -> None:
    assert array_spec([7, 0, 1, 2, 5, 8], 4) == "0-2,5,7-8%4"
    assert array_spec([3], 16) == "3%16"


def test_sbatch_values_that_cannot_be_quoted_are_refused() -> None:
    assert directive("--job-name", "a b;$c") == '#SBATCH --job-name="a b;$c"'
    with pytest.raises(UserError, match="double quote"):
        directive("--output", 'runs/say "hi"/log')


def dry_run(output: Path, *assignments: str) -> subprocess.CompletedProcess[str]:
    sets = [arg for value in assignments for arg in ("--set", value)]
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pipeline",
            "submit",
            "--config",
            "configs/sample.yaml",
            "--output",
            str(output),
            "--dry-run",
            *sets,
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_dry_run_writes_scripts_that_quote_paths_and_split_arrays(tmp_path: Path) -> None:
    output = tmp_path / "run $(touch pwned) 'x' ;&"
    result = dry_run(
        output,
        "prep.shard_mb=1",
        "launch.slurm.max_array_size=10",
        "launch.slurm.prep.max_parallel=4",
        "launch.slurm.partition=gpu a100",
    )
    assert result.returncode == 0, result.stderr
    slurm = output / "slurm"
    assert not (slurm / "jobs.json").exists()  # nothing was submitted
    from pipeline.config import load_config
    from pipeline.prep_graph import build_prep_graph

    plan = build_prep_graph(load_config(REPO / "configs/sample.yaml", ["prep.shard_mb=1"]).prep)
    tasks = next(step.n_tasks for step in plan.steps if step.name == "minhash_dedup.buckets")
    assert tasks > 20, "enough bucket tasks for three arrays of at most 10"
    last_from = (tasks - 1) // 10 * 10
    buckets = sorted(p.name for p in slurm.glob("prep-minhash_dedup.buckets*.sbatch"))
    assert buckets == sorted(
        [
            "prep-minhash_dedup.buckets.sbatch",
            *(f"prep-minhash_dedup.buckets-from-{start}.sbatch" for start in range(10, tasks, 10)),
        ]
    )
    last_chunk = slurm / f"prep-minhash_dedup.buckets-from-{last_from}.sbatch"
    assert f'#SBATCH --array="0-{tasks - 1 - last_from}%4"' in last_chunk.read_text()
    assert '#SBATCH --partition="gpu a100"' in (slurm / "train.sbatch").read_text()
    assert "--shutdown-seconds 300 --" in (slurm / "train.sbatch").read_text()  # Ctrl-C/scancel: time to save
    status = subprocess.run(
        [sys.executable, "-m", "pipeline", "status", "--output", str(output)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert "training: not submitted; no step logged yet" in " ".join(status.stdout.split()), status.stderr
    for script in [*slurm.glob("*.sbatch"), slurm / "submit.sh"]:
        check = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
        assert check.returncode == 0, f"{script.name}: {check.stderr}"
    # Run the last chunk's command line with the Python replaced by printf: each argument intact.
    line = last_chunk.read_text().splitlines()[-1]
    program = shlex.split(line)[0]
    echoed = subprocess.run(
        ["bash", "-c", "printf '%s\\n' " + line.removeprefix(shlex.quote(program))],
        env={"SLURM_ARRAY_TASK_ID": "4", "PATH": "/usr/bin:/bin"},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    assert echoed[echoed.index("--output") + 1] == str(output / "data")
    assert echoed[echoed.index("--task") + 1] == str(last_from + 4)  # the chunk's offset plus the array index
    assert not (tmp_path / "pwned").exists()


def test_dry_run_refuses_a_run_folder_an_sbatch_line_cannot_hold(tmp_path: Path) -> None:
    result = dry_run(tmp_path / 'say "hi"')
    assert result.returncode == 2 and "double quote" in result.stderr


def test_dry_run_gives_prep_jobs_their_own_partition_account_time_and_options(tmp_path: Path) -> None:
    result = dry_run(
        tmp_path / "run",
        "launch.slurm.partition=gpu",
        "launch.slurm.account=llm",
        "launch.slurm.gpus_per_node=8",
        "launch.slurm.sbatch_args=[--qos=high]",
        "launch.slurm.prep.partition=cpu",
        "launch.slurm.prep.account=data",
        "launch.slurm.prep.time='00:30:00'",
        "launch.slurm.prep.cpus_per_task=4",
        "launch.slurm.prep.sbatch_args=[--nice=10]",
    )
    assert result.returncode == 0, result.stderr
    slurm = tmp_path / "run" / "slurm"
    train = (slurm / "train.sbatch").read_text()
    for line in ('--partition="gpu"', '--account="llm"', '--qos="high"', '--gpus-per-node="8"'):
        assert f"#SBATCH {line}" in train
    prep = sorted(slurm.glob("prep-*.sbatch"))
    assert {p.name for p in prep} >= {"prep-prepare.sbatch", "prep-publish.sbatch", "prep-read.sbatch"}
    for script in prep:
        text = script.read_text()
        for line in (
            '--partition="cpu"',
            '--account="data"',
            '--time="00:30:00"',
            '--cpus-per-task="4"',
            '--nice="10"',
        ):
            assert f"#SBATCH {line}" in text, script.name
        assert "--qos" not in text and "--gpus" not in text and '"gpu"' not in text, script.name


def test_prep_jobs_take_training_partition_and_options_unless_given_their_own(tmp_path: Path) -> None:
    result = dry_run(tmp_path / "run", "launch.slurm.partition=batch", "launch.slurm.sbatch_args=[--qos=high]")
    assert result.returncode == 0, result.stderr
    text = (tmp_path / "run" / "slurm" / "prep-read.sbatch").read_text()
    assert '#SBATCH --partition="batch"' in text and '#SBATCH --qos="high"' in text


@pytest.mark.parametrize(
    ("assignments", "refusal"),
    [
        (["parallel.tp=3", "launch.nproc_per_node=3"], "heads"),
        (["launch.nproc_per_node=16"], "global_batch_size 8 is not divisible by micro_batch_size 4 x dp 16"),
    ],
)
def test_submit_refuses_a_layout_training_would_refuse_before_anything_is_written(
    tmp_path: Path, assignments: list[str], refusal: str
) -> None:
    result = dry_run(tmp_path / "run", *assignments)
    assert result.returncode == 2 and refusal in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "run" / "slurm").exists()
