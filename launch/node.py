"""One node's share of a training job: find the rendezvous, run torchrun, pass signals to the ranks.

Run once per node (`srun --ntasks-per-node=1 python -m launch.node ...` in the training job).
Every node derives the same rendezvous from the job: the head is the first host of
`scontrol show hostnames $SLURM_JOB_NODELIST`, the port and rendezvous id come from the job id,
so no node needs to tell another anything. Slurm's warning before the time limit (SIGUSR1) must
reach the training ranks but not torchrun, which would die of it: torchrun runs with the signal
ignored and this agent passes it on to the ranks (where the cluster signals only the step's
first process). Each rank checkpoints and stops cleanly; then the job script requeues the job.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import FrameType

import psutil

from launch.config import LaunchConfig
from launch.torchrun import torchrun_command
from pipeline.ground.errors import UserError
from pipeline.ground.console import say

PORT_BASE, PORT_SPAN = 20000, 30000


@dataclass(frozen=True)
class Rendezvous:
    head: str
    port: int
    run_id: str
    nnodes: int


def slurm_hostnames(nodelist: str) -> list[str]:
    result = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True, check=True)
    return result.stdout.split()


def is_loopback(host: str, resolve: Callable[[str], str] = socket.gethostbyname) -> bool:
    try:
        return ipaddress.ip_address(resolve(host)).is_loopback
    except (OSError, ValueError):
        return False


def slurm_rendezvous(
    env: Mapping[str, str],
    hostnames: Callable[[str], list[str]] = slurm_hostnames,
    resolve: Callable[[str], str] = socket.gethostbyname,
) -> Rendezvous:
    """The rendezvous every node of this Slurm job computes alike."""
    job = env.get("SLURM_JOB_ID")
    if not job:
        raise UserError("not inside a Slurm job (SLURM_JOB_ID is unset); use torchrun directly, or `crucible run`")
    nnodes = int(env.get("SLURM_JOB_NUM_NODES") or env.get("SLURM_NNODES") or 1)
    head = hostnames(env["SLURM_JOB_NODELIST"])[0]
    if nnodes > 1 and is_loopback(head, resolve):
        raise UserError(
            f"the head node {head} resolves to a loopback address ({resolve(head)}) on {socket.gethostname()}: the "
            f"other {nnodes - 1} node(s) could not reach the rendezvous. Make {head} resolve to its cluster "
            f"address (/etc/hosts or DNS) on every node"
        )
    return Rendezvous(head, PORT_BASE + int(job) % PORT_SPAN, f"crucible-{job}", nnodes)


def forward_to_ranks(agent: subprocess.Popen, signum: int) -> None:
    """Send `signum` to every process torchrun started (the ranks), not to torchrun itself."""
    try:
        ranks = psutil.Process(agent.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return
    for rank in ranks:
        try:
            rank.send_signal(signum)
        except psutil.NoSuchProcess:
            pass


def run_node(
    rdzv: Rendezvous, nproc_per_node: int, max_restarts: int, shutdown_seconds: int, train_args: list[str]
) -> int:
    # Slurm signals every process of the job step; torchrun must outlive SIGUSR1, so it starts with
    # the signal ignored (inherited across exec). The ranks install their own handler for it.
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    agent = subprocess.Popen(
        torchrun_command(
            f"{rdzv.head}:{rdzv.port}",
            rdzv.nnodes,
            nproc_per_node,
            max_restarts,
            shutdown_seconds,
            rdzv.run_id,
            train_args,
        )
    )

    def to_ranks(signum: int, frame: FrameType | None) -> None:
        forward_to_ranks(agent, signum)

    def to_agent(signum: int, frame: FrameType | None) -> None:
        agent.send_signal(signum)

    signal.signal(signal.SIGUSR1, to_ranks)
    signal.signal(signal.SIGTERM, to_agent)
    return agent.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m launch.node", description=__doc__.splitlines()[0])
    parser.add_argument("--nproc-per-node", type=int, required=True)
    parser.add_argument("--max-restarts", type=int, default=0)
    parser.add_argument("--shutdown-seconds", type=int, default=LaunchConfig().shutdown_seconds)
    parser.add_argument("train_args", nargs=argparse.REMAINDER, help="arguments of `crucible train`, after --")
    args = parser.parse_args(argv)
    train_args = args.train_args[1:] if args.train_args[:1] == ["--"] else args.train_args
    try:
        rdzv = slurm_rendezvous(os.environ)
    except UserError as exc:
        say(f"crucible: {exc}", to_stderr=True)
        return 2
    say(f"node {socket.gethostname()}: {rdzv.nnodes} node(s), rendezvous {rdzv.head}:{rdzv.port} ({rdzv.run_id})")
    return run_node(rdzv, args.nproc_per_node, args.max_restarts, args.shutdown_seconds, train_args)


if __name__ == "__main__":
    sys.exit(main())
