"""`crucible run`: the whole job on this machine in one run folder: prep, training under torchrun, samples, the
toy world and the post-training demo, then the report page."""

from __future__ import annotations

import argparse
import signal
import subprocess
from typing import Any

from pipeline.config import CrucibleConfig
from pipeline.ground.layout import RunFolder, TrainFolder
from pipeline.verbs.arguments import common, inputs, local_path
from pipeline.verbs.checkpoints import tokenizer_of
from pipeline.verbs.prep import prep_into
from pipeline.ground.console import say


def add_arguments(parser: argparse.ArgumentParser) -> None:
    common(parser)
    inputs(parser)
    parser.add_argument("--output", type=local_path, required=True, help="run folder")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")


def preflight(config: CrucibleConfig, train: TrainFolder) -> None:
    """What `run` and `submit` can refuse before prep: the layout, a run folder of another model, the disk."""
    from training.config import check_layout
    from training.sizing import count_params, padded_vocab
    from training.preflight import check_disk, check_same_model

    check_layout(config.model, config.parallel, config.train, config.launch.nproc_per_node * config.launch.nnodes)
    check_same_model(train.root, config.model.model_dump(mode="json"), "auto")
    vocab = padded_vocab(
        config.model.vocab_size or config.prep.tokenizer.vocab_size, config.model.vocab_multiple, config.parallel.tp
    )
    if config.checkpoint.enabled:
        check_disk(train.root, count_params(config.model, vocab), config.checkpoint.keep_last)


def run(args: argparse.Namespace, config: CrucibleConfig) -> int:
    """prep, then training under torchrun on this machine, in one run folder."""
    from launch.torchrun import local_train_command
    from pipeline.ground.markers import read_jsonl
    from pipeline.ground.names import CHECKPOINT_META
    from pipeline.report import build_report, learning_line, unigram_entropy
    from pipeline.run_times import RUN_TIMES, PhaseTimes
    from pipeline.summary import print_post_demo, print_samples, print_task_results, task_results
    from pipeline.post_demo import RESULTS as POST_RESULTS
    from pipeline.post_demo import run_post_demo
    from pipeline.toy_world import final_checkpoint, toy_generations, train_toy_world
    from training.checkpoint import Checkpointer
    from training.generate import sample_texts

    folder = RunFolder(args.output)
    preflight(config, folder.train)
    data = folder.data
    checkpoints = Checkpointer(folder.train.root, config.checkpoint, rank=0)
    times = PhaseTimes(args.output / RUN_TIMES)
    with times.phase("prep") as worked:
        worked(prep_into(config, data.root, not args.no_progress, then="train") > 0)
    command = local_train_command(config.launch, args.config, args.overrides, data.local_shards, folder.train.root)
    say(f"training: {config.launch.nproc_per_node} process(es) under torchrun")
    before = checkpoints.latest()
    with times.phase("training") as worked:
        torchrun = subprocess.Popen(command)
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches torchrun too: it has the ranks save
        try:
            returncode = torchrun.wait()
        finally:
            signal.signal(signal.SIGINT, previous)
        latest = checkpoints.latest()
        worked(latest is not None and (before is None or latest.step != before.step))
    if returncode != 0:
        return returncode
    samples = sample_texts(latest.path, tokenizer_of(latest.path, None), config.samples) if latest else []
    toy: list[tuple[str, str]] = []
    if config.run.toy_world:
        with times.phase("toy world") as worked:
            worked(not (final_checkpoint(folder.toy_world) / CHECKPOINT_META).exists())
            toy = toy_generations(train_toy_world(folder.toy_world))
    post: dict[str, Any] = {}
    if config.run.post_training and latest:
        with times.phase("post-training") as worked:
            worked(not (folder.post / POST_RESULTS).exists())
            post = run_post_demo(folder.post, latest.path, tokenizer_of(latest.path, None))
    timings = times.seconds
    entropy = unigram_entropy(data.local_shards)
    report = build_report(args.output, samples, config, timings, toy, entropy, post)
    metrics = read_jsonl(folder.train.metrics)
    learning = learning_line(metrics, entropy)
    print_samples(samples, "samples from the final checkpoint" + (f": {learning}" if learning else ""))
    if toy:
        print_samples(toy, "the toy world (greedy, 10 words, d_model 4): each line should be a sentence of its corpus")
    results, eval_seconds = task_results(metrics)
    if results:
        print_task_results(results, "tasks at the last evaluation")
        say(
            f"task evaluation: {eval_seconds:.1f} s of the {timings['training']:.1f} s of training, "
            f"not counted in tokens/s"
        )
    if post:
        print_post_demo(post)
    phases = ", ".join(
        f"{name} {timings[name]:.0f} s"
        for name in ["prep", "training"] + ["toy world"] * bool(toy) + ["post-training"] * bool(post)
    )
    say(f"run finished: {phases}; report: {report} (and report.md)")
    if latest:
        say(
            f"next: crucible generate --checkpoint {latest.path} --prompt TEXT; crucible status --output "
            f"{args.output}; open {report}"
        )
    return 0
