"""Data prep at growing corpus sizes: per-step throughput and the peak memory of each step's largest task.

For each N (25k, 100k, 400k documents; 1.6M with --large) it generates a corpus from real
sentences with exact and near duplicates planted at known rates, runs prep (normalize,
exact_dedup, minhash_dedup) with the local executor and reads every task's CPU seconds and peak
RSS from its marker (or, with --rerun-rss, reruns task 0 of every step in a process of its own).
It fits each step's largest peak RSS against N and projects it to 100M and 1B documents; with
more than two sizes it also sets the largest against the projection of the smaller ones, and it compares the
signature kernel with `rensa` on the same texts. Throughput is given per wall second of the tasks
and per CPU second (user + sys of the processes that ran them, from each task's marker): the
second moves far less with the load of a shared machine, so its ratio between sizes shows the
scaling. First it times the loader's start-up over 10,000 small shard files. Nothing is asserted;
see bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from common import base_parser, corpus_file, data_dir, read_jsonl

from data_prep.minhash.config import MinHashConfig
from pipeline.ground.layout import PrepFolder
from pipeline.prep_stats import read_prep_stats

REPO = Path(__file__).resolve().parents[1]
STAGES = ["normalize", "exact_dedup", "minhash_dedup"]
SIZES, LARGE = (25_000, 100_000, 400_000), 1_600_000
PROJECT_AT = (100_000_000, 1_000_000_000)
DOC_CHARS = 1200  # a document is sentences drawn at random until it is this long
MEMORY_AIM = 40  # bytes of peak RSS per corpus document, at most, for any global task
GLOBAL_STEPS = ("exact_dedup.find", "minhash_dedup.buckets", "minhash_dedup.clusters")


# ---- the corpus ----------------------------------------------------------------------------


def sentence_pool(data: Path) -> list[str]:
    """Real sentences (English prose) to build documents from."""
    text = " ".join(r["text"] for r in read_jsonl(corpus_file(data, "english.jsonl")))
    sentences = [s.strip() for s in re.split(r"(?<=[.!?])\s+", " ".join(text.split()))]
    return [s for s in sentences if 40 <= len(s) <= 400]


def near_copy(text: str, rng: np.random.Generator, edits: float = 0.015) -> str:
    """A near duplicate: about `edits` of the words replaced (word 5-gram Jaccard ~0.85)."""
    words = text.split(" ")
    for i in rng.choice(len(words), max(1, int(len(words) * edits)), replace=False):
        words[i] = words[(i + 7) % len(words)]
    return " ".join(words)


def write_corpus(path: Path, n: int, pool: list[str], exact: float, near: float, seed: int = 0) -> dict[str, int]:
    """N documents as JSONL: fresh ones, and at the given rates exact and near copies of earlier ones."""
    rng = np.random.default_rng(seed)
    kinds = rng.choice(3, size=n, p=[1 - exact - near, exact, near])
    kinds[0] = 0
    texts: list[str] = []
    with open(path, "w", encoding="utf-8") as handle:
        for i in range(n):
            if kinds[i] == 0:
                parts, size = [], 0
                while size < DOC_CHARS:
                    parts.append(pool[rng.integers(len(pool))])
                    size += len(parts[-1]) + 1
                text = " ".join(parts)
            else:
                source = texts[rng.integers(len(texts))]
                text = source if kinds[i] == 1 else near_copy(source, rng)
            texts.append(text)
            handle.write(json.dumps({"id": f"d{i:09d}", "text": text}) + "\n")
    return {"exact_planted": int((kinds == 1).sum()), "near_planted": int((kinds == 2).sum())}


# ---- running and measuring -------------------------------------------------------------------

_MEASURED = """
import runpy, sys
sys.argv = ["pipeline", *sys.argv[1:]]
try:
    runpy.run_module("pipeline", run_name="__main__")
except SystemExit as exit:
    if exit.code:
        raise
status = open("/proc/self/status").read()
print("VmHWM", status.split("VmHWM:")[1].split()[0])
"""


def peak_rss_mb(args: list[str]) -> float:
    """Run `python -m pipeline ARGS`; its peak resident set size in MB. Read from VmHWM, the
    high-water mark of the process's own memory map (ru_maxrss would also count the parent's
    memory at fork time)."""
    result = subprocess.run([sys.executable, "-c", _MEASURED, *args], cwd=REPO, capture_output=True, text=True)
    if result.returncode:
        raise SystemExit(f"{' '.join(args)} failed: {result.stderr[-2000:]}")
    return int(result.stdout.rsplit("VmHWM", 1)[1].split()[0]) / 1024


def run_prep(folder: Path, n: int, prep: dict[str, Any]) -> tuple[Path, Path, float, Any, float]:
    """Write the config `{"prep": prep}` for size N and run prep with it: the config file, the output
    folder, the wall seconds, the plan of its steps and the driver process's own peak RSS in MB (its
    pool's workers are processes of their own, measured by their task markers)."""
    from pipeline.config import load_config
    from pipeline.prep_graph import build_prep_graph

    config = folder / f"config-{n}.yaml"
    config.write_text(yaml.safe_dump({"prep": prep}))
    output = folder / f"prep-{n}"
    started = time.perf_counter()
    driver_rss = peak_rss_mb(["prep", "--config", str(config), "--output", str(output), "--no-progress"])
    return config, output, time.perf_counter() - started, build_prep_graph(load_config(config).prep), driver_rss


def run_size(folder: Path, n: int, pool: list[str], args: Any) -> dict[str, Any]:
    corpus = folder / f"corpus-{n}.jsonl"
    planted = write_corpus(corpus, n, pool, args.exact, args.near)
    prep = {
        "inputs": [str(corpus)],
        "stages": STAGES,
        "workers": args.workers,
        "shard_mb": args.shard_mb,
        "exact_dedup": {"find_shards_per_task": args.shards_per_task},
        "minhash_dedup": {"bucket_shards_per_task": args.shards_per_task, "shingle_hash": args.shingle_hash},
    }
    if not args.split_bands:  # dedupe's bands alone: split groups tie only duplicates
        prep["minhash_dedup"]["split_group_threshold"] = MinHashConfig().threshold
    config, output, wall, plan, driver_rss = run_prep(folder, n, prep)
    work, rows, previous_end = PrepFolder(output).work, [], None
    for step in plan.steps:
        markers = [json.loads((work / step.name / f"done-{t:05d}.json").read_text()) for t in range(step.n_tasks)]
        ends = [(work / step.name / f"done-{t:05d}.json").stat().st_mtime for t in range(step.n_tasks)]
        seconds = sum(m["seconds"] for m in markers)
        cpu = sum(m["cpu_seconds"] for m in markers)
        # a step's wall time: from the previous step's last marker to its own last one
        step_wall = max(ends) - previous_end if previous_end is not None else seconds / args.workers
        previous_end = max(ends)
        if args.rerun_rss:
            (work / step.name / "done-00000.json").unlink()
            rss = peak_rss_mb(
                ["prep-task", "--config", str(config), "--output", str(output), "--step", step.name, "--task", "0"]
            )
        else:  # every task's own peak, as its marker records it
            rss = max(m["peak_rss_mb"] for m in markers)
        rows.append(
            {
                "step": step.name,
                "stage": step.stage,
                "tasks": step.n_tasks,
                "wall_s": round(step_wall, 1),
                "task_s": round(seconds, 1),
                "docs_per_s_core": round(n / seconds) if seconds else None,
                "cpu_s": round(cpu, 2),
                "docs_per_cpu_s": round(n / cpu) if cpu else None,
                "peak_rss_mb": round(rss, 1),
                "task_cpu_s": [m["cpu_seconds"] for m in markers],
                "task_peak_rss_mb": [m.get("peak_rss_mb") for m in markers],
            }
        )
    stats = read_prep_stats(output)
    removed = {row.name: sum(row.dropped.values()) for row in stats.stages}
    # publishing (tasks without markers, then the manifest and stats.json): from the last step's end to stats.json
    publish_s = PrepFolder(output).local_stats.stat().st_mtime - previous_end
    return {
        "n": n,
        "wall_s": round(wall, 1),
        "steps": rows,
        "removed": removed,
        "driver_peak_rss_mb": round(driver_rss),
        "publish_s": round(publish_s, 1),
        **planted,
    }


def run_arguments(parser: argparse.ArgumentParser, range_tasks: str) -> None:
    """The options of how prep runs each corpus; `range_tasks` names the tasks --shards-per-task sizes."""
    parser.add_argument("--work", type=Path, default=None, help="folder for corpora and runs (default: a temp folder)")
    parser.add_argument("--workers", type=int, default=2, help="prep workers (default 2)")
    parser.add_argument("--shard-mb", type=float, default=4.0, help="input shard size (default 4)")
    parser.add_argument("--shards-per-task", type=int, default=8, help=f"shards per {range_tasks} (default 8)")


def fit(sizes: list[int], values: list[float]) -> tuple[float, float]:
    """Least-squares (intercept MB, slope bytes per document) of peak RSS against N."""
    slope, intercept = np.polyfit(np.array(sizes, float), np.array(values, float) * 2**20, 1)
    return intercept / 2**20, slope


# ---- loader start-up with many shard files ---------------------------------------------------

STARTUP_ROWS, STARTUP_SEQ = 4, 64  # rows per shard file and their seq_len: start-up cost is per file


def write_many_shards(folder: Path, count: int) -> None:
    """`count` train shard files of a few rows each (and two val shards), with their manifest, as prep writes them."""
    from data_prep.shards import ShardManifest, SplitIndex, TokenizerRecord, write_manifest, write_shard
    from pipeline.ground.hashing import file_sha256

    rng = np.random.default_rng(0)
    splits = {}
    for split, files in (("train", count), ("val", 2)):
        entries = [
            write_shard(
                folder / split / f"{split}-{i:06d}.arrow",
                rng.integers(2, 4096, size=(STARTUP_ROWS, STARTUP_SEQ + 1)),
                [np.array([0], np.int32)] * STARTUP_ROWS,
                4096,
            )
            for i in range(files)
        ]
        splits[split] = SplitIndex(shards=entries, sequences=files * STARTUP_ROWS)
    (folder / "tokenizer.json").write_text("{}")
    write_manifest(
        folder,
        ShardManifest(
            seq_len=STARTUP_SEQ,
            row_width=STARTUP_SEQ + 1,
            packing="concat",
            token_type="uint16",
            tokenizer=TokenizerRecord(
                file="tokenizer.json",
                sha256=file_sha256(folder / "tokenizer.json"),
                vocab_size=4096,
                eod_id=0,
                pad_id=1,
            ),
            splits=splits,
        ),
    )


def bytes_read() -> int:
    """Bytes this process has read through read() calls so far (memory-mapped pages are not counted)."""
    return int(Path("/proc/self/io").read_text().split("rchar:")[1].split()[0])


def loader_startup(folder: Path, count: int) -> dict[str, float]:
    """Seconds from nothing to the first batch over `count` shard files: the loader alone
    (dataset + loader + first batch), then what the trainer does with the data before its first
    step (manifest, its hash, the tokenizer's hash, train and val datasets, the configured loader,
    the validation loader and a first batch of each), with the bytes each read."""
    from data_prep.shards import read_manifest
    from pipeline.config import load_config
    from pipeline.ground.hashing import file_sha256
    from training.data import (
        DistributedLoader,
        PackedDataset,
        build_loader,
        manifest_hash,
    )

    write_many_shards(folder, count)
    read_before, started = bytes_read(), time.perf_counter()
    DistributedLoader(PackedDataset(folder, "train", STARTUP_SEQ), 8, seed=0).next_batch()
    loader_s, loader_bytes = time.perf_counter() - started, bytes_read() - read_before

    config = load_config(None, ["train.global_batch_size=8", "train.micro_batch_size=8"])
    read_before, started = bytes_read(), time.perf_counter()
    manifest = read_manifest(folder)
    manifest_hash(folder)
    tokenizer_sha = file_sha256(folder / "tokenizer.json")
    train = PackedDataset(folder, "train", STARTUP_SEQ, tokenizer_sha, manifest=manifest)
    val = PackedDataset(folder, "val", STARTUP_SEQ, tokenizer_sha, manifest=manifest)
    build_loader(train, config, 0, 1).next_batch()
    DistributedLoader(val, 8, seed=0, rows_per_step=8).next_batch()
    trainer_s, trainer_bytes = time.perf_counter() - started, bytes_read() - read_before
    return {
        "shards": count,
        "loader_s": round(loader_s, 3),
        "loader_bytes_read": loader_bytes,
        "trainer_data_s": round(trainer_s, 3),
        "trainer_bytes_read": trainer_bytes,
    }


# ---- signatures beside rensa -----------------------------------------------------------------


def signature_rates(texts: list[str], repeat: int) -> dict[str, dict[str, Any]]:
    """Per side, one core: docs/s of its fastest round, and its ratio to rensa (best against best,
    and the range of the per-round ratios). Sides: our kernel with each shingle hash, and rensa's
    RMinHash fed shingles built in Python, the same 128 permutations' worth of work on the same
    texts. Every side runs on one thread, so it is timed in CPU seconds of this process: time
    the scheduler gives other processes of a shared machine counts against no side. Each side
    runs once untimed first (tables, caches); then a round runs every side once, in turn."""
    from data_prep.minhash.config import MinHashConfig
    from data_prep.minhash.kernels import signatures

    try:
        from rensa import RMinHash
    except ImportError:
        RMinHash = None  # noqa: N806
    word = re.compile(r"\w+")

    def rensa_side() -> None:
        for text in texts:
            words = [w.lower() for w in word.findall(text)]
            shingles = [" ".join(words[i : i + 5]) for i in range(max(len(words) - 4, 1))] if words else []
            sketch = RMinHash(num_perm=128, seed=1)
            sketch.update(shingles)
            sketch.digest()

    sides = {
        scheme: (lambda scheme=scheme: signatures(texts, MinHashConfig(shingle_hash=scheme)))
        for scheme in ("fast", "datasketch")
    }
    if RMinHash is not None:
        sides["rensa"] = rensa_side
    for side in sides.values():
        side()
    rounds: list[dict[str, float]] = []
    for _ in range(repeat):
        rounds.append({})
        for name, side in sides.items():
            started = time.process_time()
            side()
            rounds[-1][name] = time.process_time() - started
    rates: dict[str, dict[str, Any]] = {}
    for name in sides:
        rates[name] = {"docs_per_s": round(len(texts) / min(r[name] for r in rounds))}
        if "rensa" in sides:
            per_round = [r["rensa"] / r[name] for r in rounds]
            best = min(r["rensa"] for r in rounds) / min(r[name] for r in rounds)
            rates[name].update(ratio=round(best, 2), ratio_range=[round(min(per_round), 2), round(max(per_round), 2)])
    return rates


def report_signatures(rates: dict[str, dict[str, Any]], n_texts: int) -> None:
    print(
        f"signatures, one core, 128 permutations, word 5-grams, {n_texts:,} documents "
        f"(aim: the default, fast, >= 1.0x rensa):"
    )
    for name, rate in rates.items():
        ratio = (
            f", {rate['ratio']:.2f}x rensa ({rate['ratio_range'][0]:.2f}-{rate['ratio_range'][1]:.2f} per round)"
            if "ratio" in rate and name != "rensa"
            else ""
        )
        print(f"  {name}: {rate['docs_per_s']:,} docs/s{ratio}")


# ---- report --------------------------------------------------------------------------------------


def cpu_throughput(results: list[dict[str, Any]]) -> None:
    """Docs per CPU second (user + sys of every task of a stage, all threads) at each size, and the
    ratio of the largest size to the smallest: linear scaling keeps it near 1. CPU time does not
    count time a core spent on other processes, so it moves far less with the load than wall time."""
    sizes = [r["n"] for r in results]
    stages = list(dict.fromkeys(p["stage"] for p in results[0]["steps"]))
    print(
        f"\n| stage | CPU s at {' / '.join(f'{n:,}' for n in sizes)} | docs per CPU s | {sizes[-1]:,} vs {sizes[0]:,} |"
    )
    print("|---|---|---|---:|")
    for name, members in [*((s, [s]) for s in stages), ("whole prep", stages)]:
        cpu = [sum(p["cpu_s"] for p in r["steps"] if p["stage"] in members) for r in results]
        rates = [n / c for n, c in zip(sizes, cpu)]
        print(
            f"| {name} | {' / '.join(f'{c:,.1f}' for c in cpu)} | {' / '.join(f'{v:,.0f}' for v in rates)} | "
            f"{rates[-1] / rates[0]:.2f}x |"
        )


def report(results: list[dict[str, Any]], rates: dict[str, dict[str, Any]], signature_docs: int) -> None:
    sizes = [r["n"] for r in results]
    print(
        "\n| step | tasks at " + " / ".join(f"{n:,}" for n in sizes) + " | wall s | docs/s per core | "
        "peak RSS of largest task, MB | slope B/doc | projected at 100M | at 1B |"
    )
    print("|---|---|---|---|---|---:|---:|---:|")
    worst_global = 0.0
    for i, step in enumerate(results[0]["steps"]):
        name = step["step"]
        per = [r["steps"][i] for r in results]
        intercept, slope = fit(sizes, [p["peak_rss_mb"] for p in per])
        projected = [(intercept + slope * n / 2**20) / 1024 for n in PROJECT_AT]
        if name in GLOBAL_STEPS:
            worst_global = max(worst_global, slope)
        cells = [
            " / ".join(f"{p[key]:,}" for p in per) for key in ("tasks", "wall_s", "docs_per_s_core", "peak_rss_mb")
        ]
        print(f"| {name} | {' | '.join(cells)} | {slope:,.1f} | {projected[0]:,.1f} GB | {projected[1]:,.1f} GB |")
    print(
        "\n| N | prep wall s | exact planted | exact removed | near planted | near removed | stage docs/s per core "
        "(normalize, exact_dedup, minhash_dedup) |"
    )
    print("|---:|---:|---:|---:|---:|---:|---|")
    stage_rates = []
    for r in results:
        per_stage = {s: r["n"] / sum(p["task_s"] for p in r["steps"] if p["stage"] == s) for s in STAGES}
        stage_rates.append(sum(r["n"] for _ in STAGES) / sum(r["n"] / v for v in per_stage.values()))
        print(
            f"| {r['n']:,} | {r['wall_s']} | {r['exact_planted']:,} | {r['removed'].get('exact_dedup', 0):,} | "
            f"{r['near_planted']:,} | {r['removed'].get('minhash_dedup', 0):,} | "
            f"{', '.join(f'{v:,.0f}' for v in per_stage.values())} |"
        )
    cpu_throughput(results)
    print("\n| N | driver peak RSS, MB | publish s |\n|---:|---:|---:|")
    for r in results:
        print(f"| {r['n']:,} | {r['driver_peak_rss_mb']:,} | {r['publish_s']:,} |")
    print(
        f"\nlargest global-task memory slope: {worst_global:.1f} B/doc (aim <= {MEMORY_AIM}): "
        f"{'meets' if worst_global <= MEMORY_AIM else 'MISSES'}"
    )
    print(
        f"three-stage wall throughput per core at {sizes[-1]:,} / at {sizes[0]:,}: "
        f"{stage_rates[-1] / stage_rates[0]:.2f}x (aim >= 0.9x)"
    )
    report_signatures(rates, signature_docs)
    if len(results) > 2:
        check_largest(results)
    print(json.dumps({"bench": "scale", "results": results, "signatures": rates}))


def check_largest(results: list[dict[str, Any]]) -> None:
    """The largest size against the projection of the smaller ones: per step, the peak RSS of its largest
    task (a straight line in N) and its CPU seconds (proportional to N, from the largest smaller size)."""
    smaller, largest = results[:-1], results[-1]
    sizes, n = [r["n"] for r in smaller], largest["n"]
    print(
        f"\n| step | tasks at {n:,} | largest task's peak RSS, MB: projected / measured | ratio | "
        f"CPU s: projected / measured | ratio |"
    )
    print("|---|---:|---|---:|---|---:|")
    for i, step in enumerate(largest["steps"]):
        intercept, slope = fit(sizes, [r["steps"][i]["peak_rss_mb"] for r in smaller])
        rss = intercept + slope * n / 2**20
        cpu = smaller[-1]["steps"][i]["cpu_s"] * n / smaller[-1]["n"]
        print(
            f"| {step['step']} | {step['tasks']:,} | {rss:,.0f} / {step['peak_rss_mb']:,.0f} | "
            f"{step['peak_rss_mb'] / rss:.2f} | {cpu:,.1f} / {step['cpu_s']:,.1f} | {step['cpu_s'] / cpu:.2f} |"
        )


def main() -> None:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument(
        "--sizes",
        type=lambda s: [int(x) for x in s.split(",") if x],
        default=list(SIZES),
        help="corpus sizes in documents (default 25000,100000,400000; empty: none)",
    )
    parser.add_argument(
        "--startup-shards",
        type=int,
        default=10_000,
        help="shard files for the loader start-up measurement (default 10000; 0: skip it)",
    )
    parser.add_argument("--large", action="store_true", help=f"also run {LARGE:,} documents")
    parser.add_argument("--exact", type=float, default=0.02, help="rate of planted exact copies (default 0.02)")
    parser.add_argument("--near", type=float, default=0.05, help="rate of planted near copies (default 0.05)")
    run_arguments(parser, "exact find task and per bucket task of a band")
    parser.add_argument("--shingle-hash", default="fast", choices=["fast", "datasketch"])
    parser.add_argument(
        "--split-bands",
        action="store_true",
        help="also key documents by the split-group bands (default: dedupe's bands alone; the "
        "generated documents share sentences, so the pairs those bands propose grow as N^2)",
    )
    parser.add_argument("--signature-docs", type=int, default=8000, help="documents for the rensa comparison")
    parser.add_argument("--signatures-only", action="store_true", help="only compare the signature kernel with rensa")
    parser.add_argument(
        "--rerun-rss",
        action="store_true",
        help="measure peak RSS by rerunning task 0 of each step alone (default: every task's own "
        "peak, from its marker)",
    )
    args = parser.parse_args()
    sizes = args.sizes + ([LARGE] if args.large else [])

    import tempfile

    pool = sentence_pool(data_dir(args.data))
    with tempfile.TemporaryDirectory(dir=args.work) as tmp:
        folder = Path(tmp)
        if args.startup_shards:
            startup = loader_startup(folder / "many-shards", args.startup_shards)
            print(
                f"loader start-up over {startup['shards']:,} shard files: {startup['loader_s']:.2f} s to the first "
                f"batch, {startup['loader_bytes_read'] / 2**20:,.1f} MiB read; the trainer's data start-up: "
                f"{startup['trainer_data_s']:.2f} s, {startup['trainer_bytes_read'] / 2**20:,.1f} MiB read "
                f"(aim < 5 s)",
                flush=True,
            )
            print(json.dumps({"bench": "scale", "startup": startup}), flush=True)
            subprocess.run(["rm", "-rf", str(folder / "many-shards")], check=True)
        if not sizes:
            return
        sample = folder / "signature-sample.jsonl"
        write_corpus(sample, args.signature_docs, pool, 0.0, 0.0, seed=1)
        rates = signature_rates([r["text"] for r in read_jsonl(sample)], args.repeat)
        if args.signatures_only:
            report_signatures(rates, args.signature_docs)
            print(json.dumps({"bench": "scale", "signatures": rates}))
            return
        results = []
        for n in sizes:
            results.append(run_size(folder, n, pool, args))
            print(f"N={n:,}: {results[-1]['wall_s']} s", file=sys.stderr, flush=True)
            for path in folder.glob(f"*-{n}*"):
                subprocess.run(["rm", "-rf", str(path)], check=True)
        report(results, rates, args.signature_docs)


if __name__ == "__main__":
    main()
