"""The web cleaning stages at growing corpus sizes: docs/s and the peak memory of each step's largest task.

For each N (25k, 100k, 400k documents) it generates a crawl-like corpus from real sentences: pages of a
few paragraphs, each page of one of a few hundred sites whose footer paragraph all its pages carry, some
pages with a cookie notice, and a share of refetches of earlier pages under another spelling of the URL
with a later date. It runs prep (normalize, url_dedup, boilerplate) with the local executor, then reruns
task 0 of every step in a process of its own to read its peak RSS, as bench/scale_bench.py does: the
per-shard steps' shards are the same size and the range steps' ranges are equal slices of a uniform hash
space, so task 0 stands for the largest. A flat peak RSS across sizes shows memory per task does not grow
with the corpus. Nothing is asserted; see bench/README.md.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from common import base_parser, data_dir
from scale_bench import fit, peak_rss_mb, run_arguments, run_prep, sentence_pool

from data_prep.books import marker_file
from pipeline.ground.layout import PrepFolder

STAGES = ["normalize", "url_dedup", "boilerplate"]
SIZES = (25_000, 100_000, 400_000)
SITES = 500
COOKIE = (
    "We use cookies to improve your experience on our website. By browsing this website, you agree to our "
    "use of cookies."
)


def write_corpus(path: Path, n: int, pool: list[str], refetch: float, seed: int = 0) -> dict[str, int]:
    """N pages as JSONL (id, text, url, date): fresh pages, and at rate `refetch` a later fetch of an earlier
    page's URL spelled another way (a new text, as a page changes between fetches)."""
    rng = np.random.default_rng(seed)
    footers = [" ".join(pool[j] for j in rng.integers(len(pool), size=2)) for _ in range(SITES)]
    urls: list[str] = []
    with open(path, "w", encoding="utf-8") as handle:
        for i in range(n):
            site = int(rng.integers(SITES))
            paragraphs = [" ".join(pool[j] for j in rng.integers(len(pool), size=3)) for _ in range(rng.integers(3, 6))]
            if rng.random() < 0.3:
                paragraphs.insert(0, COOKIE)
            if urls and rng.random() < refetch:
                url = urls[rng.integers(len(urls))].replace("https://", "HTTP://") + "?utm_source=feed"
            else:
                url = f"https://site{site}.example/page/{i}"
                urls.append(url)
            text = "\n\n".join([*paragraphs, footers[site]])
            record = {"id": f"p{i:09d}", "text": text, "url": url, "date": f"2024-{1 + i * 12 // n:02d}-01"}
            handle.write(json.dumps(record) + "\n")
    return {"refetches": n - len(urls)}


def run_size(folder: Path, n: int, pool: list[str], args: Any) -> dict[str, Any]:
    corpus = folder / f"corpus-{n}.jsonl"
    planted = write_corpus(corpus, n, pool, args.refetch)
    prep = {
        "inputs": [str(corpus)],
        "stages": STAGES,
        "workers": args.workers,
        "shard_mb": args.shard_mb,
        "read": {"keep_fields": ["url", "date"]},
        "url_dedup": {"find_shards_per_task": args.shards_per_task},
        "boilerplate": {"count_shards_per_task": args.shards_per_task, "min_docs": args.min_docs},
    }
    config, output, wall, plan, _ = run_prep(folder, n, prep)
    rows = []
    for step in plan.steps:
        markers = [
            json.loads(marker_file(PrepFolder(output).work, step.name, t).read_text()) for t in range(step.n_tasks)
        ]
        seconds, cpu = sum(m["seconds"] for m in markers), sum(m["cpu_seconds"] for m in markers)
        marker_file(PrepFolder(output).work, step.name, 0).unlink()
        rss = peak_rss_mb(
            ["prep-task", "--config", str(config), "--output", str(output), "--step", step.name, "--task", "0"]
        )
        rows.append(
            {
                "step": step.name,
                "stage": step.stage,
                "tasks": step.n_tasks,
                "docs_per_s": round(n / seconds) if seconds else None,
                "docs_per_cpu_s": round(n / cpu) if cpu else None,
                "peak_rss_mb": round(rss, 1),
            }
        )
    stats = json.loads(PrepFolder(output).local_stats.read_text())
    stages = {row["name"]: row for row in stats["stages"]}
    return {
        "n": n,
        "wall_s": round(wall, 1),
        "steps": rows,
        **planted,
        "duplicate_url": stages["url_dedup"]["dropped"].get("duplicate_url", 0),
        "boilerplate": stages["boilerplate"].get("tally", {}).get("boilerplate", {}),
    }


def report(results: list[dict[str, Any]]) -> None:
    sizes = [r["n"] for r in results]
    print(
        "\n| step | tasks at " + " / ".join(f"{n:,}" for n in sizes) + " | docs/s per task-second | docs per CPU s | "
        "peak RSS of largest task, MB | slope B/doc |"
    )
    print("|---|---|---|---|---|---:|")
    for i, step in enumerate(results[0]["steps"]):
        per = [r["steps"][i] for r in results]
        _, slope = fit(sizes, [p["peak_rss_mb"] for p in per])
        cells = [
            " / ".join(f"{p[key]:,}" for p in per) for key in ("tasks", "docs_per_s", "docs_per_cpu_s", "peak_rss_mb")
        ]
        print(f"| {step['step']} | {' | '.join(cells)} | {slope:,.1f} |")
    print("\n| N | prep wall s | refetches planted | duplicate_url dropped | documents changed | units removed |")
    print("|---:|---:|---:|---:|---:|---:|")
    for r in results:
        print(
            f"| {r['n']:,} | {r['wall_s']} | {r['refetches']:,} | {r['duplicate_url']:,} | "
            f"{r['boilerplate'].get('documents_changed', 0):,} | {r['boilerplate'].get('units_removed', 0):,} |"
        )
    print(json.dumps({"bench": "web", "results": results}))


def main() -> None:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument(
        "--sizes",
        type=lambda s: [int(x) for x in s.split(",") if x],
        default=list(SIZES),
        help="corpus sizes in documents (default 25000,100000,400000)",
    )
    parser.add_argument("--refetch", type=float, default=0.1, help="rate of refetched pages (default 0.1)")
    parser.add_argument("--min-docs", type=int, default=5, help="boilerplate.min_docs (default 5)")
    run_arguments(parser, "url_dedup find task and per boilerplate count task")
    args = parser.parse_args()
    pool = sentence_pool(data_dir(args.data))
    with tempfile.TemporaryDirectory(dir=args.work) as tmp:
        results = []
        for n in args.sizes:
            results.append(run_size(Path(tmp), n, pool, args))
            print(f"N={n:,}: {results[-1]['wall_s']} s", file=sys.stderr, flush=True)
            for path in Path(tmp).glob(f"*-{n}*"):
                shutil.rmtree(path) if path.is_dir() else path.unlink()
        report(results)


if __name__ == "__main__":
    main()
