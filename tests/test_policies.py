"""The training loop's policies answer from the step and their settings alone: asked here without a model."""

from __future__ import annotations

import pytest

from training.config import CheckpointConfig, EvalConfig, RollbackConfig, TrainConfig
from training.policies import CheckpointPolicy, EvaluationPolicy, RollbackPolicy, StopPolicy, TrainingDiverged


def test_evaluation_runs_at_its_intervals_and_at_the_last_step() -> None:
    train = TrainConfig(max_steps=10, eval_interval=4, eval_batches=2)
    policy = EvaluationPolicy(train, EvalConfig(interval=3), has_tasks=True)
    assert [s for s in range(1, 11) if policy.validate_now(s, last=s == 10)] == [4, 8, 10]
    assert [s for s in range(1, 11) if policy.score_tasks_now(s, last=s == 10)] == [3, 6, 9, 10]
    no_tasks = EvaluationPolicy(train.model_copy(update={"eval_batches": 0}), EvalConfig(), has_tasks=False)
    assert not any(no_tasks.validate_now(s, True) or no_tasks.score_tasks_now(s, True) for s in range(1, 11))


def test_a_save_says_why_and_none_comes_when_checkpoints_are_off() -> None:
    policy = CheckpointPolicy(CheckpointConfig(interval=5))
    reasons = {s: policy.save_reason(s, last=s == 12, stopping=s == 7) for s in range(1, 13)}
    assert {s: r for s, r in reasons.items() if r} == {5: "interval", 7: "signal", 10: "interval", 12: "final"}
    assert CheckpointPolicy(CheckpointConfig(enabled=False)).save_reason(12, last=True, stopping=True) is None


def test_a_stop_after_the_last_step_stops_nothing() -> None:
    policy = StopPolicy(max_steps=3)
    assert [policy.done(s) for s in (2, 3)] == [False, True]
    assert [policy.honours_stop_after(s) for s in (2, 3)] == [True, False]


def test_rollbacks_are_counted_capped_and_carried_across_a_restart() -> None:
    policy = RollbackPolicy(RollbackConfig(max_rollbacks=2, lr_scale_steps=50))
    assert policy.verdict("loss_spike", 9, 7.5, has_target=False) == "ignore"  # nothing to go back to yet
    with pytest.raises(TrainingDiverged, match="nonfinite_loss at step 9 and no healthy checkpoint"):
        policy.verdict("nonfinite_loss", 9, float("nan"), has_target=False)
    assert policy.verdict("loss_spike", 20, 7.5, has_target=True) == "rollback"
    restarted = RollbackPolicy(RollbackConfig(max_rollbacks=2))
    restarted.load_state_dict(policy.state_dict())
    assert restarted.verdict("loss_spike", 30, 7.5, has_target=True) == "rollback"
    with pytest.raises(TrainingDiverged, match="gave up after 2 rollbacks; last anomaly: loss_spike at step 40"):
        restarted.verdict("loss_spike", 40, 7.5, has_target=True)
    assert policy.damped_until(10) == 60
