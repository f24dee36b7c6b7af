"""The trainer on one rank inside the test process (tests/trainer_harness.py): resume, and what it records."""

from __future__ import annotations

import json
from pathlib import Path

from tests.trainer_harness import train_in_process


def test_a_run_stopped_and_resumed_in_process_continues_bit_for_bit(tiny_shards: Path, tmp_path: Path) -> None:
    straight = train_in_process(tiny_shards, tmp_path / "straight", 8)
    first = train_in_process(tiny_shards, tmp_path / "split", 4, "train.decay_steps=8")
    resumed = train_in_process(tiny_shards, tmp_path / "split", 8)
    assert [r["step"] for r in first] == [1, 2, 3, 4] and [r["step"] for r in resumed] == [5, 6, 7, 8]
    assert [r["loss"] for r in first + resumed] == [r["loss"] for r in straight]
    events = [json.loads(line) for line in (tmp_path / "split" / "events.jsonl").read_text().splitlines()]
    assert [(e["event"], e["step"]) for e in events if e["event"] in ("save", "resume")] == [
        ("save", 4),
        ("resume", 4),
        ("save", 8),
    ]


def test_the_records_carry_the_step_loss_rate_and_throughput(tiny_shards: Path, tmp_path: Path) -> None:
    records = train_in_process(tiny_shards, tmp_path / "run", 3)
    assert [r["step"] for r in records] == [1, 2, 3]
    assert all(r["loss"] > 0 and r["tokens_per_s"] > 0 and r["grad_norm"] > 0 for r in records)
    assert records[0]["lr"] < records[2]["lr"]  # warming up over 3 steps
    assert records[0]["loss"] > records[2]["loss"]
