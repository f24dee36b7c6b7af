"""Training metrics: FLOPs per token, MFU against a peak, and the metrics.jsonl log (fed to the trackers).

FLOPs per token, as used for MFU (causal masking not discounted):
    6 * N_matmul + 12 * n_layers * d_model * seq_len
where N_matmul counts the weights of every matrix multiply: per layer Q, K, V, O and the three
SwiGLU matrices, plus the LM head (vocab x d_model); the embedding lookup is not a matmul. The
first term is forward + backward of the dense layers, the second the attention scores and
weighted sums (with document masking most of it is skipped, so MFU is also worth reading without
it: `attention=False`). MFU = achieved FLOP/s / (peak FLOP/s per device x devices).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from pipeline.ground.markers import append_jsonl
from pipeline.ground.names import METRICS_LOG
from training.trackers import Trackers


def measure_peak_flops(device: torch.device, dtype: torch.dtype, seconds: float = 1.0, n: int | None = None,
                       windows: int = 5) -> float:
    """Achieved FLOP/s of a large n x n matmul: the practical peak of this device and dtype.

    The fastest of several short windows counts, so a moment of contention (another process on a
    shared CPU) lowers one window, not the figure.
    """
    n = n or (2048 if device.type == "cuda" else 512)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    torch.matmul(a, b)  # warm-up
    best = 0.0
    for _ in range(windows):
        runs, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds / windows:
            torch.matmul(a, b)
            runs += 1
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = max(best, 2.0 * n**3 * runs / (time.perf_counter() - started))
    return best


class MetricsLog:
    """Appends one JSON object per logged step to metrics.jsonl and passes it to the trackers."""

    def __init__(self, run_dir: Path, enabled: bool, trackers: Trackers) -> None:
        self.enabled, self.trackers = enabled, trackers
        self.path = run_dir / METRICS_LOG
        if enabled:
            run_dir.mkdir(parents=True, exist_ok=True)

    def log(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        append_jsonl(self.path, record)
        self.trackers.metrics(record)

    def close(self) -> None:
        self.trackers.close()
