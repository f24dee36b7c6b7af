"""How training processes are started: on this machine, across nodes, and as Slurm jobs."""

from __future__ import annotations

from typing import Any

from pydantic import Field, field_validator

from pipeline.ground.schema import Section

SLURM_TIME = r"^(\d+-)?\d+(:\d{2}){0,2}$"  # minutes, MM:SS, HH:MM:SS, D-HH[:MM[:SS]]
LINE_BREAKS = "\n\r\v\f\x00\x1c\x1d\x1e\x85\u2028\u2029"  # what str.splitlines splits on, and NUL


class _OneLineOptions(Section):
    """sbatch values that must stay on their #SBATCH line."""

    @field_validator("sbatch_args", "partition", "account", check_fields=False)
    @classmethod
    def _one_line(cls, value: Any) -> Any:
        """A line break would end the #SBATCH block early: options after it are silently ignored."""
        for entry in value if isinstance(value, list) else [value]:
            if entry is not None and any(ch in LINE_BREAKS for ch in entry):
                raise ValueError(f"{entry!r} holds a line break; give each sbatch option as its own entry")
        return value


def _no_unquoted_time(value: Any) -> Any:
    if isinstance(value, int):  # YAML reads an unquoted 48:00:00 as the number 172800
        raise ValueError(
            f"write Slurm times as quoted strings, e.g. '48:00:00' (an unquoted H:MM:SS is read "
            f"by YAML as the number {value})"
        )
    return value


class SlurmPrepConfig(_OneLineOptions):
    """sbatch settings of the data-prep jobs (CPU work: the step arrays, prepare and publish), apart from
    training's, so that they can run on a CPU partition under another account."""

    partition: str | None = Field(
        None, description="Partition of the data-prep jobs (default: launch.slurm.partition)."
    )
    account: str | None = Field(
        None, description="Account charged for the data-prep jobs (default: launch.slurm.account)."
    )
    time: str = Field("04:00:00", pattern=SLURM_TIME, description="Time limit of each data-prep task.")
    cpus_per_task: int = Field(1, ge=1, description="CPUs of each data-prep task.")
    max_parallel: int = Field(16, ge=1, description="Array tasks of one step running at once (the %M).")
    sbatch_args: list[str] | None = Field(
        None, description="Extra sbatch options of the data-prep jobs (default: launch.slurm.sbatch_args)."
    )

    _quoted_time = field_validator("time", mode="before")(_no_unquoted_time)


class SlurmConfig(_OneLineOptions):
    """sbatch settings of `crucible submit`; every job also gets `setup` before its command."""

    partition: str | None = Field(
        None,
        description="Partition of the training job, and of the data-prep jobs "
        "unless launch.slurm.prep.partition (default: the cluster's).",
    )
    account: str | None = Field(
        None,
        description="Account charged for the training job, and for the data-prep "
        "jobs unless launch.slurm.prep.account.",
    )
    gpus_per_node: int = Field(0, ge=0, description="GPUs of each training node (0: a CPU cluster).")
    train_cpus_per_node: int | None = Field(
        None, ge=1, description="CPUs of each training node's torchrun (default: the partition's default)."
    )
    train_time: str = Field(
        "24:00:00",
        pattern=SLURM_TIME,
        description="Time limit of the training job; it checkpoints and requeues before it.",
    )
    signal_seconds: int = Field(120, ge=10, description="Seconds before the time limit that Slurm sends SIGUSR1.")
    prep: SlurmPrepConfig = Field(default_factory=SlurmPrepConfig)
    max_array_size: int | None = Field(
        None, ge=2, description="Split arrays above this many tasks (default: the cluster's MaxArraySize)."
    )
    python: str | None = Field(
        None, description="Python with Crucible installed, on the nodes (default: the one running `submit`)."
    )
    setup: list[str] = Field(
        default_factory=list,
        description="Shell lines run first in every job (module load ..., source venv/bin/activate).",
    )
    sbatch_args: list[str] = Field(
        default_factory=list,
        description="Extra sbatch options of the training job "
        "(and of data prep unless "
        "launch.slurm.prep.sbatch_args), e.g. --qos=high.",
    )

    _quoted_time = field_validator("train_time", mode="before")(_no_unquoted_time)

    def for_prep(self) -> SlurmConfig:
        """These settings with the data-prep jobs' partition, account and options in place of training's."""
        prep = self.prep
        return self.model_copy(
            update={
                "partition": prep.partition or self.partition,
                "account": prep.account or self.account,
                "sbatch_args": self.sbatch_args if prep.sbatch_args is None else prep.sbatch_args,
            }
        )


class LaunchConfig(Section):
    """torchrun settings; on Slurm the node count is `nnodes` and the rendezvous comes from the job."""

    nproc_per_node: int = Field(1, ge=1, description="Training processes per node (GPUs per node on GPU machines).")
    nnodes: int = Field(1, ge=1, description="Training nodes (Slurm jobs; one torchrun agent per node).")
    max_restarts: int = Field(0, ge=0, description="torchrun restarts all ranks after a failure this many times.")
    shutdown_seconds: int = Field(
        300,
        ge=1,
        description="After Ctrl-C or a kill, how long torchrun lets the ranks "
        "finish their step and save before it kills them; raise it where a checkpoint "
        "takes longer to write.",
    )
    slurm: SlurmConfig = Field(default_factory=SlurmConfig)
