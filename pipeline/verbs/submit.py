"""`crucible submit`: the whole job on Slurm: prep array jobs, then the training job, chained."""

from __future__ import annotations

import argparse

from pipeline.config import CrucibleConfig
from pipeline.ground.layout import RunFolder
from pipeline.verbs.arguments import common, inputs, local_path
from pipeline.verbs.run import preflight


def add_arguments(parser: argparse.ArgumentParser) -> None:
    common(parser)
    inputs(parser)
    parser.add_argument(
        "--output",
        type=local_path,
        required=True,
        help="run folder on a filesystem the nodes share (data/, train/, slurm/)",
    )
    parser.add_argument("--dry-run", action="store_true", help="write the scripts and show the chain; submit nothing")
    parser.add_argument("--prep-only", action="store_true", help="submit data prep without the training job")


def run(args: argparse.Namespace, config: CrucibleConfig) -> None:
    from pipeline.executors.slurm import submit
    from pipeline.summary import print_jobs

    folder = RunFolder(args.output)
    preflight(config, folder.train)  # before a job is queued: on a cluster, training would fail after prep
    jobs = submit(config, args.output, dry_run=args.dry_run, prep_only=args.prep_only)
    print_jobs(jobs, folder.slurm, args.dry_run)
