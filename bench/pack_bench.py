"""Token throughput: tokenize+pack beside raw `encode_batch`, and the loader beside the trainer.

A byte-level BPE (vocab 8192) is trained on the corpus first. Crucible's tokenize and pack
steps then run through `run_prep` (stages tokenize,pack, that tokenizer given, one worker) on
the same already-clean corpus, and their in-task seconds are set beside `encode_batch` over the
same texts in this process. The packed shards then feed `DistributedLoader.next_batch`, whose
rate is set beside what the trainer consumes. See bench/README.md for what each row means.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Any

from common import (
    Result,
    base_parser,
    best_time,
    best_times,
    corpus_file,
    data_dir,
    print_json,
    print_table,
    rate,
    read_jsonl,
)

VOCAB = 8192
MICRO_BATCH = 8
SEQ_LEN = 256
# Tokens/s the trainer consumes: a 17M-parameter GPT at micro-batch 8 x seq 256 on the team's
# 2-core development CPU. Pass a measured rate with --trainer-tokens-per-s.
TRAINER_TOKENS_PER_S = 860.0


def main() -> None:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument(
        "--corpus", default="english.jsonl", help="clean JSONL corpus in --data (default: english.jsonl)"
    )
    parser.add_argument("--batches", type=int, default=500, help="loader batches per timed run (default: 500)")
    parser.add_argument(
        "--trainer-tokens-per-s",
        type=float,
        default=TRAINER_TOKENS_PER_S,
        help=f"the trainer's consumption rate to compare the loader with (default: {TRAINER_TOKENS_PER_S:g})",
    )
    args = parser.parse_args()

    # Imported after parsing, so that --help answers at once.
    from data_prep.pack import PackConfig
    from data_prep.tokenizer import TokenizerConfig, load_tokenizer, train_tokenizer
    from pipeline.config import PrepConfig
    from pipeline.prep import run_prep
    from training.data import DistributedLoader, PackedDataset

    source = corpus_file(data_dir(args.data), args.corpus)
    texts = [r["text"] for r in read_jsonl(source)]

    with tempfile.TemporaryDirectory(prefix="crucible-pack-bench-") as tmp:
        work = Path(tmp)
        started = time.perf_counter()
        tokenizer_path = work / "tokenizer.json"
        train_tokenizer(texts, TokenizerConfig(vocab_size=VOCAB)).save(str(tokenizer_path))
        train_seconds = time.perf_counter() - started

        config = PrepConfig(
            inputs=[source],
            stages=["tokenize", "pack"],
            workers=1,  # type: ignore[list-item]
            tokenizer=TokenizerConfig(path=tokenizer_path),
            pack=PackConfig(seq_len=SEQ_LEN),
        )
        runs: list[dict[str, Any]] = []
        # Each round runs the raw encoder, then the pipeline, so a change in load hits both alike.
        # A fresh tokenizer per round starts with a cold word cache, as a prep worker does.
        (raw_seconds, wall), (encodings, _) = best_times(
            [
                lambda: load_tokenizer(tokenizer_path).encode_batch(texts),
                lambda: runs.append(run_prep(config, work / f"prep-{len(runs)}", show_progress=False)),
            ],
            args.repeat,
        )
        tokens = sum(len(e.ids) for e in encodings)  # the texts' tokens; the EOD per document is not counted
        step_seconds, fastest = min(
            (r["tokens"]["tokenize_seconds"] + r["tokens"]["pack_seconds"], i) for i, r in enumerate(runs)
        )
        totals = runs[fastest]["tokens"]

        dataset = PackedDataset(work / f"prep-{fastest}" / "shards", "train", seq_len=SEQ_LEN)
        loader = DistributedLoader(dataset, micro_batch=MICRO_BATCH)
        loader.next_batch()  # the first touch of the memory-mapped shards stays out of the timing
        loader_seconds, _ = best_time(lambda: [loader.next_batch() for _ in range(args.batches)], args.repeat)

    baseline = "tokenizers encode_batch"
    batch_tokens = MICRO_BATCH * SEQ_LEN
    batches_per_s = rate(args.batches, loader_seconds)
    results = [
        Result(
            "tokenize+pack steps (in-task seconds)",
            args.corpus,
            tokens,
            "tokens/s",
            rate(tokens, step_seconds),
            baseline,
            rate(tokens, raw_seconds),
            0.8,
            f"tokenize {totals['tokenize_seconds']:.1f}s + pack {totals['pack_seconds']:.1f}s; "
            f"{totals['train_sequences']:,} train rows of {SEQ_LEN + 1}",
        ),
        Result(
            "tokenize+pack via run_prep, wall (read step, worker start, publish too)",
            args.corpus,
            tokens,
            "tokens/s",
            rate(tokens, wall),
            baseline,
            rate(tokens, raw_seconds),
            None,
            f"BPE training (vocab {VOCAB}) took {train_seconds:.1f}s, not counted",
        ),
        Result(
            f"loader: DistributedLoader.next_batch ({MICRO_BATCH} x {SEQ_LEN})",
            "the packed train shards",
            args.batches,
            "batches/s",
            batches_per_s,
            f"trainer at {args.trainer_tokens_per_s:g} tokens/s",
            args.trainer_tokens_per_s / batch_tokens,
            100,
            f"{batches_per_s * batch_tokens:,.0f} tokens/s served",
        ),
    ]
    print_table(f"Tokenize, pack and load (best of {args.repeat}; {os.cpu_count()} CPUs)", results)
    print_json("pack", results, repeat=args.repeat, trainer_tokens_per_s=args.trainer_tokens_per_s)


if __name__ == "__main__":
    main()
