"""Command line: `crucible <verb> --config FILE [--set key=value ...]`.

Each verb (pipeline/verbs, one module each, listed once in its table) loads the one config schema,
applies `--set` overrides, does its work and ends with a summary and what to do next. A user's
mistake, in the command line, the config or the work, ends in one line and status 2.
"""

from __future__ import annotations

import argparse
import os
import sys

from pipeline.config import ConfigError, CrucibleConfig, load_config
from pipeline.ground import storage
from pipeline.ground.errors import UserError
from pipeline.verbs import BY_NAME, VERBS, Verb
from pipeline.ground.console import say

INTERRUPTED = 130  # the shell's status after Ctrl-C (128 + SIGINT)


class UsageError(UserError):
    """A command line argparse refuses, raised instead of argparse's exit so that a rank under torchrun can
    hand it to the agent like any other user mistake."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{self.prog}: {message} (see {self.prog} --help)")


def _version() -> str:
    """This install's version: pyproject's project.version, as the package metadata holds it."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("crucible")
    except PackageNotFoundError:
        return "unknown (not installed: pip install -e .)"


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="crucible", description="Raw text to a trained language model.")
    parser.add_argument("--version", action="version", version=f"crucible {_version()}")
    verbs = parser.add_subparsers(dest="verb", required=True)
    for verb in VERBS:
        verb.add_arguments(verbs.add_parser(verb.name, help=verb.help, epilog=verb.epilog))
    return parser


def _load(args: argparse.Namespace) -> CrucibleConfig:
    """The config with the flags that replace its keys (--input, --stages, --executor) applied as overrides,
    so the schema checks them like any --set."""
    replaced = [
        (key, [str(value) for value in getattr(args, flag)])
        for key, flag in (("prep.inputs", "inputs"), ("prep.stages", "stages"))
        if getattr(args, flag, None)
    ]
    executor = [("prep.executor", args.executor)] if getattr(args, "executor", None) else []
    return load_config(args.config, args.overrides, dict(replaced + executor))


def _user_error(verb: str, message: str) -> int:
    """Print a user's mistake as one line; a training rank under `launch.agent` leaves it to the agent,
    which prints it once for all ranks."""
    from launch.agent import record_user_error

    ranked = verb in BY_NAME and BY_NAME[verb].ranked
    if not (ranked and record_user_error(message)):
        say(message, to_stderr=True)
    return 2


def _check_outputs(verb: Verb, args: argparse.Namespace, config: CrucibleConfig) -> None:
    """A file or an unwritable place where a verb will write, or prep's outputs where it reads its inputs,
    is one line before any work."""
    from pipeline.ground.folders import check_output_file, make_output_folder

    output = getattr(args, "output", None)
    if verb.prep_output and output is not None:  # all of a run folder is output, not only data/
        from pipeline.prep import check_output_apart

        check_output_apart(config.prep, output)
        if getattr(args, "work", None):
            check_output_apart(config.prep, args.work, "--work")
            make_output_folder(args.work, "--work")
    if storage.is_remote(output):
        from pipeline.prep import work_folder

        work_folder(output, args.work)  # the missing --work, before any work
    elif output is not None and verb.output == "folder":
        make_output_folder(output)
    elif output is not None and verb.output == "file":
        check_output_file(output)


def _leave_process_groups() -> None:
    """Tear down the process groups a verb joined (training's, or the world of one that generate, eval and
    run's samples need) while the interpreter is whole: left to its exit, gloo's threads can abort it."""
    distributed = sys.modules.get("torch.distributed")
    if distributed is not None and distributed.is_available() and distributed.is_initialized():
        from training.parallel import shutdown_distributed

        shutdown_distributed()


def main(argv: list[str] | None = None) -> int:
    from pipeline.ground.quiet import VERBOSE_ENV, quiet_third_party

    try:
        args = build_parser().parse_args(argv)
    except UsageError as exc:
        return _user_error(str(exc).split(":")[0].removeprefix("crucible "), str(exc))
    verb = BY_NAME[args.verb]
    if getattr(args, "verbose", False):
        os.environ[VERBOSE_ENV] = "1"  # torchrun's ranks inherit it
    quiet_third_party()
    try:
        config = _load(args) if verb.takes_config else CrucibleConfig()
    except ConfigError as exc:
        return _user_error(verb.name, f"crucible: {exc}")
    if verb.takes_config:
        storage.configure(config.storage)
    try:
        _check_outputs(verb, args, config)
        return verb.run(args, config) or 0
    except UserError as exc:
        return _user_error(verb.name, f"crucible {verb.name}: {exc}")
    except KeyboardInterrupt:  # Ctrl-C outside training's own handling (which saves first), or a second one
        if int(os.environ.get("RANK", 0)) == 0:
            resumes = "; the same command goes on from what was finished" if verb.resumable else ""
            say(f"crucible {verb.name}: interrupted{resumes}", to_stderr=True)
        return INTERRUPTED
    finally:
        _leave_process_groups()
