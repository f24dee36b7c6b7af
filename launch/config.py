"""How training processes are started: on this machine, or across nodes."""

from __future__ import annotations

from pydantic import Field

from pipeline.schema import Section


class LaunchConfig(Section):
    """torchrun settings; on Slurm the node count and rendezvous come from the job."""

    nproc_per_node: int = Field(1, ge=1, description="Training processes per node (GPUs per node on GPU machines).")
    nnodes: int = Field(1, ge=1)
    max_restarts: int = Field(0, ge=0, description="torchrun restarts all ranks after a failure this many times.")
    rdzv_port: int = Field(29500, ge=1024, le=65535)
