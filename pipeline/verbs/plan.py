"""`crucible plan`: memory per GPU, FLOPs and training time of a model and layout, before anything runs."""

from __future__ import annotations

import argparse

from pipeline.config import CrucibleConfig
from pipeline.verbs.arguments import common, local_path, same_settings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    common(parser)
    parser.add_argument(
        "--data",
        type=local_path,
        help="shards folder: with train.mixture, the epochs of each source the token budget implies",
    )


def run(args: argparse.Namespace, config: CrucibleConfig) -> None:
    from pipeline.sizing_view import print_plan

    print_plan(config, args.data, same_settings(args))
