"""The training loop's decisions, each behind a small interface: when to evaluate, when to save, when to stop,
and what an anomaly leads to.

The loop asks; a policy answers from the step and its settings, so a test can ask one without a model. Of
the four only the rollback policy carries something across a restart (the rollbacks so far, which its cap
counts): it saves into a checkpoint's metadata and loads from it. The others decide from the step alone,
so a resumed run decides as the run it continues would have.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from pipeline.ground.errors import UserError
from training.config import CheckpointConfig, EvalConfig, RollbackConfig, TrainConfig


class TrainingDiverged(UserError):
    """Loss or gradients that rollbacks could not bring back: the settings need a change, not a rerun."""


@dataclass(frozen=True)
class EvaluationPolicy:
    """Validation every `train.eval_interval` steps, task scores every `eval.interval` (default the same); both
    at the last step."""

    train: TrainConfig
    eval: EvalConfig
    has_tasks: bool

    def validate_now(self, step: int, last: bool) -> bool:
        return bool(self.train.eval_batches) and (step % self.train.eval_interval == 0 or last)

    def score_tasks_now(self, step: int, last: bool) -> bool:
        return self.has_tasks and (step % (self.eval.interval or self.train.eval_interval) == 0 or last)


@dataclass(frozen=True)
class CheckpointPolicy:
    """A save at the last step, every `checkpoint.interval` steps, and before a stop; none when disabled."""

    config: CheckpointConfig

    def save_reason(self, step: int, last: bool, stopping: bool) -> str | None:
        """Why to save after `step` ("signal", "final", "interval"), or None not to."""
        if not self.config.enabled:
            return None
        if stopping:
            return "signal"
        if last:
            return "final"
        interval = self.config.interval
        return "interval" if interval and step % interval == 0 else None


@dataclass(frozen=True)
class StopPolicy:
    """Train to `max_steps`; a stop asked for by a signal ends the run after the step it came in, unless that
    step was the last (the run is done then, not stopped)."""

    max_steps: int

    def done(self, step: int) -> bool:
        return step >= self.max_steps

    def is_last(self, step: int) -> bool:
        return step == self.max_steps

    def honours_stop_after(self, step: int) -> bool:
        return not self.is_last(step)


Verdict = Literal["rollback", "ignore"]


class RollbackPolicy:
    """What an anomaly leads to: a rollback to the last healthy checkpoint, while the cap allows; going on when
    there is none yet (a spike) or giving up (non-finite values: nothing to go on from)."""

    def __init__(self, config: RollbackConfig) -> None:
        self.config = config
        self.count = 0  # rollbacks so far in this run, across restarts

    def verdict(self, reason: str, step: int, value: float, has_target: bool) -> Verdict:
        """Raises TrainingDiverged where training cannot go on; counts a rollback it allows."""
        if not has_target:
            if reason.startswith("nonfinite"):
                raise TrainingDiverged(
                    f"{reason} at step {step} and no healthy checkpoint to roll back to; lower checkpoint.interval"
                )
            return "ignore"
        if self.count >= self.config.max_rollbacks:
            raise TrainingDiverged(
                f"gave up after {self.config.max_rollbacks} rollbacks; last anomaly: {reason} at step {step} "
                f"(value {value}); lower train.lr or raise rollback.max_rollbacks"
            )
        self.count += 1
        return "rollback"

    def damped_until(self, restored_step: int) -> int:
        """The step up to which the learning rate stays damped after a rollback to `restored_step`."""
        return restored_step + self.config.lr_scale_steps

    def state_dict(self) -> dict[str, Any]:
        return {"count": self.count}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.count = int(state["count"])
