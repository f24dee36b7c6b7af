"""The four steps of MinHash near-dedupe, each a task function over the arrays `kernels` computes.

signatures (per shard) -> buckets (one task per LSH band) -> clusters (one task) -> filter (per
shard). Steps hand each other .npy arrays and one removals table, all in their own folders.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq

from data_prep.books import run_removals_filter, source_column, source_file, source_priorities, write_removals
from data_prep.minhash import kernels as minhash
from data_prep.minhash.config import MinHashConfig
from data_prep.stage import ID, TEXT, StageSpec, StepSpec, TaskContext, single
from pipeline.ground.atomic import write_npy

SIGNATURES, BUCKETS, CLUSTERS = "minhash_dedup.signatures", "minhash_dedup.buckets", "minhash_dedup.clusters"


def _signature_file(work: Path, task: int) -> Path:
    return work / SIGNATURES / f"signatures-{task:05d}.npy"


def _chars_file(work: Path, task: int) -> Path:
    return work / SIGNATURES / f"chars-{task:05d}.npy"


def _pairs_file(work: Path, band: int) -> Path:
    return work / BUCKETS / f"pairs-{band:05d}.npy"


def run_signatures(ctx: TaskContext) -> dict[str, Any]:
    """Sign one shard's documents and record their lengths (the keep rule's input)."""
    texts = pq.read_table(source_file(ctx), columns=[TEXT])[TEXT]
    write_npy(_signature_file(ctx.work, ctx.task), minhash.signatures(texts.to_pylist(), ctx.settings))
    write_npy(_chars_file(ctx.work, ctx.task), pc.utf8_length(texts).to_numpy(zero_copy_only=False).astype(np.int64))
    ctx.report(len(texts))
    return {}


def run_buckets(ctx: TaskContext) -> dict[str, Any]:
    """Candidate pairs of one LSH band over all documents."""
    _, rows = ctx.settings.band_layout()
    keys = [minhash.band_keys(np.load(_signature_file(ctx.work, i), mmap_mode="r"), ctx.task, rows)
            for i in range(len(ctx.shards))]
    all_keys = np.concatenate(keys) if keys else np.zeros(0, np.uint64)
    pairs = minhash.candidate_pairs(all_keys, np.arange(len(all_keys), dtype=np.int64), ctx.settings.max_bucket_size)
    write_npy(_pairs_file(ctx.work, ctx.task), pairs)
    ctx.report(len(all_keys))
    return {"tally": {"minhash_dedup": {"band_pairs": int(len(pairs))}}}


def run_clusters(ctx: TaskContext) -> dict[str, Any]:
    """Verify candidate pairs, join them into clusters and keep one document per cluster."""
    cfg, n = ctx.settings, len(ctx.shards)
    bands, _ = cfg.band_layout()
    pairs = np.concatenate([np.load(_pairs_file(ctx.work, b)) for b in range(bands)])
    pairs = np.unique(pairs, axis=0) if len(pairs) else pairs.reshape(0, 2)
    sigs = np.concatenate([np.load(_signature_file(ctx.work, i)) for i in range(n)])
    estimates = minhash.estimate_jaccard(sigs[pairs[:, 0]], sigs[pairs[:, 1]])
    edges = pairs[estimates >= cfg.threshold]
    roots = minhash.clusters(len(sigs), edges)
    chars = np.concatenate([np.load(_chars_file(ctx.work, i)) for i in range(n)])
    ids = source_column(ctx, ID)
    remove_mask, keepers = minhash.choose_removals(roots, chars, ids, source_priorities(ctx))
    removed = np.flatnonzero(remove_mask)
    jaccard = minhash.estimate_jaccard(sigs[removed], sigs[keepers[removed]])
    write_removals(ctx, removed, keepers[removed], ids, jaccard)
    ctx.report(len(sigs))
    return {"tally": {"minhash_dedup": {"candidate_pairs": int(len(pairs)), "verified_pairs": int(len(edges)),
                                        "removed": int(len(removed))}}}


def run_filter(ctx: TaskContext) -> dict[str, Any]:
    return run_removals_filter(ctx, CLUSTERS, "near_duplicate")


def _one_per_band(config: Any, n_shards: int) -> int:
    return config.minhash_dedup.band_layout()[0]


def _band_keys(docs: int, bands: int) -> int:
    return docs * bands


STAGE = StageSpec("minhash_dedup", MinHashConfig, (
    StepSpec(".signatures", run_signatures),
    StepSpec(".buckets", run_buckets, tasks=_one_per_band, unit="key", units=_band_keys),
    StepSpec(".clusters", run_clusters, tasks=single),
    StepSpec(".filter", run_filter, makes_docs=True),
))
