"""Train/validation overlap: how much of the held-out text the model also trains on.

A validation document overlaps training where one of its windows of `window` tokens occurs in a
training document too (windows stay inside a document). Measured after packing, on the token ids
pack splits, in three steps that never hold the corpus:

sample (one task): a fixed sample of at most `sample_docs` validation documents (the smallest
hashes of their ids) and the hashes of their windows -> scan (per shard): which of those hashes
occur in the shard's training documents -> split_overlap (one task): per sampled document, the
share of its windows found in training; the counts go to stats.json as `split_overlap`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from pydantic import Field

from data_prep.pack import PACK, SPLIT_READS, validation_rows
from data_prep.stage import ID, OVERLAP_MEASURE, StageSpec, StepSpec, TaskContext, single, tasks_done
from data_prep.tokenizer import TOKENIZE, tokens_file
from pipeline.ground.atomic import write_json, write_npy
from pipeline.ground.hashing import hash64
from pipeline.ground.markers import read_marker
from pipeline.ground.schema import Section

OVERLAP = "split_overlap"
SAMPLE, SCAN = f"{OVERLAP}.sample", f"{OVERLAP}.scan"
_CHUNK_TOKENS = 1 << 22  # training tokens hashed at once (about 100 MB of temporaries)
_WORST = 5  # sampled documents listed by name, the most overlapping first
# One odd 64-bit multiplier per window position: a window's hash is the sum of token * multiplier (mod 2**64).
_MULTIPLIERS = np.random.default_rng(20_240_531).integers(0, 2**63, size=4096, dtype=np.uint64) * np.uint64(
    2
) + np.uint64(1)


class OverlapConfig(Section):
    """How the train/validation overlap is measured after packing."""

    window: int = Field(
        32,
        ge=4,
        le=len(_MULTIPLIERS),
        description="Tokens per window: a validation document overlaps training where one of its "
        "windows occurs in a training document.",
    )
    sample_docs: int = Field(
        2000,
        ge=1,
        description="Validation documents measured at most: a fixed sample (by a "
        "hash of the id), so that memory does not grow with the corpus.",
    )


def window_hashes(flat: np.ndarray, offsets: np.ndarray, window: int) -> tuple[np.ndarray, np.ndarray]:
    """The hash of every window of `window` tokens inside one document of `flat` (documents start
    at `offsets`, which ends with len(flat)), and the document of each, in order."""
    n = len(flat) - window + 1
    if n <= 0:
        return np.zeros(0, np.uint64), np.zeros(0, np.int64)
    hashes = np.zeros(n, dtype=np.uint64)
    for position in range(window):
        hashes += flat[position : position + n].astype(np.uint64) * _MULTIPLIERS[position]
    doc = np.searchsorted(offsets, np.arange(n), side="right") - 1
    inside = np.arange(n) + window <= offsets[doc + 1]
    return hashes[inside], doc[inside]


def _read_tokens(ctx: TaskContext, shard: int) -> tuple[list[str], np.ndarray, np.ndarray]:
    """A shard's document ids, its tokens end to end and where each document starts (memory-mapped)."""
    table = pa.ipc.open_file(pa.memory_map(str(tokens_file(ctx.folder_of(TOKENIZE), shard)))).read_all()
    lists = table["tokens"].combine_chunks()
    return table[ID].to_pylist(), lists.values.to_numpy(), lists.offsets.to_numpy()


def _draw(doc_id: str) -> int:
    return hash64(doc_id, b"overlap")


def _sample_file(sample_folder: Path, name: str) -> Path:
    return sample_folder / name


def run_sample(ctx: TaskContext) -> dict[str, Any]:
    """Choose the sampled validation documents (shard by shard, keeping the best `sample_docs` so
    far) and write the hashes of their windows: `unique.npy` (sorted, what the scan looks up),
    `where.npy` (each window's place in it) and `owner.npy` (each window's sampled document)."""
    cfg = ctx.settings
    best = np.zeros((0, 3), dtype=np.uint64)  # (draw, shard, row)
    val_docs = 0
    for shard in range(len(ctx.shards)):
        ids, _, _ = _read_tokens(ctx, shard)
        rows = np.flatnonzero(validation_rows(ctx, shard, ids))
        val_docs += len(rows)
        draws = np.array([_draw(ids[r]) for r in rows], dtype=np.uint64)
        found = np.stack([draws, np.full(len(rows), shard, np.uint64), rows.astype(np.uint64)], axis=1)
        best = np.concatenate([best, found])
        best = best[np.lexsort((best[:, 2], best[:, 1], best[:, 0]))][: cfg.sample_docs]
        ctx.report(len(ids))
    best = best[np.lexsort((best[:, 2], best[:, 1]))].astype(np.int64)  # corpus order
    names: list[str] = []
    hashes, owners, windows = [], [], []
    for shard in np.unique(best[:, 1]):
        ids, flat, offsets = _read_tokens(ctx, int(shard))
        for row in best[best[:, 1] == shard, 2]:
            doc = flat[offsets[row] : offsets[row + 1]]
            doc_hashes, _ = window_hashes(doc, np.array([0, len(doc)]), cfg.window)
            owners.append(np.full(len(doc_hashes), len(names), np.int64))
            names.append(ids[row])
            hashes.append(doc_hashes)
            windows.append(len(doc_hashes))
    hashes_all = np.concatenate(hashes) if hashes else np.zeros(0, np.uint64)
    unique, where = np.unique(hashes_all, return_inverse=True)
    write_npy(_sample_file(ctx.folder, "unique.npy"), unique)
    write_npy(_sample_file(ctx.folder, "where.npy"), where.astype(np.int64).reshape(-1))
    write_npy(_sample_file(ctx.folder, "owner.npy"), np.concatenate(owners) if owners else np.zeros(0, np.int64))
    write_json(
        _sample_file(ctx.folder, "documents.json"), {"ids": names, "windows": windows, "val_documents": val_docs}
    )
    return {}


def _found_file(scan_folder: Path, shard: int) -> Path:
    return scan_folder / f"found-{shard:05d}.npy"


def run_scan(ctx: TaskContext) -> dict[str, Any]:
    """Mark the sampled windows that occur in this shard's training documents (a bit per window hash)."""
    unique = np.load(_sample_file(ctx.folder_of(SAMPLE), "unique.npy"))
    found = np.zeros(len(unique), dtype=bool)
    ids, flat, offsets = _read_tokens(ctx, ctx.task)
    training = ~validation_rows(ctx, ctx.task, ids)
    start = 0
    while start < len(ids) and len(unique):
        stop = max(start + 1, int(np.searchsorted(offsets, offsets[start] + _CHUNK_TOKENS, side="right")) - 1)
        stop = min(stop, len(ids))
        hashes, doc = window_hashes(
            flat[offsets[start] : offsets[stop]], offsets[start : stop + 1] - offsets[start], ctx.settings.window
        )
        hashes = hashes[training[start + doc]]
        place = np.minimum(np.searchsorted(unique, hashes), len(unique) - 1)
        found[place[unique[place] == hashes]] = True
        ctx.report(stop - start)
        start = stop
    write_npy(_found_file(ctx.folder, ctx.task), np.packbits(found))
    return {}


def run_overlap(ctx: TaskContext) -> dict[str, Any]:
    """Per sampled validation document, the share of its windows that training holds too."""
    sample, scan = ctx.folder_of(SAMPLE), ctx.folder_of(SCAN)
    unique = np.load(_sample_file(sample, "unique.npy"))
    found = np.zeros(len(unique), dtype=bool)
    for shard in range(len(ctx.shards)):
        found |= np.unpackbits(np.load(_found_file(scan, shard)), count=len(unique)).astype(bool)
    documents_file = _sample_file(sample, "documents.json")
    documents = read_marker(documents_file)
    if documents is None:
        raise RuntimeError(f"{documents_file} is missing or unreadable: rerun the sample step")
    windows = np.array(documents["windows"], dtype=np.int64)
    shared = np.bincount(
        np.load(_sample_file(sample, "owner.npy")),
        weights=found[np.load(_sample_file(sample, "where.npy"))],
        minlength=len(windows),
    )
    share = np.divide(shared, windows, out=np.zeros(len(windows)), where=windows > 0)
    worst = sorted(zip(-share, documents["ids"]))[:_WORST]
    ctx.report(1)
    return {
        "overlap": {
            "window_tokens": ctx.settings.window,
            "sample_docs": ctx.settings.sample_docs,
            "val_documents": documents["val_documents"],
            "sampled": len(windows),
            "measured": int((windows > 0).sum()),
            "sharing": int((shared > 0).sum()),
            "worst_share": round(float(share.max(initial=0.0)), 4),
            "mean_share": round(float(share[windows > 0].mean()) if (windows > 0).any() else 0.0, 4),
            "worst": [{"id": name, "share": round(float(-negative), 4)} for negative, name in worst if negative < 0],
        }
    }


STAGE = StageSpec(
    OVERLAP,
    OverlapConfig,
    (
        StepSpec(".sample", run_sample, tasks=single, reads=(TOKENIZE, *SPLIT_READS)),
        StepSpec(".scan", run_scan, reads=(SAMPLE, TOKENIZE, *SPLIT_READS)),
        StepSpec(
            "",
            run_overlap,
            tasks=single,
            unit="task",
            units=tasks_done,
            reads=(SAMPLE, SCAN),
            publishes=(OVERLAP_MEASURE,),
        ),
    ),
    requires=(PACK,),
)
