"""The Ray executor against the local one: whole-prep wall time on the same corpus with the same workers.

It generates a corpus with scale_bench's generator (real sentences, 2% exact and 5% near copies), runs
`crucible prep` on it with `--executor local`, then with `--executor ray` (a local Ray cluster of the
same number of CPUs, started by the run and counted in its time), and checks that both published the
same bytes. Nothing is asserted on time; see docs/benchmarks.md.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from common import base_parser, data_dir
from scale_bench import STAGES, sentence_pool, write_corpus

REPO = Path(__file__).resolve().parents[1]


def prep_seconds(config: Path, output: Path, executor: str) -> float:
    started = time.perf_counter()
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pipeline",
            "prep",
            "--config",
            str(config),
            "--output",
            str(output),
            "--no-progress",
            "--executor",
            executor,
        ],
        cwd=REPO,
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    return time.perf_counter() - started


def published_digest(output: Path) -> str:
    digest = hashlib.sha256()
    for folder in ("clean", "dropped", "quarantine", "shards", "tokenizer"):
        for path in sorted((output / folder).rglob("*")):
            if path.is_file():
                digest.update(path.relative_to(output).as_posix().encode() + path.read_bytes())
    return digest.hexdigest()


def main() -> None:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=400_000, help="corpus size in documents (default 400000)")
    parser.add_argument("--workers", type=int, default=2, help="prep workers, and the Ray cluster's CPUs (default 2)")
    parser.add_argument("--shard-mb", type=float, default=4.0, help="input shard size (default 4)")
    parser.add_argument(
        "--work", type=Path, default=None, help="folder for the corpus and runs (default: a temp folder)"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.work) as tmp:
        folder = Path(tmp)
        corpus = folder / "corpus.jsonl"
        write_corpus(corpus, args.docs, sentence_pool(data_dir(args.data)), 0.02, 0.05)
        config = folder / "config.yaml"
        config.write_text(
            yaml.safe_dump(
                {
                    "prep": {
                        "inputs": [str(corpus)],
                        "stages": STAGES,
                        "workers": args.workers,
                        "shard_mb": args.shard_mb,
                    }
                }
            )
        )
        seconds = {executor: prep_seconds(config, folder / executor, executor) for executor in ("local", "ray")}
        same = published_digest(folder / "local") == published_digest(folder / "ray")
    ratio = seconds["local"] / seconds["ray"]
    print(
        f"{args.docs:,} documents, {args.workers} workers, stages {', '.join(STAGES)}: local {seconds['local']:.1f} s, "
        f"ray {seconds['ray']:.1f} s; ray's speed {ratio:.2f}x local's (aim >= 0.9x); same bytes: {same}"
    )
    print(
        json.dumps(
            {
                "bench": "executor",
                "docs": args.docs,
                "workers": args.workers,
                "seconds": seconds,
                "ratio": round(ratio, 3),
                "same_bytes": same,
            }
        )
    )


if __name__ == "__main__":
    main()
