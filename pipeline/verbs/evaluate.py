"""`crucible eval`: score task files on a checkpoint, its held-out loss, and agreement with lm-evaluation-harness."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from pipeline.config import CrucibleConfig
from pipeline.ground import storage
from pipeline.ground.errors import UserError
from pipeline.verbs.arguments import CHECKPOINT_HELP, at_least, common, local_path
from pipeline.verbs.checkpoints import checkpoint_in, tokenizer_of
from pipeline.ground.console import say, warn


def add_arguments(parser: argparse.ArgumentParser) -> None:
    common(parser)
    parser.add_argument("--checkpoint", type=storage.as_location, required=True, help=CHECKPOINT_HELP)
    parser.add_argument(
        "--tasks", nargs="+", type=local_path, metavar="FILE", help="task files, JSONL or Parquet (default: eval.tasks)"
    )
    parser.add_argument("--output", type=local_path, help="write the results as JSON here")
    parser.add_argument("--tokenizer", type=local_path, help="tokenizer.json (default: the one of the run's shards)")
    parser.add_argument(
        "--heldout",
        action="store_true",
        help="loss and perplexity on the validation split of the run's shards, per source and "
        "per source/language where they are tagged",
    )
    parser.add_argument(
        "--data",
        type=storage.as_location,
        help="with --heldout: the shards folder, or its s3:// URL (default: the checkpoint's)",
    )
    parser.add_argument(
        "--heldout-rows",
        type=at_least(1),
        metavar="N",
        help="with --heldout: score a seeded sample of N rows of each group (default: every row)",
    )
    parser.add_argument(
        "--harness", action="store_true", help="also run lm-evaluation-harness on the Hugging Face export and compare"
    )
    parser.add_argument(
        "--hf",
        type=local_path,
        help="with --harness: an existing export of this checkpoint (default: export to a temporary folder)",
    )


HARNESS_AGREEMENT = 1e-3  # log-likelihood; fp32 exports of the same weights agree to ~1e-5


def run(args: argparse.Namespace, config: CrucibleConfig) -> None:
    import tempfile

    import torch

    from pipeline.ground.atomic import write_json
    from pipeline.summary import print_heldout, print_task_results
    from training.evaluate import evaluate_checkpoint, heldout_loss
    from training.checkpoint_meta import read_meta
    from training.export import save_hf
    from training.tasks import load_tasks

    for flag, needs in (("data", "heldout"), ("heldout_rows", "heldout"), ("hf", "harness")):
        if getattr(args, flag) is not None and not getattr(args, needs):
            raise UserError(f"--{flag.replace('_', '-')} applies with --{needs}: add --{needs}, or drop it")
    folders = [path for path in args.tasks or [] if path.is_dir()]
    if folders:
        raise UserError(f"--tasks {folders[0]} is a folder: give its task files, e.g. {folders[0]}/*.jsonl")
    if args.hf is not None and not (args.hf / "config.json").is_file():
        raise UserError(
            f"--hf {args.hf} is not a Hugging Face export (no config.json): make one with crucible "
            f"export --checkpoint {args.checkpoint} --output {args.hf}, or drop --hf"
        )
    args.checkpoint = checkpoint_in(args.checkpoint, config)
    tasks = load_tasks(args.tasks or config.eval.tasks, config.eval.max_items)
    if not tasks and (args.harness or not args.heldout):
        raise UserError(
            "no task files: pass --tasks FILE [FILE ...] or set eval.tasks"
            + ("" if args.harness else ", or ask for --heldout")
        )
    meta = read_meta(args.checkpoint)
    report: dict[str, Any] = {"checkpoint": str(args.checkpoint), "step": meta.step}
    if args.heldout:
        data = args.data or storage.as_location(meta.data_dir)
        report["heldout"] = heldout_loss(args.checkpoint, data, config.train.shard_cache, args.heldout_rows)
        print_heldout(report["heldout"], f"held-out loss at step {report['step']} ({storage.join(data, 'val')})")
    if tasks:
        tokenizer = tokenizer_of(args.checkpoint, args.tokenizer)
        ours = evaluate_checkpoint(args.checkpoint, tasks, tokenizer)
        report["tasks"] = {name: {k: v for k, v in r.items() if k != "requests"} for name, r in ours.items()}
        print_task_results(report["tasks"], f"tasks at step {report['step']} ({args.checkpoint})")
    if args.harness:
        from training.harness import run_harness

        with tempfile.TemporaryDirectory() as tmp:
            hf = args.hf or save_hf(args.checkpoint, Path(tmp) / "hf", tokenizer, torch.float32, config.samples)
            theirs = run_harness(hf, tasks, config.eval.max_items)
        report["harness"] = {
            name: {k: v for k, v in r.items() if k != "requests"}
            | {"max_abs_ll_difference": max(abs(a[0] - b[0]) for a, b in zip(ours[name]["requests"], r["requests"]))}
            for name, r in theirs.items()
        }
        print_task_results(report["harness"], "lm-evaluation-harness on the Hugging Face export")
        apart = max(r["max_abs_ll_difference"] for r in report["harness"].values())
        if apart > HARNESS_AGREEMENT:
            warn(
                f"the harness and Crucible differ by up to {apart:.3g} in log-likelihood (an fp32 export "
                f"of the same weights agrees within {HARNESS_AGREEMENT:g}): is --hf an fp32 export of "
                f"{args.checkpoint}?"
            )
    if args.output:
        write_json(args.output, report)
        say(f"results: {args.output}")
    else:
        say("next: add --output results.json to keep these figures")
