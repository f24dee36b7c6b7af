"""`crucible train`: train the GPT on packed shards, one process per rank (launch under torchrun)."""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.config import CrucibleConfig
from pipeline.ground import storage
from pipeline.ground.layout import TrainFolder
from pipeline.verbs.arguments import common, local_path
from pipeline.ground.console import say, warn

if TYPE_CHECKING:
    from training.engine import Trainer


def add_arguments(parser: argparse.ArgumentParser) -> None:
    common(parser)
    parser.add_argument(
        "--data",
        type=storage.as_location,
        required=True,
        help="shards folder made by prep (with its manifest), or its s3:// URL",
    )
    parser.add_argument("--output", type=local_path, required=True, help="run folder: metrics, checkpoints")
    parser.add_argument(
        "--resume",
        default="auto",
        metavar="auto|none|PATH",
        help="auto: continue from the run's latest good checkpoint (default); none: start fresh; "
        "PATH: a checkpoint folder",
    )


def run(args: argparse.Namespace, config: CrucibleConfig) -> int:
    return train(config, args.data, args.output, args.resume)


def train(
    config: CrucibleConfig,
    data: storage.Location,
    output: Path,
    resume: str,
    initial_weights: Any = None,
    trainer_class: Any = None,
) -> int:
    from training.engine import Trainer

    rank0 = int(os.environ.get("RANK", 0)) == 0
    warning = config.train.warmup_warning()
    if warning and rank0:
        warn(warning)
    started = time.perf_counter()
    trainer = (trainer_class or Trainer)(
        config, data, output, int(os.environ.get("WORLD_SIZE", 1)), resume, initial_weights
    )
    records = trainer.fit()
    if rank0:
        print_training_end(trainer, records, output, time.perf_counter() - started)
    return train_status(trainer, rank0)


def print_training_end(trainer: Trainer, records: list[dict[str, Any]], output: Path, seconds: float) -> None:
    """How training ended (finished, interrupted, stopped by a signal, or nothing to do) and what comes next."""
    max_steps = trainer.config.train.max_steps
    latest = trainer.checkpointer.latest()
    last = records[-1] if records else {}
    loss = f", loss {last['loss']:.4f}" if "loss" in last else ""
    checkpoint = f"latest checkpoint: {latest.path if latest else 'none'}"
    if not records and trainer.stopped_by is None:  # a rerun of a finished run
        say(
            f"nothing to train: {output} is at step {trainer.step} of train.max_steps={max_steps} already (raise it "
            f"to train on); {checkpoint}"
        )
        return
    how = {None: "finished", "SIGINT": "interrupted"}.get(trainer.stopped_by, "stopped")
    say(
        f"training {how} in {seconds:.1f} s at step {trainer.step} of {max_steps}{loss}; metrics in "
        f"{TrainFolder(output).metrics}; {checkpoint}"
    )
    if latest and trainer.stopped_by is None:
        say(
            f"next: crucible generate --checkpoint {latest.path} --prompt TEXT; crucible export --checkpoint "
            f"{latest.path} --output DIR; crucible status --output {output}"
        )
    if "mlflow" in trainer.config.train.loggers:
        from training.trackers import mlflow_hint

        say(mlflow_hint(trainer.run_dir, trainer.config.train.tracking))


def train_status(trainer: Trainer, rank0: bool) -> int:
    """0 when the run finished, or a Slurm job's script is to requeue it; else 128 + the number of the signal that
    stopped it early, as a shell reports a process the signal ended. Under launch.agent the agent exits with it and
    every rank with 0: torchrun would take a rank's non-zero exit for a failure and stop the others mid-way."""
    import signal

    from launch.agent import record_stop

    if trainer.stopped_by is None or trainer.requeued:
        return 0
    status = 128 + signal.Signals[trainer.stopped_by]
    return 0 if not rank0 or record_stop(status) else status
