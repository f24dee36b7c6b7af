"""How training processes are started: on this machine, across nodes, and as Slurm jobs."""

from __future__ import annotations

from typing import Any

from pydantic import Field, field_validator

from pipeline.ground.schema import Section

SLURM_TIME = r"^(\d+-)?\d+(:\d{2}){0,2}$"  # minutes, MM:SS, HH:MM:SS, D-HH[:MM[:SS]]
LINE_BREAKS = "\n\r\v\f\x00\x1c\x1d\x1e\x85\u2028\u2029"  # what str.splitlines splits on, and NUL


class SlurmConfig(Section):
    """sbatch settings of `crucible submit`; every job also gets `setup` before its command."""

    partition: str | None = Field(None, description="Partition of every job (default: the cluster's).")
    account: str | None = Field(None, description="Account charged for every job.")
    gpus_per_node: int = Field(0, ge=0, description="GPUs of each training node (0: a CPU cluster).")
    train_cpus_per_node: int | None = Field(None, ge=1, description="CPUs of each training node's torchrun "
                                                                   "(default: the partition's default).")
    train_time: str = Field("24:00:00", pattern=SLURM_TIME, description="Time limit of the training job; it "
                                                                       "checkpoints and requeues before it.")
    signal_seconds: int = Field(120, ge=10, description="Seconds before the time limit that Slurm sends SIGUSR1.")
    prep_cpus_per_task: int = Field(1, ge=1, description="CPUs of each data-prep array task.")
    prep_time: str = Field("04:00:00", pattern=SLURM_TIME, description="Time limit of each data-prep task.")
    prep_max_parallel: int = Field(16, ge=1, description="Array tasks of one step running at once (the %M).")
    max_array_size: int | None = Field(None, ge=2, description="Split arrays above this many tasks (default: "
                                                               "the cluster's MaxArraySize).")
    python: str | None = Field(None, description="Python with Crucible installed, on the nodes (default: "
                                                 "the one running `submit`).")
    setup: list[str] = Field(default_factory=list, description="Shell lines run first in every job "
                                                               "(module load ..., source venv/bin/activate).")
    sbatch_args: list[str] = Field(default_factory=list, description="Extra sbatch options for every job, "
                                                                     "e.g. --qos=high.")

    @field_validator("sbatch_args", "partition", "account")
    @classmethod
    def _one_line(cls, value: Any) -> Any:
        """A line break would end the #SBATCH block early: options after it are silently ignored."""
        for entry in value if isinstance(value, list) else [value]:
            if entry is not None and any(ch in LINE_BREAKS for ch in entry):
                raise ValueError(f"{entry!r} holds a line break; give each sbatch option as its own entry")
        return value

    @field_validator("train_time", "prep_time", mode="before")
    @classmethod
    def _quoted_time(cls, value: Any) -> Any:
        if isinstance(value, int):  # YAML reads an unquoted 48:00:00 as the number 172800
            raise ValueError(f"write Slurm times as quoted strings, e.g. '48:00:00' (an unquoted H:MM:SS is read "
                             f"by YAML as the number {value})")
        return value


class LaunchConfig(Section):
    """torchrun settings; on Slurm the node count is `nnodes` and the rendezvous comes from the job."""

    nproc_per_node: int = Field(1, ge=1, description="Training processes per node (GPUs per node on GPU machines).")
    nnodes: int = Field(1, ge=1, description="Training nodes (Slurm jobs; one torchrun agent per node).")
    max_restarts: int = Field(0, ge=0, description="torchrun restarts all ranks after a failure this many times.")
    shutdown_seconds: int = Field(300, ge=1, description="After Ctrl-C or a kill, how long torchrun lets the ranks "
                                  "finish their step and save before it kills them; raise it where a checkpoint "
                                  "takes longer to write.")
    slurm: SlurmConfig = Field(default_factory=SlurmConfig)
