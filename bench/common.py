"""Helpers shared by the benchmarks: arguments, corpora, best-of-N timing and the result table.

Every figure is a rate measured beside a baseline in the same process and reported as a ratio,
so a slower or busier machine moves both sides together and the ratio stays comparable.
Nothing here asserts a timing: a ratio below its aim is printed as a miss, never raised.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import io
import json
import pstats
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import zstandard

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # benches run as scripts from bench/

from pipeline.ground.markers import parse_jsonl  # noqa: E402

SHARED_DATA = REPO.parent / "shared" / "data"
TEST_DATA = REPO / "tests" / "data"
DATA_HELP = "folder with the benchmark corpora (default: shared/data beside the repository, else tests/data)"


def base_parser(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--data", type=Path, help=DATA_HELP)
    parser.add_argument(
        "--repeat",
        type=int,
        default=3,
        help="rounds of each comparison, every side once per round; each side's fastest run counts (default: 3)",
    )
    return parser


def data_dir(given: Path | None) -> Path:
    """`--data` when given; else the team's larger corpora beside the repository; else the small
    test sets in the repository, so that a fresh clone can still run every benchmark."""
    if given is not None:
        return given
    if SHARED_DATA.is_dir():
        return SHARED_DATA
    print(
        f"note: {SHARED_DATA} is absent, so the benchmarks read the small test sets in {TEST_DATA}; "
        "their figures are rougher. Pass --data FOLDER for larger corpora.",
        file=sys.stderr,
    )
    return TEST_DATA


def corpus_file(data: Path, name: str) -> Path:
    """`name` in `data`, or its zstd-compressed copy (tests/data keeps only those)."""
    for path in (data / name, data / f"{name}.zst"):
        if path.is_file():
            return path
    raise SystemExit(f"benchmark corpus {name} not found in {data}: pass --data FOLDER holding it")


def read_jsonl(path: Path, every: int = 1) -> list[dict[str, Any]]:
    """Records of a JSONL corpus, plain or .zst; `every` > 1 keeps every n-th record (a spread-out
    sample)."""
    with open(path, "rb") as raw:
        data = zstandard.ZstdDecompressor().stream_reader(raw).read() if path.suffix == ".zst" else raw.read()
    return parse_jsonl(data.decode("utf-8"), path)[::every]


def write_jsonl(path: Path, records: list[dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    return path


def best_times(fns: Sequence[Callable[[], Any]], repeat: int) -> tuple[list[float], list[Any]]:
    """Fastest wall seconds of each of `fns` over `repeat` rounds (the least disturbed run), and
    each one's last result. A round runs every fn once, in turn, so a change in the load of a
    shared machine between rounds falls on every side of a comparison alike."""
    best: list[float] = [float("inf")] * len(fns)
    results: list[Any] = [None] * len(fns)
    for _ in range(max(1, repeat)):
        for i, fn in enumerate(fns):
            gc.collect()
            started = time.perf_counter()
            results[i] = fn()
            best[i] = min(best[i], time.perf_counter() - started)
    return best, results


def best_time(fn: Callable[[], Any], repeat: int) -> tuple[float, Any]:
    (seconds,), (result,) = best_times([fn], repeat)
    return seconds, result


def profile_call(fn: Callable[[], Any], label: str, limit: int = 15) -> None:
    """Run `fn` once under cProfile and print its most expensive functions by own time."""
    profiler = cProfile.Profile()
    profiler.runcall(fn)
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(limit)
    print(f"\n--- profile: {label} ---\n{out.getvalue()}")


@dataclass
class Result:
    """One figure: our rate beside a baseline's rate on the same input, and the team's aim."""

    name: str
    corpus: str
    units: int  # documents or tokens processed per run
    unit: str  # "docs/s", "tokens/s", ...
    ours: float
    baseline: str
    baseline_rate: float | None
    aim: float | None = None  # minimum ours / baseline the team aims for
    note: str = ""

    @property
    def ratio(self) -> float | None:
        return self.ours / self.baseline_rate if self.baseline_rate else None

    def verdict(self) -> str:
        if self.ratio is None or self.aim is None:
            return ""
        return "meets" if self.ratio >= self.aim else "MISSES"


def rate(units: int, seconds: float) -> float:
    return units / seconds if seconds > 0 else float("inf")


def _fmt(value: float | None) -> str:
    if value is None:
        return "n/a"
    return f"{value:,.0f}" if value >= 100 else f"{value:,.2f}"


def print_table(title: str, results: list[Result]) -> None:
    """A Markdown table, so the figures paste straight into a README."""
    print(f"\n### {title}\n")
    print("| measurement | corpus | n | ours | baseline | baseline rate | ratio | aim |")
    print("|---|---|---:|---:|---|---:|---:|---|")
    for r in results:
        ratio = "n/a" if r.ratio is None else f"{r.ratio:.2f}x"
        aim = "" if r.aim is None else f">= {r.aim:g}x {r.verdict()}"
        print(
            f"| {r.name} | {r.corpus} | {r.units:,} | {_fmt(r.ours)} {r.unit} | {r.baseline} | "
            f"{_fmt(r.baseline_rate)} | {ratio} | {aim} |"
        )
    notes = [f"- {r.name}: {r.note}" for r in results if r.note]
    if notes:
        print("\n" + "\n".join(notes))


def print_json(bench: str, results: list[Result], **extra: Any) -> None:
    """All results as one JSON line, for scripts that track the figures over time."""
    rows = [asdict(r) | {"ratio": r.ratio} for r in results]
    print(json.dumps({"bench": bench, **extra, "results": rows}, sort_keys=True))
