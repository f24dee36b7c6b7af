"""A single-rank trainer in the test's own process: how the fast tests train, with no torchrun.

It builds the real `Trainer` (DeepSpeed engine, megatron-core layers, checkpoints) on an in-memory
process group of one, runs `fit`, then tears the groups down (and any an earlier test left) and restores the environment variables
the trainer sets, so the next test in the same process starts clean.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pipeline.config import load_config

SMALL = [  # the settings of the training tests: 8 rows a step in micro-batches of 2, a known peak for MFU
    "train.global_batch_size=8",
    "train.micro_batch_size=2",
    "train.eval_interval=1000",
    "train.warmup_steps=3",
    "train.peak_tflops=1",
    "train.loggers=[]",
]


HANDED_BACK = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)  # what training handles while it runs


@contextlib.contextmanager
def leaves_no_trace() -> Iterator[None]:
    """Run a verb or trainer in this process: the process groups an earlier test left (generate's and eval's
    single process) are torn down first, and its own and the environment variables it set afterwards.
    A verb that ends with its signal handlers still installed fails the test: in a user's process they
    would swallow SIGTERM (and did hang a later test's forked workers, which inherited them)."""
    from training.parallel import shutdown_distributed

    saved = dict(os.environ)
    handlers = {sig: signal.getsignal(sig) for sig in HANDED_BACK}
    shutdown_distributed()
    try:
        yield
    finally:
        shutdown_distributed()
        os.environ.clear()
        os.environ.update(saved)
        left = [sig.name for sig, handler in handlers.items() if signal.getsignal(sig) != handler]
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    assert not left, f"the verb left its handlers of {', '.join(left)} installed"


def train_in_process(shards: Path, run: Path, steps: int, *settings: str) -> list[dict[str, Any]]:
    """Train (or resume) the run folder `run` to step `steps` on one rank; the metric records of this call."""
    from training.engine import Trainer

    config = load_config(None, [*SMALL, f"train.max_steps={steps}", f"train.decay_steps={steps}", *settings])
    with leaves_no_trace():
        return Trainer(config, shards, run, world_size=1).fit()
