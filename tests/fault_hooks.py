"""Faults injected through the public hook interface, for the recovery tests."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import torch

from training.data import Batch
from training.hooks import Hook


class PoisonWeights(Hook):
    """Once, after step `step`, turn every weight to NaN: the next loss is NaN (a hardware fault)."""

    def __init__(self, step: int) -> None:
        self.step, self.done = step, False

    def on_step_end(self, trainer: Any, record: dict[str, Any]) -> None:
        if record["step"] == self.step and not self.done:
            self.done = True
            with torch.no_grad():
                for param in trainer.engine.module.parameters():
                    param.fill_(float("nan"))


class JunkRows(Hook):
    """Replace the rows of global step `step` (first epoch) with junk: random inputs whose targets
    are drawn from the rarest quarter of the vocabulary, as garbled data looks to a model."""

    def __init__(self, step: int, seed: int = 0) -> None:
        self.step, self.seed = step, seed

    def on_batch(self, trainer: Any, batch: Batch) -> Batch:
        loader = trainer.loader
        start = (self.step - 1) * loader.rows_per_step
        consumed = loader.position - loader.micro_batch * loader.dp_world  # where this batch began
        if loader.epoch == 0 and start <= consumed < start + loader.rows_per_step:
            generator = torch.Generator().manual_seed(self.seed + consumed)
            vocab = trainer.train_data.manifest.tokenizer.vocab_size
            inputs = torch.randint(0, vocab, batch.inputs.shape, generator=generator)
            targets = torch.randint(vocab * 3 // 4, vocab, batch.targets.shape, generator=generator)
            return Batch(inputs, targets, batch.positions, batch.segments, batch.rows)
        return batch


class KillRankAt(Hook):
    """SIGKILL this process at step `step` if it is global rank `rank` and a marker file is absent
    (the marker makes the fault happen once, not again after torchrun restarts the job)."""

    def __init__(self, step: int, rank: int, marker: str) -> None:
        self.step, self.rank, self.marker = step, rank, marker

    def on_step_end(self, trainer: Any, record: dict[str, Any]) -> None:
        if record["step"] == self.step and trainer.layout.rank == self.rank and not os.path.exists(self.marker):
            open(self.marker, "w").close()
            os.kill(os.getpid(), signal.SIGKILL)


class SignalAt(Hook):
    """Send `signal` (e.g. SIGUSR1) to this process at step `step`, as Slurm does before a time limit."""

    def __init__(self, step: int, name: str = "SIGUSR1") -> None:
        self.step, self.signum = step, signal.Signals[name]

    def on_step_end(self, trainer: Any, record: dict[str, Any]) -> None:
        if record["step"] == self.step and trainer.layout.rank == 0:
            os.kill(os.getpid(), self.signum)


class SlowSave(Hook):
    """Each save takes `seconds` longer, as on a slow file system or for a large model."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def on_save(self, trainer: Any, path: Any) -> None:
        time.sleep(self.seconds)


class PauseAt(Hook):
    """At step `step`, rank 0 creates `reached` and waits (up to 10 minutes) for `go` to exist: a run
    held mid-training while a test does something beside it."""

    def __init__(self, step: int, reached: str, go: str) -> None:
        self.step, self.reached, self.go = step, reached, go

    def on_step_end(self, trainer: Any, record: dict[str, Any]) -> None:
        if record["step"] == self.step and trainer.layout.rank == 0:
            open(self.reached, "w").close()
            deadline = time.monotonic() + 600
            while not os.path.exists(self.go) and time.monotonic() < deadline:
                time.sleep(0.2)


class DamageSave(Hook):
    """After the save of step `step`, flip a byte in one of its weight files: a checkpoint damaged on disk."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_save(self, trainer: Any, path: Any) -> None:
        if trainer.step == self.step and trainer.layout.rank == 0:
            victim = sorted(p for p in Path(path).rglob("*.pt") if p.is_file())[0]
            data = bytearray(victim.read_bytes())
            data[len(data) // 2] ^= 0xFF
            victim.write_bytes(bytes(data))
