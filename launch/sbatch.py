"""sbatch scripts of a Crucible run: one array job per data-prep step, publishing, training.

Each script is complete on its own (its #SBATCH lines carry the resources, the whole array and
the log path), so a user can read it and rerun it by hand with `sbatch`; `crucible submit` only
adds the dependencies and, on a resubmission, the array indices still to run. Values in #SBATCH
lines are double-quoted (Slurm takes them literally); everything in the shell body goes through
shlex.quote, so paths and names with spaces or shell metacharacters are safe.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

from launch.config import LaunchConfig, SlurmConfig
from pipeline.ground.errors import UserError
from pipeline.ground.layout import PrepFolder, RunFolder, TrainFolder
from training.config import STOPPED_FILE


@dataclass(frozen=True)
class Script:
    name: str  # the job name
    file: Path
    text: str


def job_name(run_name: str, part: str) -> str:
    """Job names squeue shows in full: letters, digits and . _ - only."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", f"crucible-{run_name}-{part}")


def directive(option: str, value: object) -> str:
    text = str(value)
    if '"' in text or "\n" in text:
        raise UserError(
            f"sbatch {option} value {text!r} holds a double quote or a newline, which an #SBATCH "
            f"line cannot carry; rename it"
        )
    return f'#SBATCH {option}="{text}"'


def log_pattern(folder: Path, stem: str) -> str:
    """A log path for --output: % in the folder is literal (%%), %A/%a/%j expand."""
    return str(folder).replace("%", "%%") + f"/{stem}"


def _header(
    name: str, log: str, slurm: SlurmConfig, time: str, resources: list[tuple[str, object]], comment: str
) -> list[str]:
    lines = [
        "#!/bin/bash",
        f"# {comment}",
        directive("--job-name", name),
        directive("--output", log),
        directive("--time", time),
    ]
    lines += [directive(option, value) for option, value in resources]
    if slurm.partition:
        lines.append(directive("--partition", slurm.partition))
    if slurm.account:
        lines.append(directive("--account", slurm.account))
    for extra in slurm.sbatch_args:
        option, _, value = extra.partition("=")
        lines.append(directive(option, value) if value else f"#SBATCH {option}")
    return [*lines, "set -euo pipefail", *slurm.setup]


def _crucible(python: str, *args: object) -> str:
    return shlex.join([python, "-m", "pipeline", *map(str, args)])


def array_spec(indices: list[int], max_parallel: int) -> str:
    """`0-3,7,9-10%M`: runs of consecutive indices collapsed, at most M running at once."""
    runs: list[list[int]] = []
    for index in sorted(indices):
        if runs and index == runs[-1][1] + 1:
            runs[-1][1] = index
        else:
            runs.append([index, index])
    ranges = ",".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)
    return f"{ranges}%{max_parallel}"


@dataclass(frozen=True)
class RunPaths:
    """Where a submitted run lives; every job runs from `workdir` with the config snapshot."""

    run: Path
    workdir: Path
    python: str

    @property
    def folder(self) -> RunFolder:
        return RunFolder(self.run)

    @property
    def slurm(self) -> Path:
        return self.folder.slurm

    @property
    def config(self) -> Path:
        return self.slurm / "config.yaml"

    @property
    def jobs(self) -> Path:
        """The record of the submitted jobs, which `crucible status` asks Slurm about."""
        return self.slurm / "jobs.json"

    @property
    def logs(self) -> Path:
        return self.slurm / "logs"

    @property
    def data(self) -> PrepFolder:
        return self.folder.data

    @property
    def train(self) -> TrainFolder:
        return self.folder.train


def prep_task_script(
    paths: RunPaths, run_name: str, slurm: SlurmConfig, step: str, n_tasks: int, offset: int
) -> Script:
    """Tasks offset .. offset+n_tasks-1 of one step, as array indices 0 .. n_tasks-1."""
    part = step if offset == 0 else f"{step}-from-{offset}"
    name = job_name(run_name, part)
    task = f"$(( {offset} + SLURM_ARRAY_TASK_ID ))" if offset else "$SLURM_ARRAY_TASK_ID"
    lines = _header(
        name,
        log_pattern(paths.logs, f"{part}-%A_%a.out"),
        slurm.for_prep(),
        slurm.prep.time,
        [
            ("--array", array_spec(list(range(n_tasks)), slurm.prep.max_parallel)),
            ("--ntasks", 1),
            ("--cpus-per-task", slurm.prep.cpus_per_task),
        ],
        f"Crucible data prep, step {step}: array index i runs task {offset} + i of the step.",
    )
    lines += [
        f"cd {shlex.quote(str(paths.workdir))}",
        _crucible(paths.python, "prep-task", "--config", paths.config, "--output", paths.data.root, "--step", step)
        + f' --task "{task}"',
    ]
    return Script(name, paths.slurm / f"prep-{part}.sbatch", "\n".join(lines) + "\n")


def prep_single_script(paths: RunPaths, run_name: str, slurm: SlurmConfig, action: str, cpus: int = 1) -> Script:
    """`prepare` (clear step folders of another config) or `publish` (clean/, shards/, stats.json: its
    publishing tasks in `cpus` processes)."""
    name = job_name(run_name, action)
    lines = _header(
        name,
        log_pattern(paths.logs, f"{action}-%j.out"),
        slurm.for_prep(),
        slurm.prep.time,
        [("--ntasks", 1), ("--cpus-per-task", max(cpus, slurm.prep.cpus_per_task))],
        f"Crucible data prep: {action}.",
    )
    lines += [
        f"cd {shlex.quote(str(paths.workdir))}",
        _crucible(paths.python, "prep-task", "--config", paths.config, "--output", paths.data.root, f"--{action}"),
    ]
    return Script(name, paths.slurm / f"prep-{action}.sbatch", "\n".join(lines) + "\n")


def train_script(paths: RunPaths, run_name: str, launch: LaunchConfig) -> Script:
    """One torchrun agent per node (launch.node); a signal-stopped run is requeued and resumes."""
    slurm = launch.slurm
    name = job_name(run_name, "train")
    resources: list[tuple[str, object]] = [
        ("--nodes", launch.nnodes),
        ("--ntasks-per-node", 1),
        ("--signal", f"USR1@{slurm.signal_seconds}"),
        ("--open-mode", "append"),
    ]
    if slurm.gpus_per_node:
        resources.append(("--gpus-per-node", slurm.gpus_per_node))
    if slurm.train_cpus_per_node:
        resources.append(("--cpus-per-task", slurm.train_cpus_per_node))
    lines = _header(
        name,
        log_pattern(paths.logs, "train-%j.out"),
        slurm,
        slurm.train_time,
        resources,
        "Crucible training: one torchrun agent per node; SIGUSR1 before the time limit makes the "
        "ranks checkpoint and stop, then this job requeues itself and resumes.",
    )
    lines.insert(lines.index("set -euo pipefail"), "#SBATCH --requeue")
    stopped = shlex.quote(str(paths.train.root / STOPPED_FILE))
    agent = shlex.join(
        [
            paths.python,
            "-m",
            "launch.node",
            "--nproc-per-node",
            str(launch.nproc_per_node),
            "--max-restarts",
            str(launch.max_restarts),
            "--shutdown-seconds",
            str(launch.shutdown_seconds),
            "--",
            "--config",
            str(paths.config),
            "--data",
            str(paths.data.local_shards),
            "--output",
            str(paths.train.root),
        ]
    )
    lines += [
        f"cd {shlex.quote(str(paths.workdir))}",
        f"rm -f {stopped}",
        f"srun --kill-on-bad-exit=1 ${{SLURM_CPUS_PER_TASK:+--cpus-per-task=$SLURM_CPUS_PER_TASK}} {agent}",
        f"if [ -f {stopped} ]; then",
        '    echo "stopped by a signal after a checkpoint: requeueing job $SLURM_JOB_ID"',
        '    scontrol requeue "$SLURM_JOB_ID"',
        "fi",
    ]
    return Script(name, paths.slurm / "train.sbatch", "\n".join(lines) + "\n")


def by_hand_script(paths: RunPaths, chain: list[list[Script]]) -> Script:
    """submit.sh: the whole chain with plain sbatch; each group of jobs (a step, maybe split into
    several arrays) starts after every job of the group before succeeded.

    Whole arrays are submitted; tasks already done exit at once (their completion markers)."""
    lines = [
        "#!/bin/bash",
        "# Submits the whole run by hand, the same chain `crucible submit` submits.",
        "set -euo pipefail",
        "after=()",
    ]
    for group in chain:
        lines.append("ids=()")
        for script in group:
            submit = f'sbatch --parsable "${{after[@]}}" {shlex.quote(str(script.file))}'
            lines.append(f'id=$({submit}); ids+=("${{id%%;*}}")')
            lines.append(f'echo "{script.name}: job ${{ids[-1]}}"')
        lines.append('after=(--dependency="afterok:$(IFS=:; echo "${ids[*]}")")')
    return Script("submit", paths.slurm / "submit.sh", "\n".join(lines) + "\n")
