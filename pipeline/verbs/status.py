"""`crucible status`: where a run stands: prep steps and tasks, the training step, checkpoints, Slurm jobs."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pipeline.config import CrucibleConfig
from pipeline.verbs.arguments import local_path
from pipeline.ground.console import say


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--output", type=local_path, required=True, help="a run folder (from run, submit, prep or train)"
    )


def run(args: argparse.Namespace, config: CrucibleConfig | None) -> None:
    from launch.sbatch import RunPaths
    from pipeline.executors.ray import ray_status
    from pipeline.executors.slurm import status
    from pipeline.status import local_status
    from pipeline.summary import print_local_status, print_status

    if RunPaths(args.output.resolve(), Path.cwd(), sys.executable).config.exists():
        print_status(*status(args.output))
        return
    found = local_status(args.output)
    on_ray = ray_status(found.prep) if found.prep else None
    if on_ray:
        print_status(on_ray[0], None)
        say(on_ray[1])
        found.prep = None  # shown
    print_local_status(found)
