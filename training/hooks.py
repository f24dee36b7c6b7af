"""Hooks: the small interface the training loop calls, and the built-in ones.

The loop calls `on_batch` before a micro-batch is used, `on_step_end` after each optimizer step,
`on_eval` after validation, `on_save` after a checkpoint is published and `on_anomaly` when a
rollback is about to happen. Automatic rollback and checkpoint-on-signal are hooks like any a
user adds from config (`train.hooks: [{target: "package.module:Class", args: {...}}]`).
"""

from __future__ import annotations

import importlib
import json
import math
import signal
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist
from pydantic import Field

from pipeline.errors import UserError
from pipeline.schema import Section

if TYPE_CHECKING:
    from training.data import Batch
    from training.engine import Trainer


class HookSpec(Section):
    """A user hook: `target` is "module.path:ClassName", `args` its keyword arguments."""

    target: str = Field(pattern=r"^[\w.]+:\w+$")
    args: dict[str, Any] = Field(default_factory=dict)


class RollbackConfig(Section):
    """When a step counts as an anomaly and what to do about it."""

    enabled: bool = True
    window: int = Field(50, ge=3, description="Steps in the moving window of loss and grad-norm statistics.")
    min_history: int = Field(20, ge=2, description="Steps seen before spikes are judged (NaNs always are).")
    loss_zscore: float = Field(6.0, gt=0, description="A loss this many std above the window mean is a spike.")
    grad_norm_zscore: float | None = Field(10.0, gt=0, description="Same for the gradient norm; null disables.")
    min_loss_jump: float = Field(0.5, ge=0, description="...and at least this far above the mean (absolute).")
    lr_scale: float = Field(0.5, gt=0, le=1, description="Learning-rate factor for a while after a rollback.")
    lr_scale_steps: int = Field(20, ge=0)
    max_rollbacks: int = Field(3, ge=0, description="Give up with an error after this many.")


@dataclass(frozen=True)
class Anomaly:
    step: int
    reason: str  # "nonfinite_loss", "nonfinite_grad_norm", "loss_spike", "grad_norm_spike"
    value: float
    threshold: float | None


class Hook:
    """Override what you need; every method has a do-nothing default."""

    def on_batch(self, trainer: Trainer, batch: Batch) -> Batch:
        return batch

    def on_step_end(self, trainer: Trainer, record: dict[str, Any]) -> None:
        pass

    def on_eval(self, trainer: Trainer, val_loss: float) -> None:
        pass

    def on_save(self, trainer: Trainer, path: Path) -> None:
        pass

    def on_anomaly(self, trainer: Trainer, anomaly: Anomaly) -> None:
        pass


class EventLog:
    """`<run>/events.jsonl`: rollbacks, saves, resumes, signals; written by rank 0."""

    def __init__(self, run_dir: Path, enabled: bool) -> None:
        self.path, self.enabled = Path(run_dir) / "events.jsonl", enabled

    def log(self, event: dict[str, Any]) -> None:
        if self.enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a") as handle:
                handle.write(json.dumps(event, sort_keys=True) + "\n")


class AnomalyDetector(Hook):
    """Flags non-finite loss or grad norm, and z-score spikes over a moving window.

    Loss and grad norm are global values (the same on every rank), so every rank reaches the
    same verdict without communicating. Anomalous steps never enter the window.
    """

    def __init__(self, config: RollbackConfig) -> None:
        self.config = config
        self.losses: deque[float] = deque(maxlen=config.window)
        self.norms: deque[float] = deque(maxlen=config.window)

    def _spike(self, history: deque[float], value: float, zscore: float, min_jump: float) -> float | None:
        if len(history) < self.config.min_history:
            return None
        mean = sum(history) / len(history)
        std = math.sqrt(sum((v - mean) ** 2 for v in history) / len(history))
        threshold = mean + max(zscore * std, min_jump)
        return threshold if value > threshold else None

    def check(self, step: int, loss: float, grad_norm: float) -> Anomaly | None:
        cfg = self.config
        if not math.isfinite(loss):
            return Anomaly(step, "nonfinite_loss", loss, None)
        if not math.isfinite(grad_norm):
            return Anomaly(step, "nonfinite_grad_norm", grad_norm, None)
        threshold = self._spike(self.losses, loss, cfg.loss_zscore, cfg.min_loss_jump)
        if threshold is not None:
            return Anomaly(step, "loss_spike", loss, threshold)
        if cfg.grad_norm_zscore is not None:
            threshold = self._spike(self.norms, grad_norm, cfg.grad_norm_zscore, 0.0)
            if threshold is not None:
                return Anomaly(step, "grad_norm_spike", grad_norm, threshold)
        self.losses.append(loss)
        self.norms.append(grad_norm)
        return None

    def on_step_end(self, trainer: Trainer, record: dict[str, Any]) -> None:
        anomaly = self.check(record["step"], record["loss"], record["grad_norm"])
        if anomaly is not None:
            trainer.anomaly = anomaly

    @property
    def healthy(self) -> bool:
        """Enough clean history that a checkpoint now is a good place to roll back to."""
        return len(self.losses) >= 1

    def reset(self) -> None:
        self.losses.clear()
        self.norms.clear()


class SignalCheckpoint(Hook):
    """SIGTERM or SIGUSR1 (Slurm's warning before the time limit): save, then stop cleanly.

    The handler only sets a flag; at the end of the step every rank learns whether any rank
    was signalled (a max all-reduce), so all stop after the same step.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGUSR1)

    def __init__(self) -> None:
        self.received: int | None = None
        for sig in self.SIGNALS:
            signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        self.received = signum

    def on_step_end(self, trainer: Trainer, record: dict[str, Any]) -> None:
        flag = torch.tensor([self.received or 0], dtype=torch.int64, device=trainer.layout.device)
        if dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        if int(flag):
            trainer.stop_signal = signal.Signals(int(flag)).name


def load_user_hooks(specs: list[HookSpec]) -> list[Hook]:
    hooks = []
    for spec in specs:
        module_name, _, class_name = spec.target.partition(":")
        try:
            cls = getattr(importlib.import_module(module_name), class_name)
        except (ImportError, AttributeError) as exc:
            raise UserError(f"train.hooks: cannot load {spec.target}: {exc}") from None
        hooks.append(cls(**spec.args))
    return hooks
