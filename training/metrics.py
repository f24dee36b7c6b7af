"""Training metrics: FLOPs per token, MFU against a peak, and the metrics.jsonl log (fed to the trackers).

FLOPs per token, as used for MFU (causal masking not discounted):
    6 * N_matmul + 12 * n_layers * d_model * seq_len
where N_matmul counts the weights of every matrix multiply: per layer Q, K, V, O and the three
SwiGLU matrices, plus the LM head (vocab x d_model); the embedding lookup is not a matmul. The
first term is forward + backward of the dense layers, the second the attention scores and
weighted sums (with document masking most of it is skipped, so MFU is also worth reading without
it: `attention=False`). MFU = achieved FLOP/s / (peak FLOP/s per device x devices).

The peak is `train.peak_tflops` where given, else a matmul measured at start-up on a GPU. A CPU
gets no measured peak: its small matmul, slowed by whatever else runs on a shared machine, read
a fraction of what training then achieved (MFU of 200-400%), so a CPU run reports tokens/s only.
An MFU above 100% can only mean the peak read low: from then on the run logs `mfu` as null.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from pipeline.ground.markers import append_jsonl
from pipeline.ground.layout import TrainFolder
from training.trackers import Trackers


def measure_peak_flops(
    device: torch.device, dtype: torch.dtype, seconds: float = 1.0, n: int | None = None, windows: int = 5
) -> float:
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


def peak_flops(declared_tflops: float | None, device: torch.device, dtype: torch.dtype) -> float | None:
    """Per-device peak FLOP/s for MFU: the declared one, else measured on a GPU; None on a CPU."""
    if declared_tflops:
        return declared_tflops * 1e12
    return measure_peak_flops(device, dtype) if device.type == "cuda" else None


def mfu(tokens_per_s: float, flops_per_token: float, peak: float | None, devices: int) -> float | None:
    """Model FLOPs utilization against `peak` per device; None without a peak."""
    return None if peak is None else tokens_per_s * flops_per_token / (peak * devices)


def mfu_withheld(peak_tflops: float | None) -> str:
    """Why a run shows no MFU, in one line (the console and the report say the same)."""
    if peak_tflops is None:
        return (
            "MFU not shown: no peak to measure it against (a CPU's measured peak reads low); set "
            "train.peak_tflops to the device's peak to see it"
        )
    return (
        f"MFU not shown: it came out above 100% of the {peak_tflops:.3g} TFLOP/s peak, so that peak is "
        f"below what the device did; set train.peak_tflops to the device's datasheet peak"
    )


class MetricsLog:
    """Appends one JSON object per logged step to metrics.jsonl and passes it to the trackers."""

    def __init__(self, run_dir: Path, enabled: bool, trackers: Trackers) -> None:
        self.enabled, self.trackers = enabled, trackers
        self.path = TrainFolder(run_dir).metrics
        if enabled:
            run_dir.mkdir(parents=True, exist_ok=True)

    def log(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        append_jsonl(self.path, record)
        self.trackers.metrics(record)

    def close(self) -> None:
        self.trackers.close()
