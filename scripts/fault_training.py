"""Inject random faults into training and check that each one is survived.

A fault is one of: `kill_rank` (SIGKILL of a random rank at a random step, from outside, then the
same command again), `torn_file` (a DeepSpeed file of the newest checkpoint cut short), `torn_meta`
(its crucible.json cut short), `pickled_file` (a file replaced by a pickle that would create a
marker file when loaded, its hash and crucible.json's digest recomputed) and, where root can mount a small
tmpfs, `disk_full` (the run folder on a filesystem too small for the next checkpoint; then room is
made). After each, training is rerun to the end and checked against an undisturbed reference run:
every step's loss equal (CPU resume is bit for bit), every published checkpoint verifying against
its hashes, a hostile file refused by name without running, a full disk named with its free space.

    python scripts/fault_training.py --shards runs/sample/data/shards --faults 10 --seed 0

Prints one row per fault and a summary: faults injected, survived, steps redone, bytes of
published checkpoints lost.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psutil
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from launch.torchrun import free_port  # noqa: E402
from pipeline.ground.hashing import file_sha256  # noqa: E402
from pipeline.ground.layout import TrainFolder  # noqa: E402
from training.checkpoint import info_of  # noqa: E402
from training.checkpoint_meta import META_DIGEST, CorruptCheckpoint, meta_digest  # noqa: E402

STEPS, INTERVAL, PREFIX = 12, 3, 6  # the reference runs STEPS; faults start from a run stopped at PREFIX
NPROC = 2
SETTINGS = [
    "train.global_batch_size=8",
    "train.micro_batch_size=2",
    "train.eval_interval=1000",
    "train.warmup_steps=3",
    f"train.decay_steps={STEPS}",
    "train.peak_tflops=1",
    f"checkpoint.interval={INTERVAL}",
    "checkpoint.keep_last=10",
]
KINDS = ["kill_rank", "torn_file", "torn_meta", "pickled_file", "disk_full"]


class Payload:
    """Unpickling this creates `marker`: the stand-in for any command a planted file could run."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@dataclass
class Outcome:
    kind: str
    detail: str
    survived: bool
    steps_redone: int
    bytes_lost: int
    why: str = ""


def train_command(shards: Path, run: Path, steps: int) -> list[str]:
    sets = [arg for setting in [*SETTINGS, f"train.max_steps={steps}"] for arg in ("--set", setting)]
    return [
        sys.executable,
        "-m",
        "launch.agent",
        "--nproc_per_node",
        str(NPROC),
        "--rdzv-backend",
        "c10d",
        "--rdzv-endpoint",
        f"127.0.0.1:{free_port()}",
        "-m",
        "pipeline",
        "train",
        "--data",
        str(shards),
        "--output",
        str(run),
        *sets,
    ]


def train(shards: Path, run: Path, steps: int = STEPS) -> subprocess.CompletedProcess[str]:
    return subprocess.run(train_command(shards, run, steps), cwd=REPO, capture_output=True, text=True)


def losses(run: Path) -> dict[int, float]:
    """The last loss logged for each step (a step redone after a fault is logged again)."""
    path = TrainFolder(run).metrics
    records = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
    return {r["step"]: r["loss"] for r in records if "anomaly" not in r}


def resumed_from(run: Path) -> list[int]:
    path = TrainFolder(run).events
    events = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
    return [e["step"] for e in events if e["event"] == "resume"]


def damaged_bytes(run: Path) -> int:
    """Bytes of published checkpoints that are damaged: a torn or missing crucible.json (the whole
    folder), or files missing or not matching their recorded hashes."""
    lost = 0
    for folder in sorted(TrainFolder(run).checkpoints.glob("step-*")):
        try:
            files = info_of(folder).meta.files
        except CorruptCheckpoint:
            lost += sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
            continue
        for name, digest in files.items():
            path = folder / name
            if not path.exists() or file_sha256(path) != digest:
                lost += path.stat().st_size if path.exists() else 1
    return lost


def finish_and_check(shards: Path, run: Path, reference: dict[int, float], kind: str, detail: str) -> Outcome:
    """Rerun to the end; survived = every step's loss is the reference's and no published file is damaged."""
    logged = max(losses(run), default=0)
    result = train(shards, run)
    redone = logged - (resumed_from(run) or [0])[-1]
    if result.returncode != 0:
        last = result.stderr.strip().splitlines()[-1:] or ["no message"]
        return Outcome(kind, detail, False, redone, damaged_bytes(run), last[0])
    final = losses(run)
    mismatched = [s for s in range(1, STEPS + 1) if final.get(s) != reference[s]]
    lost = damaged_bytes(run)
    why = f"losses differ at steps {mismatched}" if mismatched else ""
    return Outcome(kind, detail, not mismatched and lost == 0, redone, lost, why)


def newest(run: Path) -> Path:
    return sorted(TrainFolder(run).checkpoints.glob("step-*"))[-1]


# -- the faults ------------------------------------------------------------------------------


def kill_rank(shards: Path, run: Path, reference: dict[int, float], rng: random.Random) -> Outcome:
    step, rank = rng.randint(2, STEPS - 1), rng.randrange(NPROC)
    launcher = subprocess.Popen(
        train_command(shards, run, STEPS), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    while launcher.poll() is None and max(losses(run), default=0) < step:
        time.sleep(0.05)
    killed_at = max(losses(run), default=0)
    for child in psutil.Process(launcher.pid).children(recursive=True):
        try:
            if child.environ().get("RANK") == str(rank):
                child.send_signal(signal.SIGKILL)
        except psutil.Error:
            continue
    status = launcher.wait()
    detail = f"rank {rank} after step {killed_at} (exit {status})"
    if status == 0:
        return Outcome("kill_rank", detail, False, 0, 0, "the run ended before the kill")
    return finish_and_check(shards, run, reference, "kill_rank", detail)


def torn_file(shards: Path, run: Path, reference: dict[int, float], rng: random.Random) -> Outcome:
    victim = rng.choice(sorted(newest(run).glob("*.pt")))
    data = victim.read_bytes()
    cut = rng.randrange(1, len(data))
    victim.write_bytes(data[:cut])
    outcome = finish_and_check(shards, run, reference, "torn_file", f"{victim.name} cut to {cut:,} B")
    if outcome.survived and resumed_from(run)[-1] != PREFIX - INTERVAL:
        outcome.survived, outcome.why = False, f"resumed from {resumed_from(run)}, not the previous checkpoint"
    return outcome


def torn_meta(shards: Path, run: Path, reference: dict[int, float], rng: random.Random) -> Outcome:
    victim = newest(run) / "crucible.json"
    text = victim.read_text()
    cut = rng.randrange(1, len(text) - 1)
    victim.write_text(text[:cut])
    return finish_and_check(shards, run, reference, "torn_meta", f"crucible.json cut to {cut:,} chars")


def pickled_file(shards: Path, run: Path, reference: dict[int, float], rng: random.Random) -> Outcome:
    checkpoint = newest(run)
    victim = rng.choice(sorted(checkpoint.glob("*.pt")))
    marker = run.parent / "payload-ran"
    torch.save({"module": {}, "payload": Payload(marker)}, victim)
    meta = json.loads((checkpoint / "crucible.json").read_text())
    meta["files"][victim.name] = file_sha256(victim)
    (checkpoint / "crucible.json").write_text(json.dumps(meta | {META_DIGEST: meta_digest(meta)}))  # as a forger would
    before = {p.name: file_sha256(p) for p in checkpoint.iterdir()}
    refused = train(shards, run)
    detail = f"payload in {victim.name}"
    if refused.returncode == 0 or str(victim) not in refused.stderr or marker.exists():
        return Outcome("pickled_file", detail, False, 0, 0, "not refused by name, or the payload ran")
    if {p.name: file_sha256(p) for p in checkpoint.iterdir()} != before:
        return Outcome("pickled_file", detail, False, 0, 0, "the refused checkpoint was changed")
    shutil.move(checkpoint, run.parent / "quarantined")  # what the operator does with a hostile checkpoint
    return finish_and_check(shards, run, reference, "pickled_file", detail)


def disk_full(shards: Path, run: Path, reference: dict[int, float], rng: random.Random) -> Outcome:
    mount = run.parent / "small"
    mount.mkdir()
    used = sum(p.stat().st_size for p in run.rglob("*") if p.is_file())
    room = rng.randint(64 << 10, sum(p.stat().st_size for p in newest(run).glob("*.pt")) // 2)
    if (
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={used + room}", "tmpfs", str(mount)], capture_output=True
        ).returncode
        != 0
    ):
        return Outcome("disk_full", "skipped: mounting a tmpfs needs root", True, 0, 0)
    try:
        shutil.copytree(run, mount / "run")
        full = train(shards, mount / "run")
        message = (full.stderr.strip().splitlines() or [""])[-1]
        detail = f"{room >> 10:,} KiB left"
        if full.returncode != 2 or "MiB free" not in message or ".staging" not in message:
            return Outcome("disk_full", detail, False, 0, damaged_bytes(mount / "run"), f"unclear failure: {message}")
        subprocess.run(["mount", "-o", f"remount,size={used * 4}", str(mount)], check=True)  # room is made
        return finish_and_check(shards, mount / "run", reference, "disk_full", detail)
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


FAULTS: dict[str, Callable[[Path, Path, dict[int, float], random.Random], Outcome]] = {
    "kill_rank": kill_rank,
    "torn_file": torn_file,
    "torn_meta": torn_meta,
    "pickled_file": pickled_file,
    "disk_full": disk_full,
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shards", type=Path, required=True, help="a shards folder made by prep")
    parser.add_argument("--faults", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path, help="scratch folder (default: a temporary one)")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    work = Path(args.work or tempfile.mkdtemp(prefix="crucible-faults-"))
    shards = args.shards.resolve()
    if train(shards, work / "reference").returncode or train(shards, work / "prefix", PREFIX).returncode:
        raise SystemExit("the undisturbed runs failed: check --shards")
    reference = losses(work / "reference")
    kinds = [KINDS[i % len(KINDS)] for i in range(args.faults)]
    rng.shuffle(kinds)
    outcomes = []
    for i, kind in enumerate(kinds):
        case = work / f"fault-{i:02d}"
        run = case / "run"
        if kind == "kill_rank":
            case.mkdir(parents=True)
        else:
            shutil.copytree(work / "prefix", run)
        outcome = FAULTS[kind](shards, run, reference, rng)
        outcomes.append(outcome)
        print(
            f"{i + 1:>3} {kind:<13} {outcome.detail:<40} {'survived' if outcome.survived else 'FAILED':<9} "
            f"steps redone {outcome.steps_redone:>2}  bytes lost {outcome.bytes_lost:,} {outcome.why}",
            flush=True,
        )
    survived = sum(o.survived for o in outcomes)
    print(
        f"faults injected {len(outcomes)}, survived {survived}, steps redone {sum(o.steps_redone for o in outcomes)}, "
        f"bytes of published checkpoints lost {sum(o.bytes_lost for o in outcomes):,}"
    )
    return 0 if survived == len(outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
