"""The anomaly detector on hand-made curves: jumps above a falling loss, NaNs, missing grad norms."""

from __future__ import annotations

import math

from training.config import RollbackConfig
from training.hooks import AnomalyDetector


def falling(step: int) -> float:
    return 6.0 - 0.05 * step + 0.01 * math.sin(step)


def test_a_jump_above_a_falling_loss_is_a_spike_and_noise_is_not() -> None:
    detector = AnomalyDetector(RollbackConfig(min_history=10))
    assert all(detector.check(s, falling(s), 1.0) is None for s in range(1, 20))
    anomaly = detector.check(20, falling(20) + 1.0, 1.0)
    assert anomaly is not None and anomaly.reason == "loss_spike"


def test_nonfinite_values_are_anomalies_at_once() -> None:
    detector = AnomalyDetector(RollbackConfig())
    assert detector.check(1, float("nan"), 1.0).reason == "nonfinite_loss"
    assert detector.check(1, 5.0, float("inf")).reason == "nonfinite_grad_norm"


def test_a_missing_grad_norm_leaves_the_loss_checks() -> None:
    detector = AnomalyDetector(RollbackConfig(min_history=10))
    assert all(detector.check(s, falling(s), None) is None for s in range(1, 20))
    assert detector.check(20, falling(20) + 1.0, None).reason == "loss_spike"
    assert detector.check(21, float("nan"), None).reason == "nonfinite_loss"
