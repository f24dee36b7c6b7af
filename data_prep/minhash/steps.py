"""The four steps of MinHash near-dedupe, each a task function over the arrays `kernels` computes.

signatures (per shard) -> buckets (one task per key range and group of LSH bands) -> clusters
(one task) -> filter (per shard). No task holds the corpus: a bucket task reads only its key
range of its bands, one open and two plain reads per shard (each shard writes its band keys to
one file, sliced by key range and band), and verifies its candidate pairs by reading just their
signature rows (memory-mapped), so the clusters step reads verified edges only, and its memory
follows the number of edges and of the documents in them. Steps hand each other .npy arrays, the
key files and removals tables in their folders.

Documents are keyed by dedupe's LSH bands and then by the split-group bands (see
`MinHashConfig.split_band_layout`). Only pairs dedupe's bands propose can become edges, so the
removals are those of dedupe's bands alone; every other proposed pair at or above
`split_group_threshold` is kept as a link: with the edges they join documents into split groups,
and the clusters step writes, per shard, the group of each surviving document in one
(`groups-NNNNN.parquet`), which the pack step splits train/validation by, so near-duplicates never
straddle the split.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from data_prep.books import row_priorities, shard_offsets, source_file
from data_prep.dedupe_files import (
    gather_rows,
    key_range,
    read_ranged,
    resolve_ids,
    run_removals_filter,
    shards_per_task,
    write_ranged,
    write_removals,
)
from data_prep.minhash import kernels as minhash
from data_prep.minhash.config import MinHashConfig
from data_prep.stage import ID, TEXT, StageSpec, StepSpec, TaskContext, single, tasks_done
from pipeline.ground.atomic import write_npy, write_parquet

MINHASH = "minhash_dedup"
SIGNATURES, BUCKETS, CLUSTERS = f"{MINHASH}.signatures", f"{MINHASH}.buckets", f"{MINHASH}.clusters"
GROUP = "group"  # the column of a groups file: the smallest id of the document's split group
_VERIFY_ROWS = 8192  # signature rows held at once (4 MB) while verifying pairs or measuring removals


def _signature_file(signatures_folder: Path, task: int) -> Path:
    return signatures_folder / f"signatures-{task:05d}.npy"


def _chars_file(signatures_folder: Path, task: int) -> Path:
    return signatures_folder / f"chars-{task:05d}.npy"


_KEYED = np.dtype([("key", "<u8"), ("row", "<u4")])  # a band key and its row in the shard


def _keys_file(signatures_folder: Path, task: int) -> Path:
    """A shard's band keys, one slice per (key range, band), range by range, so a bucket task
    reads its bands of its range from each shard with one open and two reads."""
    return signatures_folder / f"keys-{task:05d}.bin"


def _edges_file(buckets_folder: Path, task: int, kind: str = "edges") -> Path:
    """Verified pairs of a bucket task: `edges` reach the drop threshold, `links` only the split group one."""
    return buckets_folder / f"{kind}-{task:05d}.npy"


def groups_file(clusters_folder: Path, shard: int) -> Path:
    """The split groups of shard `shard`'s surviving documents that have one (id -> group)."""
    return clusters_folder / f"groups-{shard:05d}.parquet"


def run_signatures(ctx: TaskContext) -> dict[str, Any]:
    """Sign one shard's documents; record their lengths (the keep rule's) and their band keys,
    in one slice per key range and band, range by range, so a bucket task's bands of its range
    lie together."""
    cfg = ctx.settings
    lsh_bands = cfg.lsh_bands()
    bands = len(lsh_bands)
    sigs, chars = [], []
    for batch in pq.ParquetFile(source_file(ctx)).iter_batches(batch_size=ctx.config.batch_size, columns=[TEXT]):
        texts = batch.column(0)
        sigs.append(minhash.signatures(texts.to_pylist(), cfg))
        chars.append(pc.utf8_length(texts).to_numpy(zero_copy_only=False).astype(np.int64))
        ctx.report(len(texts))
    signatures = np.concatenate(sigs) if sigs else np.zeros((0, cfg.num_perm), np.uint32)
    write_npy(_signature_file(ctx.folder, ctx.task), signatures)
    write_npy(_chars_file(ctx.folder, ctx.task), np.concatenate(chars) if chars else np.zeros(0, np.int64))
    ranges = _key_ranges(ctx.config, len(ctx.shards))
    keys = np.stack([minhash.band_keys(signatures, band, rows) for band, rows in lsh_bands])
    slices = key_range(keys, ranges) * bands + np.arange(bands)[:, None]  # (range, band) of each key
    order = np.argsort(slices.ravel(), kind="stable")  # by slice, then by row
    records = np.empty(len(order), _KEYED)
    records["key"], records["row"] = keys.ravel()[order], order % max(len(signatures), 1)
    write_ranged(
        _keys_file(ctx.folder, ctx.task), records, np.searchsorted(slices.ravel()[order], np.arange(ranges * bands + 1))
    )
    return {}


def estimated_jaccard(ctx: TaskContext, pairs: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """The signature estimate of each candidate pair's Jaccard; reads their rows only."""
    files = [_signature_file(ctx.folder_of(SIGNATURES), i) for i in range(len(ctx.shards))]
    estimates = np.zeros(len(pairs), dtype=np.float64)
    for start in range(0, len(pairs), _VERIFY_ROWS // 2):
        chunk = pairs[start : start + _VERIFY_ROWS // 2]
        members, where = np.unique(chunk, return_inverse=True)
        sigs = gather_rows(files, offsets, members)
        where = where.reshape(chunk.shape)
        estimates[start : start + len(chunk)] = minhash.estimate_jaccard(sigs[where[:, 0]], sigs[where[:, 1]])
    return estimates


def run_buckets(ctx: TaskContext) -> dict[str, Any]:
    """Candidate pairs of a group of LSH bands within one key range, verified against the thresholds.

    Each shard's file is opened once for the whole group; the bands are then paired one at a
    time, and a pair found in several bands is verified once. A pair is an edge only when one of
    dedupe's bands proposed it; the split-group bands only add links."""
    bands = len(ctx.settings.lsh_bands())
    dedupe_bands = ctx.settings.band_layout()[0]
    part, group = divmod(ctx.task, _band_groups(ctx.config, len(ctx.shards)))
    mine = np.array_split(np.arange(bands), _band_groups(ctx.config, len(ctx.shards)))[group]
    first = part * bands + int(mine[0])
    offsets = shard_offsets(ctx)
    slices = [
        read_ranged(_keys_file(ctx.folder_of(SIGNATURES), shard), _KEYED, first, first + len(mine))
        for shard in range(len(ctx.shards))
    ]
    found = []
    for i in range(len(mine)):
        keys = np.concatenate([records["key"][bounds[i] : bounds[i + 1]] for records, bounds in slices])
        rows = np.concatenate(
            [
                records["row"][bounds[i] : bounds[i + 1]].astype(np.int64) + offsets[shard]
                for shard, (records, bounds) in enumerate(slices)
            ]
        )
        found.append(minhash.candidate_pairs(keys, rows, ctx.settings.max_bucket_size))
    del slices
    pairs, which = _unique_rows(np.concatenate(found), inverse=True)
    by_dedupe = np.zeros(len(pairs), bool)
    by_dedupe[which[np.repeat(mine < dedupe_bands, [len(f) for f in found])]] = True
    estimates = estimated_jaccard(ctx, pairs, offsets)
    edge = by_dedupe & (estimates >= ctx.settings.threshold)  # other pairs at or above the split one are links
    link = ~edge & (estimates >= ctx.settings.split_group_threshold)
    write_npy(_edges_file(ctx.folder, ctx.task), pairs[edge])
    write_npy(_edges_file(ctx.folder, ctx.task, "links"), pairs[link])
    ctx.report(1)
    return {
        "tally": {
            "minhash_dedup": {
                "band_pairs": len(which),
                "band_edges": int(edge[which].sum()),
                "band_links": int(link[which].sum()),
            }
        }
    }


def _unique_rows(edges: np.ndarray, inverse: bool = False) -> Any:
    """Distinct (a, b) rows of an int64 edge list, sorted; with `inverse`, also where each input row went."""
    order = np.lexsort((edges[:, 1], edges[:, 0]))
    edges = edges[order]
    fresh = np.concatenate(([True], (edges[1:] != edges[:-1]).any(axis=1))) if len(edges) else np.zeros(0, bool)
    if not inverse:
        return edges[fresh]
    where = np.empty(len(order), np.int64)
    where[order] = np.cumsum(fresh) - 1
    return edges[fresh], where


def run_clusters(ctx: TaskContext) -> dict[str, Any]:
    """Join the verified edges into clusters and keep one document per cluster; join edges and
    links into split groups and record the group of each surviving member.

    Only the documents in an edge or link are touched: they are renumbered 0..k-1 (in corpus
    order, so a cluster's smallest member stays its root), and their lengths, ids and signatures
    are read for them alone.
    """
    n_tasks, buckets = _bucket_tasks(ctx.config, len(ctx.shards)), ctx.folder_of(BUCKETS)
    edges = _unique_rows(np.concatenate([np.load(_edges_file(buckets, t)) for t in range(n_tasks)]))
    grouping = _unique_rows(
        np.concatenate([edges, *(np.load(_edges_file(buckets, t, "links")) for t in range(n_tasks))])
    )
    linked = np.unique(grouping)
    groups = minhash.clusters(len(linked), np.searchsorted(linked, grouping))
    del grouping  # freed before the ids and the clusters' arrays are made
    linked_ids = resolve_ids(ctx, linked)
    members = np.unique(edges)
    roots = minhash.clusters(len(members), np.searchsorted(members, edges))
    del edges
    offsets = shard_offsets(ctx)
    chars = gather_rows([_chars_file(ctx.folder_of(SIGNATURES), i) for i in range(len(ctx.shards))], offsets, members)
    remove_mask, keepers = minhash.choose_removals(
        roots, chars, linked_ids[np.searchsorted(linked, members)], row_priorities(ctx, members)
    )
    removed, keepers = members[remove_mask], members[keepers[remove_mask]]
    jaccard = np.zeros(len(removed), dtype=np.float64)
    files = [_signature_file(ctx.folder_of(SIGNATURES), i) for i in range(len(ctx.shards))]
    for start in range(0, len(removed), _VERIFY_ROWS // 2):
        chunk = slice(start, start + _VERIFY_ROWS // 2)
        order = np.argsort(keepers[chunk], kind="stable")
        keeper_sigs = np.empty((len(order), ctx.settings.num_perm), np.uint32)
        keeper_sigs[order] = gather_rows(files, offsets, keepers[chunk][order])
        jaccard[chunk] = minhash.estimate_jaccard(gather_rows(files, offsets, removed[chunk]), keeper_sigs)
    write_removals(ctx, removed, keepers, jaccard)
    sizes = write_groups(ctx, linked, linked_ids, groups, removed)
    ctx.report(int(offsets[-1]))
    return {
        "tally": {
            "minhash_dedup": {
                "clustered": int(len(members)),
                "removed": int(len(removed)),
                "split_groups": int(len(sizes)),
                "split_grouped": int(sizes.sum()),
                "largest_split_group": int(sizes.max(initial=0)),
            }
        }
    }


def write_groups(
    ctx: TaskContext, rows: np.ndarray, ids: np.ndarray, roots: np.ndarray, removed: np.ndarray
) -> np.ndarray:
    """Write each shard's groups file: the surviving documents among `rows` (sorted corpus rows,
    with their `ids` and component `roots`) whose component keeps two or more, each with the
    smallest surviving id of its component, which depends on neither the order nor the sharding
    of the input. A lone survivor keeps its own id. Returns the size of each group written."""
    alive = ~np.isin(rows, removed)
    rows, ids, roots = rows[alive], ids[alive], roots[alive]
    by_id = np.argsort(ids, kind="stable")
    order = by_id[np.argsort(roots[by_id], kind="stable")]  # by component, then by id
    first = np.concatenate(([True], roots[order][1:] != roots[order][:-1])) if len(order) else np.zeros(0, bool)
    starts = np.flatnonzero(first)
    sizes = np.diff(np.append(starts, len(order)))
    component = np.cumsum(first) - 1
    group, size = np.empty(len(rows), dtype=object), np.empty(len(rows), dtype=np.int64)
    group[order], size[order] = ids[order][starts][component], sizes[component]
    offsets = shard_offsets(ctx)
    bounds = np.searchsorted(rows, offsets)
    for shard in range(len(ctx.shards)):
        keep = np.arange(bounds[shard], bounds[shard + 1])
        keep = keep[size[keep] > 1]
        write_parquet(
            groups_file(ctx.folder, shard),
            pa.table(
                {ID: pa.array(ids[keep].tolist(), pa.string()), GROUP: pa.array(group[keep].tolist(), pa.string())}
            ),
        )
    return sizes[sizes > 1]


def split_groups(clusters_folder: Path, shard: int) -> dict[str, str]:
    """id -> split group of shard `shard`'s documents that have one (the others are their own group)."""
    table = pq.read_table(groups_file(clusters_folder, shard))
    return dict(zip(table[ID].to_pylist(), table[GROUP].to_pylist()))


def run_filter(ctx: TaskContext) -> dict[str, Any]:
    return run_removals_filter(ctx, CLUSTERS, "near_duplicate")


def _key_ranges(config: Any, n_shards: int) -> int:
    return shards_per_task(n_shards, config.minhash_dedup.bucket_shards_per_task)


def _band_groups(config: Any, n_shards: int) -> int:
    """Groups of bands per key range: a task per band while there is one range, fewer as the
    ranges grow, so there are always at least as many tasks as bands (parallelism for a small
    corpus) and each shard's key file is opened about max(bands, ranges) times over the step,
    not bands x ranges. A task holds the keys of its range for all its bands at once (12 bytes
    a key), a few times what one band took, and as flat in the corpus size."""
    bands = len(config.minhash_dedup.lsh_bands())
    return shards_per_task(bands, _key_ranges(config, n_shards))


def _bucket_tasks(config: Any, n_shards: int) -> int:
    return _key_ranges(config, n_shards) * _band_groups(config, n_shards)


STAGE = StageSpec(
    MINHASH,
    MinHashConfig,
    (
        StepSpec(".signatures", run_signatures),
        StepSpec(".buckets", run_buckets, tasks=_bucket_tasks, unit="task", units=tasks_done, reads=(SIGNATURES,)),
        StepSpec(".clusters", run_clusters, tasks=single, reads=(SIGNATURES, BUCKETS)),
        StepSpec(".filter", run_filter, makes_docs=True, reads=(CLUSTERS,)),
    ),
)
