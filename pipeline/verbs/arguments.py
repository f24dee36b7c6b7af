"""Flags and argparse types that several verbs share."""

from __future__ import annotations

import argparse
import shlex
from collections.abc import Callable
from pathlib import Path
from typing import Any

from data_prep import registry
from pipeline.ground import storage

CHECKPOINT_HELP = (
    "a checkpoint folder (RUN/checkpoints/step-N), or a run folder (of train, or of run: its train/) "
    "for its newest loadable checkpoint, or an s3:// URL of either (a run's checkpoint.remote)"
)


def common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--verbose", action="store_true", help="show third-party warnings and logs (every rank)")
    parser.add_argument("--config", type=local_path, help="YAML config (default: built-in defaults)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key, e.g. --set prep.workers=4 (repeatable)",
    )


def inputs(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--input",
        dest="inputs",
        action="append",
        type=storage.as_location,
        default=[],
        metavar="PATH",
        help="input file or folder, or its s3:// URL (repeatable; replaces prep.inputs)",
    )


def local_path(value: str) -> Path:
    """An argparse type for a file or folder this machine reads or writes in place: a URL is refused in one line."""
    if storage.is_remote(value):
        raise argparse.ArgumentTypeError(
            f"{value} is in object storage; this takes a local or shared path (object storage serves prep --input "
            f"and --output, train --data, --checkpoint and checkpoint.remote: see docs/cloud.md)"
        )
    return Path(value)


def stage_list(value: str) -> list[str]:
    stages = [s.strip() for s in value.split(",") if s.strip()]
    unknown = [s for s in stages if s not in registry.DEFAULT.names()]
    if unknown or not stages:
        what = f"unknown stage(s) {', '.join(unknown)}" if unknown else "no stage given"
        raise argparse.ArgumentTypeError(f"{what}; choose from {', '.join(registry.DEFAULT.names())}")
    return stages


def at_least(minimum: float, kind: type = int) -> Callable[[str], Any]:
    """An argparse type: a number of `kind` no smaller than `minimum`."""

    def parse(value: str) -> Any:
        try:
            number = kind(value)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected {'an integer' if kind is int else 'a number'}, got {value!r}"
            ) from None
        if number < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return number

    return parse


def probability(value: str) -> float:
    number = at_least(0.0, float)(value)
    if not 0 < number <= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {value}")
    return float(number)


def same_settings(args: argparse.Namespace) -> str:
    """The --config and --set flags of this command, for the next command to run with the same settings."""
    flags = (["--config", str(args.config)] if args.config else []) + [
        arg for assignment in args.overrides for arg in ("--set", assignment)
    ]
    return "".join(f" {shlex.quote(flag)}" for flag in flags)
