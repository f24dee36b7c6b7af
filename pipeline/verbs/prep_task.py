"""`crucible prep-task`: one piece of a scheduled prep run, what the Slurm jobs call."""

from __future__ import annotations

import argparse

from pipeline.config import CrucibleConfig
from pipeline.ground.errors import UserError
from pipeline.verbs.arguments import common, local_path
from pipeline.ground.console import say


def add_arguments(parser: argparse.ArgumentParser) -> None:
    common(parser)
    parser.add_argument("--output", type=local_path, required=True, help="prep output folder")
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--step", help="run one task of this step (with --task)")
    action.add_argument("--prepare", action="store_true", help="clear step folders made with another config")
    action.add_argument("--publish", action="store_true", help="publish clean/, shards/, stats.json")
    parser.add_argument("--task", type=int, help="task index within the step")


def run(args: argparse.Namespace, config: CrucibleConfig) -> None:
    from pipeline.prep import prepare_steps, publish_prep, run_prep_task
    from pipeline.prep_yield import check_yield
    from pipeline.summary import print_prep_summary

    if args.prepare:
        pending = prepare_steps(config.prep, args.output)
        say(f"prepared {len(pending)} steps; tasks to run: {sum(map(len, pending.values())):,}")
    elif args.publish:
        stats = publish_prep(config.prep, args.output)
        print_prep_summary(stats)
        check_yield(config.prep, args.output, stats)  # a failed publish job holds back the training job
    elif args.task is None:
        raise UserError("--step needs --task INDEX")
    else:
        say(run_prep_task(config.prep, args.output, args.step, args.task))
