"""Inject random faults into data prep and check that nothing published is ever damaged and that
a rerun gives the reference bytes.

One clean prep run of the input is the reference. Then each of N faults hits one output folder
that already holds a finished run: kill -9 of prep (the whole process group) at a random moment
of a rerun from scratch, an edited published shard, an edited or deleted cached step output, a
torn completion marker, and (as root, with tmpfs) a disk that fills up mid-run. After a fault,
every published file that exists must be the reference's bytes (a kill may leave files missing,
never half-written); then `crucible prep` is rerun and every published file compared again.

    python scripts/fault_inject.py --faults 12 --seed 1

The summary line says how many faults were injected, how many the run survived (rerun exit 0
and reference bytes everywhere) and how many published bytes differ from the reference.
"""

from __future__ import annotations

import argparse
import hashlib
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
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline.ground.layout import PrepFolder  # noqa: E402

PUBLISHED = ("clean", "dropped", "quarantine", "tokenizer", "shards")
SETTINGS = ["prep.tokenizer.vocab_size=1024", "prep.pack.seq_len=128", "prep.workers=2"]


def digests(output: Path) -> dict[str, tuple[str, int]]:
    """sha256 and size of every published file (the manifest without its absolute input paths)."""
    found = {}
    for folder in PUBLISHED:
        for path in sorted((output / folder).rglob("*")) if (output / folder).exists() else []:
            if not path.is_file():
                continue
            data = path.read_bytes()
            if path.name == "manifest.json":
                manifest = json.loads(data)
                manifest.pop("prep_config", None)
                data = json.dumps(manifest, sort_keys=True).encode()
            found[path.relative_to(output).as_posix()] = (hashlib.sha256(data).hexdigest(), len(data))
    return found


def prep_command(inputs: list[Path], output: Path) -> list[str]:
    command = [sys.executable, "-m", "pipeline", "prep", "--output", str(output), "--no-progress"]
    for path in inputs:
        command += ["--input", str(path)]
    for setting in SETTINGS:
        command += ["--set", setting]
    return command


def run_prep(inputs: list[Path], output: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(prep_command(inputs, output), cwd=REPO, capture_output=True, text=True)


def damaged(output: Path, reference: dict[str, tuple[str, int]]) -> list[str]:
    """Published files that exist but are not the reference's bytes (or should not exist)."""
    return [name for name, value in digests(output).items() if reference.get(name, (None,))[0] != value[0]]


def lost_bytes(output: Path, reference: dict[str, tuple[str, int]]) -> int:
    now = digests(output)
    return sum(size for name, (digest, size) in reference.items() if now.get(name, (None,))[0] != digest)


def scribble(path: Path, rng: random.Random) -> None:
    path.chmod(0o644)
    with open(path, "r+b") as handle:
        handle.seek(rng.randrange(max(1, path.stat().st_size - 16)))
        handle.write(bytes(rng.randrange(256) for _ in range(16)))


# ---- faults: each damages `output` (a finished run) and returns what it did ---------------------


def kill_mid_run(output: Path, inputs: list[Path], rng: random.Random, seconds: float) -> str:
    shutil.rmtree(PrepFolder(output).work, ignore_errors=True)
    delay = rng.uniform(0.2, seconds)
    process = subprocess.Popen(
        prep_command(inputs, output),
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    time.sleep(delay)
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    return f"kill -9 after {delay:.1f}s of a rerun from scratch"


def edit_published_shard(output: Path, inputs: list[Path], rng: random.Random, seconds: float) -> str:
    shard = rng.choice(sorted(PrepFolder(output).local_shards.rglob("*.arrow")))
    scribble(shard, rng)
    return f"edited published {shard.relative_to(output)}"


def _cached_file(output: Path, rng: random.Random) -> Path:
    files = [
        p
        for p in PrepFolder(output).work.rglob("*")
        if p.is_file() and p.suffix in (".parquet", ".arrow", ".npy", ".bin")
    ]
    return rng.choice(sorted(files))


def edit_cached(output: Path, inputs: list[Path], rng: random.Random, seconds: float) -> str:
    path = _cached_file(output, rng)
    scribble(path, rng)
    return f"edited cached {path.relative_to(output)}"


def delete_cached(output: Path, inputs: list[Path], rng: random.Random, seconds: float) -> str:
    path = _cached_file(output, rng)
    path.unlink()
    return f"deleted cached {path.relative_to(output)}"


def torn_marker(output: Path, inputs: list[Path], rng: random.Random, seconds: float) -> str:
    marker = rng.choice(sorted(PrepFolder(output).work.rglob("done-*.json")))
    marker.write_bytes(marker.read_bytes()[: rng.randrange(1, 20)])
    return f"tore {marker.relative_to(output)}"


FAULTS: dict[str, Callable[[Path, list[Path], random.Random, float], str]] = {
    "kill": kill_mid_run,
    "edit_published_shard": edit_published_shard,
    "edit_cached": edit_cached,
    "delete_cached": delete_cached,
    "torn_marker": torn_marker,
}


EDITS_PUBLISHED = {"edit_published_shard"}  # faults that damage published files themselves


def disk_full(inputs: list[Path], reference: dict[str, tuple[str, int]], scratch: Path, size: int) -> tuple[str, bool]:
    """Prep into a tmpfs too small for it, then grow the tmpfs and rerun. Needs root."""
    mount = Path(tempfile.mkdtemp(prefix="small-disk-", dir=scratch))
    if (
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size // 3}", "tmpfs", str(mount)], capture_output=True
        ).returncode
        != 0
    ):
        return "disk full: skipped (needs root and tmpfs)", True
    try:
        first = run_prep(inputs, mount / "out")
        message = (first.stderr.strip().splitlines() or [""])[-1]
        clear = (
            first.returncode == 2 and "no space left on device writing" in message and "Traceback" not in first.stderr
        )
        intact = not damaged(mount / "out", reference)
        subprocess.run(["mount", "-o", f"remount,size={size * 3}", str(mount)], check=True)
        rerun = run_prep(inputs, mount / "out")
        ok = (
            clear
            and intact
            and rerun.returncode == 0
            and not damaged(mount / "out", reference)
            and lost_bytes(mount / "out", reference) == 0
        )
        return f"disk full at {size // 3 // 2**20} MiB ({message[:90]})", ok
    finally:
        subprocess.run(["umount", str(mount)], check=False)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--input", type=Path, action="append", default=[], help="prep input (default: data/sample/corpus-02.jsonl.zst)"
    )
    parser.add_argument("--faults", type=int, default=12, help="faults to inject (default 12)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    inputs = [p.resolve() for p in args.input] or [REPO / "data" / "sample" / "corpus-02.jsonl.zst"]
    rng = random.Random(args.seed)
    scratch = Path(tempfile.mkdtemp(prefix="crucible-faults-"))
    try:
        started = time.perf_counter()
        first = run_prep(inputs, scratch / "reference")
        if first.returncode != 0:
            print(first.stderr[-3000:], file=sys.stderr)
            return 1
        seconds = time.perf_counter() - started
        reference = digests(scratch / "reference")
        size = sum(p.stat().st_size for p in (scratch / "reference").rglob("*") if p.is_file())
        print(
            f"reference: {len(reference)} published files, {sum(s for _, s in reference.values()):,} bytes, "
            f"{seconds:.1f}s per run"
        )
        output = scratch / "faulted"
        shutil.copytree(scratch / "reference", output)
        kinds = list(FAULTS) + ["disk_full"]
        plan = (kinds * (args.faults // len(kinds) + 1))[: args.faults]
        rng.shuffle(plan)
        survived, lost = 0, 0
        for number, kind in enumerate(plan, 1):
            if kind == "disk_full":
                what, ok = disk_full(inputs, reference, scratch, size)
            else:
                what = FAULTS[kind](output, inputs, rng, seconds)
                broken = [] if kind in EDITS_PUBLISHED else damaged(output, reference)
                rerun = run_prep(inputs, output)
                ok = not broken and rerun.returncode == 0 and not damaged(output, reference)
                ok = ok and lost_bytes(output, reference) == 0
                lost += lost_bytes(output, reference)
                if not ok:
                    print(
                        f"   published damage after the fault: {broken[:5]}; rerun rc {rerun.returncode}: "
                        f"{rerun.stderr.strip()[-300:]}"
                    )
            survived += ok
            print(f"fault {number:>2}: {'survived' if ok else 'FAILED  '}  {what}")
        print(f"faults injected: {len(plan)}, survived: {survived}, bytes lost: {lost}")
        return 0 if survived == len(plan) and lost == 0 else 1
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
