"""`crucible prep`: clean, deduplicate, label and filter documents, then tokenize and pack them."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from data_prep import registry
from pipeline.config import CrucibleConfig
from pipeline.ground import storage
from pipeline.ground.layout import PrepFolder
from pipeline.verbs.arguments import common, inputs, local_path, same_settings, stage_list
from pipeline.ground.console import say


def add_arguments(parser: argparse.ArgumentParser) -> None:
    common(parser)
    inputs(parser)
    parser.add_argument(
        "--output",
        type=storage.as_location,
        required=True,
        help="output folder, or an s3:// prefix to publish to (then --work is needed)",
    )
    parser.add_argument(
        "--work",
        type=local_path,
        help="folder for step files, markers and the lock (default OUTPUT/work; local or shared disk)",
    )
    parser.add_argument(
        "--stages", type=stage_list, help=f"comma-separated subset of {','.join(registry.DEFAULT.names())}"
    )
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    parser.add_argument("--executor", choices=["local", "ray"], help="where the tasks run (replaces prep.executor)")


def run(args: argparse.Namespace, config: CrucibleConfig) -> None:
    prep_into(config, args.output, not args.no_progress, settings=same_settings(args), work=args.work)


def prep_into(
    config: CrucibleConfig,
    output: storage.Location,
    show_progress: bool,
    then: str | None = None,
    settings: str = "",
    work: Path | None = None,
) -> int:
    """Run (or finish) prep into `output`; returns the number of tasks it ran."""
    from pipeline.prep import pending_task_count, run_prep
    from pipeline.prep_yield import check_yield
    from pipeline.summary import print_prep_summary

    started, todo = time.perf_counter(), pending_task_count(config.prep, output, work)
    stats = run_prep(config.prep, output, show_progress, work)
    print_prep_summary(stats)
    published = PrepFolder(output)
    folders = [f"{name}/" for name in (published.CLEAN, published.DROPPED, published.QUARANTINE)] + [
        published.STATS_FILE
    ]
    folders += ["tokenizer/"] * (stats.tokens is not None)
    folders += [f"{published.SHARDS}/"] * storage.exists(published.at(published.MANIFEST_FILE))
    redone = "nothing redone: every task was done already" if todo == 0 else f"{todo:,} task(s) run"
    say(f"prep finished in {time.perf_counter() - started:.1f} s ({redone}); outputs in {output}: {', '.join(folders)}")
    check_yield(config.prep, output, stats)
    if then is None and "shards/" in folders:
        say(
            f"next: crucible train{settings} --data {storage.join(output, 'shards')} --output RUN (several processes: "
            f"python -m launch.agent --nproc_per_node N -m pipeline train ...)"
        )
    return todo
