"""bench/mfu_bench.py on the CPU, as the GPU job runs it: every variant's figures and loss curve land
in the JSON, a variant that fails does not stop the others, the loss check compares the named curves,
and a time budget leaves runs out and says so."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
TINY = [
    "model.d_model=64",
    "model.n_layers=2",
    "model.n_heads=2",
    "model.n_kv_heads=1",
    "model.ffn_hidden=176",
    "train.global_batch_size=4",
    "train.micro_batch_size=2",
]


def run_bench(shards: Path, out: Path, *args: str) -> tuple[dict, str]:
    command = [
        sys.executable,
        str(REPO / "bench" / "mfu_bench.py"),
        "--config",
        str(REPO / "configs" / "sample.yaml"),
        "--shards",
        str(shards),
        "--matmul-size",
        "128",
        "--warmup",
        "1",
        "--steps",
        "3",
        "--json-out",
        str(out),
        *[arg for value in TINY for arg in ("--set", value)],
        *args,
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(out.read_text()), result.stdout


@pytest.mark.slow
def test_variants_failures_and_loss_checks_land_in_the_json(tiny_shards: Path, tmp_path: Path) -> None:
    data, stdout = run_bench(
        tiny_shards,
        tmp_path / "mfu.json",
        "--variant",
        "masked:model.document_masking=true,parallel.attention=sdpa",
        "--variant",
        "flex:model.document_masking=true,parallel.attention=flex",
        "--check",
        "masked,eager-bf16,0.5",
    )
    assert [r["name"] for r in data["results"]] == [
        "crucible train, eager-bf16",
        "crucible train, masked",
        "plain PyTorch loop",
    ]
    assert data["failed"] == ["flex"], "FlexAttention is refused on the CPU; the other runs are still measured"
    assert data["skipped"] == []
    assert {label: len(curve) for label, curve in data["losses"].items()} == {"eager-bf16": 4, "masked": 4}
    masked, eager = (
        np.convolve(data["losses"][name], np.ones(4) / 4, mode="valid") for name in ("masked", "eager-bf16")
    )
    assert data["loss_gaps"]["masked vs eager-bf16"] == pytest.approx(float(np.max(np.abs(masked - eager) / eager)))
    assert "loss of masked against eager-bf16 over 4 steps" in stdout
    assert all(r["ours"] > 0 for r in data["results"])


@pytest.mark.slow
def test_a_budget_leaves_out_the_runs_that_would_end_past_it(tiny_shards: Path, tmp_path: Path) -> None:
    data, stdout = run_bench(
        tiny_shards, tmp_path / "mfu.json", "--variant", "causal:model.document_masking=false", "--budget", "0.001"
    )
    assert data["skipped"] == ["eager-bf16", "causal"]
    assert [r["name"] for r in data["results"]] == ["plain PyTorch loop"]
    assert "not run within the 0 s budget: eager-bf16, causal" in stdout
