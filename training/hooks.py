"""Hooks: the small interface the training loop calls, and the built-in ones.

The loop calls `on_batch` before a training micro-batch is used (validation batches never reach
it: a hook that edits rows must not change what validation measures), `on_step_end` after each
optimizer step, `on_eval` after validation, `on_save` after a checkpoint is published,
`on_anomaly` when an anomaly is about to be rolled back (or ignored, with no checkpoint yet) and
`on_rollback` once the run is back at a checkpoint. A hook steers the run only by what `on_step_end` returns: None
to go on, `Rollback` or `Stop`; the trainer decides how. Automatic rollback and
checkpoint-on-signal are hooks like any a user adds from config, in the same list
(`hooks: [{target: "package.module:Class", args: {...}}]`).
"""

from __future__ import annotations

import importlib
import math
import signal
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import torch
import torch.distributed as dist

from pipeline.ground.errors import UserError
from pipeline.ground.markers import append_jsonl
from pipeline.ground.layout import TrainFolder
from training.config import HookSpec, RollbackConfig, TrainingConfig
from pipeline.ground.console import say

if TYPE_CHECKING:
    from training.data import Batch, DistributedLoader, MixingLoader, PackedDataset
    from training.parallel import Layout


RECENT = 5  # values averaged for the current level of loss or grad norm


@dataclass(frozen=True)
class Anomaly:
    step: int
    reason: str  # "nonfinite_loss", "nonfinite_grad_norm", "loss_spike", "grad_norm_spike"
    value: float
    threshold: float | None


@dataclass(frozen=True)
class Rollback:
    """Go back to the last healthy checkpoint because of `anomaly`."""

    anomaly: Anomaly


@dataclass(frozen=True)
class Stop:
    """Save and stop after this step (`reason`: the signal's name), for a requeue to resume."""

    reason: str


Action = Rollback | Stop | None  # None: go on


class TrainerView(Protocol):
    """What a hook may read of the trainer (and, as the fault-injection tests do, poke at)."""

    config: TrainingConfig
    layout: Layout
    engine: Any  # the DeepSpeed engine
    loader: DistributedLoader | MixingLoader
    train_data: PackedDataset
    step: int


class Hook:
    """Override what you need; every method has a do-nothing default."""

    def on_batch(self, trainer: TrainerView, batch: Batch) -> Batch:
        """Each training micro-batch, before use; what it returns is trained on. Validation batches
        are not passed here."""
        return batch

    def on_step_end(self, trainer: TrainerView, record: dict[str, Any]) -> Action:
        return None

    def on_eval(self, trainer: TrainerView, val_loss: float) -> None:
        pass

    def on_save(self, trainer: TrainerView, path: Path) -> None:
        pass

    def on_anomaly(self, trainer: TrainerView, anomaly: Anomaly) -> None:
        pass

    def on_rollback(self, trainer: TrainerView, restored_step: int) -> None:
        pass

    def on_fit_end(self, trainer: TrainerView) -> None:
        """Training ended: finished, stopped or failed."""


class EventLog:
    """`<run>/events.jsonl`: rollbacks, saves, resumes, signals; written by rank 0 and passed on to
    `also` (the experiment trackers)."""

    def __init__(self, run_dir: Path, enabled: bool, also: Callable[[dict[str, Any]], None] | None = None) -> None:
        self.path, self.enabled, self.also = TrainFolder(Path(run_dir)).events, enabled, also

    def log(self, event: dict[str, Any]) -> None:
        """Append `event` with its time, and say it on the console: saves, resumes, rollbacks, stops."""
        if self.enabled:
            event = event | {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
            self.path.parent.mkdir(parents=True, exist_ok=True)
            append_jsonl(self.path, event)
            detail = ", ".join(f"{k} {v}" for k, v in event.items() if k not in ("event", "step", "time"))
            say(f"step {event.get('step', '?')}: {event['event']}" + (f" ({detail})" if detail else ""))
            if self.also is not None:
                self.also(event)


class AnomalyDetector(Hook):
    """Flags non-finite loss or grad norm, and spikes: a value more than z noise-widths above the
    recent level, the noise measured over a moving window.

    Loss and grad norm are global values (the same on every rank), so every rank reaches the
    same verdict without communicating. Anomalous steps never enter the window.
    """

    def __init__(self, config: RollbackConfig) -> None:
        self.config = config
        self.losses: deque[float] = deque(maxlen=config.window)
        self.norms: deque[float] = deque(maxlen=config.window)

    def _spike(self, history: deque[float], value: float, zscore: float, min_jump: float) -> float | None:
        """Threshold crossed by `value`, or None. The level is the mean of the last few values and the
        noise the spread of step-to-step changes, so a steadily falling loss does not hide a jump."""
        if len(history) < self.config.min_history:
            return None
        values = list(history)
        level = sum(values[-RECENT:]) / len(values[-RECENT:])
        changes = [b - a for a, b in zip(values, values[1:])]
        mean_change = sum(changes) / len(changes)
        noise = math.sqrt(sum((c - mean_change) ** 2 for c in changes) / len(changes) / 2)
        threshold = level + max(zscore * noise, min_jump)
        return threshold if value > threshold else None

    def check(self, step: int, loss: float, grad_norm: float | None) -> Anomaly | None:
        """`grad_norm` None (not reported, as under ZeRO stage 0) leaves only the loss checks."""
        cfg = self.config
        if not math.isfinite(loss):
            return Anomaly(step, "nonfinite_loss", loss, None)
        if grad_norm is not None and not math.isfinite(grad_norm):
            return Anomaly(step, "nonfinite_grad_norm", grad_norm, None)
        threshold = self._spike(self.losses, loss, cfg.loss_zscore, cfg.min_loss_jump)
        if threshold is not None:
            return Anomaly(step, "loss_spike", loss, threshold)
        if grad_norm is not None and cfg.grad_norm_zscore is not None:
            threshold = self._spike(self.norms, grad_norm, cfg.grad_norm_zscore, 0.0)
            if threshold is not None:
                return Anomaly(step, "grad_norm_spike", grad_norm, threshold)
        self.losses.append(loss)
        if grad_norm is not None:
            self.norms.append(grad_norm)
        return None

    def on_step_end(self, trainer: TrainerView, record: dict[str, Any]) -> Action:
        anomaly = self.check(record["step"], record["loss"], record["grad_norm"])
        return None if anomaly is None else Rollback(anomaly)

    def on_rollback(self, trainer: TrainerView, restored_step: int) -> None:
        """The window described the undone steps; start it afresh."""
        self.losses.clear()
        self.norms.clear()


class SignalCheckpoint(Hook):
    """SIGTERM, SIGUSR1 (Slurm's warning before the time limit) or Ctrl-C: save, then stop cleanly.

    The handler only sets a flag; at the end of the step every rank learns whether any rank
    was signalled (a max all-reduce), so all stop after the same step. A second Ctrl-C stops at
    once, without saving (a step that never ends). The trainer hands the signals back (`release`) when
    training ends or its set-up fails: a process that goes on must not have SIGTERM swallowed.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)

    def __init__(self) -> None:
        self.received: int | None = None
        self.previous = {sig: signal.signal(sig, self._handle) for sig in self.SIGNALS}

    def _handle(self, signum: int, frame: Any) -> None:
        if signum == signal.SIGINT and self.received == signal.SIGINT:
            raise KeyboardInterrupt
        self.received = signum

    def release(self) -> None:
        """The handlers from before, once."""
        for sig, handler in self.previous.items():
            signal.signal(sig, signal.SIG_DFL if handler is None else handler)
        self.previous = {}

    def on_step_end(self, trainer: TrainerView, record: dict[str, Any]) -> Action:
        flag = torch.tensor([self.received or 0], dtype=torch.int64, device=trainer.layout.device)
        if dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return Stop(signal.Signals(int(flag)).name) if int(flag) else None


def load_user_hooks(specs: list[HookSpec]) -> list[Hook]:
    hooks = []
    for spec in specs:
        module_name, _, class_name = spec.target.partition(":")
        try:
            cls = getattr(importlib.import_module(module_name), class_name)
        except (ImportError, AttributeError) as exc:
            raise UserError(f"hooks: cannot load {spec.target}: {exc}") from None
        hooks.append(cls(**spec.args))
    return hooks


def build_hooks(config: TrainingConfig, signals: SignalCheckpoint) -> list[Hook]:
    """The user's hooks, then the built-in anomaly detector (unless disabled) and signal handler."""
    detector = [AnomalyDetector(config.rollback)] if config.rollback.enabled else []
    return [*load_user_hooks(config.hooks), *detector, signals]
