"""Object storage: the training loader from S3 with a cold shard cache, and prep's read step from S3.

Both sides of each figure run in this process against a real S3 API on 127.0.0.1 (moto's server, as
in the tests): the loader's rate is set beside the trainer's consumption rate (it must stay well ahead:
aim 10x), prep's read from S3 beside the same read from local files. A local server measures our
overhead (requests, hashing, caching), not a cloud network's bandwidth.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

from common import Result, base_parser, best_times, corpus_file, data_dir, print_json, print_table, rate
from pack_bench import MICRO_BATCH, SEQ_LEN, TRAINER_TOKENS_PER_S

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from s3_server import S3Server  # noqa: E402


def main() -> None:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--corpus", default="english.jsonl", help="JSONL corpus in --data (default: english.jsonl)")
    parser.add_argument(
        "--trainer-tokens-per-s",
        type=float,
        default=TRAINER_TOKENS_PER_S,
        help=f"the trainer's consumption rate (default: {TRAINER_TOKENS_PER_S:g})",
    )
    args = parser.parse_args()

    from data_prep.readers import ReadConfig, plan_shards, read_shard
    from pipeline.config import load_config
    from pipeline.ground import storage
    from pipeline.prep import run_prep
    from training.config import ShardCacheConfig
    from training.data import DistributedLoader, PackedDataset
    from training.shard_cache import ShardCache

    source = corpus_file(data_dir(args.data), args.corpus)
    server = S3Server()
    server.start()
    os.environ.update(server.env)
    try:
        server.make_bucket("bench")
        with tempfile.TemporaryDirectory(prefix="crucible-cloud-bench-") as tmp:
            work = Path(tmp)
            config = load_config(
                None,
                [
                    "prep.stages=[tokenize, pack]",
                    "prep.tokenizer.vocab_size=4096",
                    f"prep.pack.seq_len={SEQ_LEN}",
                    "prep.pack.max_shard_mb=0.1",
                    "prep.workers=1",
                ],
            )
            config.prep.inputs = [source]
            run_prep(config.prep, work / "prep", show_progress=False)
            server.upload_folder(work / "prep", "s3://bench/prep")
            storage.upload(source, f"s3://bench/inputs/{source.name}")
            remote_shards = "s3://bench/prep/shards"
            rows = PackedDataset(work / "prep" / "shards", "train").offsets[-1]
            batches = int(rows // MICRO_BATCH)

            def cold_loader(round_: list[int] = [0]) -> int:
                round_[0] += 1
                cache = ShardCache(ShardCacheConfig(folder=work / f"cache-{round_[0]}"))
                dataset = PackedDataset(cache.view(remote_shards), "train", remote=remote_shards, cache=cache)
                loader = DistributedLoader(dataset, MICRO_BATCH)
                for _ in range(batches):
                    loader.next_batch()
                cache.close()
                return len(dataset.entries)

            def read_all(inputs: list) -> int:
                return sum(
                    batch.table.num_rows
                    for shard in plan_shards(inputs, 4 << 20)
                    for batch in read_shard(shard, ReadConfig(), 1000)
                )

            (loader_s, local_read_s, remote_read_s), (shards, local_docs, remote_docs) = best_times(
                [cold_loader, lambda: read_all([source]), lambda: read_all([f"s3://bench/inputs/{source.name}"])],
                args.repeat,
            )
    finally:
        server.kill()
    assert local_docs == remote_docs
    tokens = batches * MICRO_BATCH * SEQ_LEN
    results = [
        Result(
            f"loader from S3, cold cache ({shards} shards downloaded, hashed)",
            args.corpus,
            tokens,
            "tokens/s",
            rate(tokens, loader_s),
            f"trainer at {args.trainer_tokens_per_s:g} tokens/s",
            args.trainer_tokens_per_s,
            10,
            f"one pass over {int(rows):,} rows of {SEQ_LEN + 1}",
        ),
        Result(
            "prep read step from S3 (ranged GETs)",
            args.corpus,
            remote_docs,
            "docs/s",
            rate(remote_docs, remote_read_s),
            "the same read from a local file",
            rate(local_docs, local_read_s),
            None,
        ),
    ]
    print_table(f"Object storage (moto S3 on 127.0.0.1; best of {args.repeat}; {os.cpu_count()} CPUs)", results)
    print_json("cloud", results, repeat=args.repeat, trainer_tokens_per_s=args.trainer_tokens_per_s)


if __name__ == "__main__":
    main()
