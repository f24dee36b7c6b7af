"""`crucible classifier`: train or evaluate a fastText quality classifier (settings: prep.quality_model.train)."""

from __future__ import annotations

import argparse

from pipeline.config import CrucibleConfig
from pipeline.ground.errors import UserError
from pipeline.verbs.arguments import common, local_path
from pipeline.ground.console import say


def add_arguments(parser: argparse.ArgumentParser) -> None:
    common(parser)
    parser.add_argument("action", choices=["train", "eval"])
    parser.add_argument("--positive", type=local_path, help="train: JSONL of documents to keep")
    parser.add_argument("--negative", type=local_path, help="train: JSONL of documents to drop")
    parser.add_argument("--output", type=local_path, help="train: folder for model.bin, report.json, heldout.jsonl")
    parser.add_argument("--model", type=local_path, help="eval: a model.bin, or the folder `classifier train` wrote")
    parser.add_argument("--data", type=local_path, help="eval: JSONL with `text` and `label` (true/false)")


def run(args: argparse.Namespace, config: CrucibleConfig) -> None:
    from data_prep.classifier import MODEL_FILE, REPORT_FILE, evaluate, train
    from pipeline.summary import print_classifier

    settings = config.prep.quality_model.train
    needed = ("positive", "negative", "output") if args.action == "train" else ("model", "data")
    missing = [f"--{name}" for name in needed if getattr(args, name) is None]
    if missing:
        raise UserError(f"classifier {args.action} needs {' '.join(missing)}")
    if args.action == "train":
        report = train(
            args.positive, args.negative, args.output, settings, config.prep.read.text_field, config.prep.normalize.form
        )
        model = args.output / MODEL_FILE
        print_classifier(report["heldout"], f"held-out documents ({report['train_documents']:,} trained on)")
        say(f"model: {model}; these figures and the settings: {args.output / REPORT_FILE}")
    else:
        model = args.model / MODEL_FILE if args.model.is_dir() else args.model  # the folder `train` wrote
        print_classifier(evaluate(model, args.data, settings.label, settings.histogram_bins), f"{args.data}")
    check = f"crucible classifier eval --model {model} --data LABELLED.jsonl; " if args.action == "train" else ""
    say(
        f"next: {check}filter prep with it: add quality_model to prep.stages and set prep.quality_model.classifiers: "
        f"[{{name: {settings.label}, model_path: {model}, label: {settings.label}, threshold: 0.5}}]"
    )
