"""The mixing loader beside the plain loader: batches/s on the same source-tagged shards.

Three corpora become three named sources (`prep.sources`, stages tokenize,pack, one worker);
the packed shards then feed `DistributedLoader.next_batch` (one stream of rows) and
`MixingLoader.next_batch` (each row's source chosen by the mixture, 0.5 / 0.3 / 0.2), taking
turns in each round. See bench/README.md for what the row means.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from common import Result, base_parser, best_times, corpus_file, data_dir, print_json, print_table, rate

MICRO_BATCH = 8
SEQ_LEN = 256
SOURCES = {"web": "english.jsonl", "multilingual": "multilingual.jsonl", "near": "neardup.jsonl"}
WEIGHTS = {"web": 0.5, "multilingual": 0.3, "near": 0.2}


def best_cpu_times(fns: list[Callable[[], object]], repeat: int) -> list[float]:
    """Fastest CPU seconds of this process for each of `fns`, in turns: unlike wall time, it does
    not count the time other work on a shared machine holds the core."""
    best = [float("inf")] * len(fns)
    for _ in range(max(1, repeat)):
        for i, fn in enumerate(fns):
            started = time.process_time()
            fn()
            best[i] = min(best[i], time.process_time() - started)
    return best


def main() -> None:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=2000, help="loader batches per timed run (default: 2000)")
    args = parser.parse_args()

    # Imported after parsing, so that --help answers at once.
    from pipeline.config import load_config
    from pipeline.prep import run_prep
    from training.data import DistributedLoader, PackedDataset, build_loader

    data = data_dir(args.data)
    sources = [{"name": name, "inputs": [str(corpus_file(data, corpus))]} for name, corpus in SOURCES.items()]
    config = load_config(
        None,
        [
            f"prep.sources={sources}",
            "prep.stages=[tokenize, pack]",
            "prep.workers=1",
            f"prep.pack.seq_len={SEQ_LEN}",
            f"train.micro_batch_size={MICRO_BATCH}",
            f"train.global_batch_size={MICRO_BATCH}",
            f"train.max_steps={args.batches}",
            f"train.mixture.weights={WEIGHTS}",
        ],
    )
    with tempfile.TemporaryDirectory(prefix="crucible-mix-bench-") as tmp:
        stats = run_prep(config.prep, Path(tmp), show_progress=False)
        dataset = PackedDataset(Path(tmp) / "shards", "train", seq_len=SEQ_LEN)
        mixing = build_loader(dataset, config, 0, 1)
        plain = DistributedLoader(dataset, micro_batch=MICRO_BATCH)
        for loader in (plain, mixing):
            loader.next_batch()  # the first touch of the memory-mapped shards stays out of the timing
        sides = [
            lambda: [plain.next_batch() for _ in range(args.batches)],
            lambda: [mixing.next_batch() for _ in range(args.batches)],
        ]
        (plain_seconds, mixing_seconds), _ = best_times(sides, args.repeat)
        plain_cpu, mixing_cpu = best_cpu_times(sides, args.repeat)
        shares = mixing.metrics()

    total = sum(v for k, v in shares.items() if k.endswith("/tokens"))
    realized = ", ".join(
        f"{name} {shares[f'mix/{name}/tokens'] / total:.3f} (target {w})" for name, w in WEIGHTS.items()
    )
    rows = {name: counts["train_sequences"] for name, counts in (stats.sources or {}).items()}
    results = [
        Result(
            f"loader: MixingLoader.next_batch ({MICRO_BATCH} x {SEQ_LEN}, 3 sources)",
            "the packed train shards",
            args.batches,
            "batches/s",
            rate(args.batches, mixing_seconds),
            "DistributedLoader.next_batch",
            rate(args.batches, plain_seconds),
            0.9,
            f"rows per source {rows}; token shares of all batches drawn: {realized}",
        ),
        Result(
            "the same, CPU seconds of this process (steadier on a shared machine)",
            "the packed train shards",
            args.batches,
            "batches/CPU-s",
            rate(args.batches, mixing_cpu),
            "DistributedLoader.next_batch",
            rate(args.batches, plain_cpu),
            0.9,
        ),
    ]
    print_table(f"Mixing loader (best of {args.repeat}; {os.cpu_count()} CPUs)", results)
    print_json("mix", results, repeat=args.repeat)


if __name__ == "__main__":
    main()
