"""Dedupe split by hash range, band and key range removes exactly what the whole-corpus
algorithm removes: the same documents, as duplicates of the same keepers, with the same Jaccard.

The reference below is the algorithm as one process ran it before the split (every hash, every
signature and every candidate pair in memory at once), applied to the documents the exact_dedup
stage received in the same run.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from data_prep.dedupe_files import read_ranged, write_ranged
from data_prep.config import PrepConfig
from data_prep.exact_dedup import STAGE as EXACT
from data_prep.exact_dedup import ExactDedupConfig, first_occurrences, text_hashes
from data_prep.minhash import kernels
from data_prep.minhash.config import MinHashConfig
from data_prep.minhash.steps import STAGE as MINHASH
from tests.conftest import REPO, read_set, write_jsonl

STAGES = "[normalize,exact_dedup,minhash_dedup]"


def prep(inputs: Path, output: Path, *settings: str) -> Path:
    command = [
        sys.executable,
        "-m",
        "pipeline",
        "prep",
        "--input",
        str(inputs),
        "--output",
        str(output),
        "--no-progress",
        "--set",
        f"prep.stages={STAGES}",
        "--set",
        "prep.workers=2",
    ]
    for setting in settings:
        command += ["--set", setting]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return output


def reference_removals(normalized: pa.Table) -> dict[str, tuple]:
    """id -> (reason, duplicate_of[, jaccard]) by the whole-corpus algorithm."""
    ids = normalized["id"].to_pylist()
    first = first_occurrences(text_hashes(normalized, ExactDedupConfig()))
    removals: dict[str, tuple] = {
        ids[i]: ("exact_duplicate", ids[first[i]]) for i in np.flatnonzero(first != np.arange(len(first)))
    }
    survivors = normalized.filter(pa.array(first == np.arange(len(first))))
    ids, cfg = survivors["id"].to_pylist(), MinHashConfig()
    sigs = kernels.signatures(survivors["text"].to_pylist(), cfg)
    bands, rows = cfg.band_layout()
    rows_index = np.arange(len(ids), dtype=np.int64)
    pairs = np.unique(
        np.concatenate(
            [
                kernels.candidate_pairs(kernels.band_keys(sigs, band, rows), rows_index, cfg.max_bucket_size)
                for band in range(bands)
            ]
        ),
        axis=0,
    )
    edges = pairs[kernels.estimate_jaccard(sigs[pairs[:, 0]], sigs[pairs[:, 1]]) >= cfg.threshold]
    lengths = pc.utf8_length(survivors["text"]).to_numpy()
    remove, keeper = kernels.choose_removals(kernels.clusters(len(ids), edges), lengths, ids)
    for i in np.flatnonzero(remove):
        jaccard = kernels.estimate_jaccard(sigs[i : i + 1], sigs[keeper[i] : keeper[i] + 1])[0]
        removals[ids[i]] = ("near_duplicate", ids[keeper[i]], round(float(np.float32(jaccard)), 4))
    return removals


def pipeline_removals(output: Path) -> dict[str, tuple]:
    dropped = pa.concat_tables(pq.read_table(f) for f in sorted((output / "dropped").glob("*.parquet")))
    removals = {}
    for record in dropped.to_pylist():
        detail = json.loads(record["detail"])
        if record["reason"] == "exact_duplicate":
            removals[record["id"]] = (record["reason"], detail["duplicate_of"])
        elif record["reason"] == "near_duplicate":
            removals[record["id"]] = (record["reason"], detail["duplicate_of"], detail["jaccard"])
    return removals


def normalized_documents(output: Path) -> pa.Table:
    return pa.concat_tables(
        pq.read_table(f, columns=["id", "text"]) for f in sorted((output / "work" / "normalize").glob("data-*.parquet"))
    )


@pytest.mark.parametrize("corpus", ["neardup", "sample"])
def test_split_steps_remove_what_the_whole_corpus_algorithm_removes(corpus: str, tmp_path: Path) -> None:
    # Plain JSONL is cut into byte-range shards; the compressed sample files are one shard each.
    inputs = (
        write_jsonl(tmp_path / "neardup.jsonl", read_set("neardup"))
        if corpus == "neardup"
        else REPO / "data" / "sample"
    )
    output = prep(
        inputs,
        tmp_path / "out",
        "prep.shard_mb=0.5",
        "prep.exact_dedup.find_shards_per_task=3",
        "prep.minhash_dedup.bucket_shards_per_task=2",
    )
    find_tasks = len(list((output / "work" / "exact_dedup.find").glob("removals-*.parquet")))
    bucket_tasks = len(list((output / "work" / "minhash_dedup.buckets").glob("edges-*.npy")))
    assert find_tasks >= 2 and bucket_tasks > MinHashConfig().band_layout()[0], "the split is exercised"
    expected = reference_removals(normalized_documents(output))
    reasons = [value[0] for value in expected.values()]
    assert reasons.count("exact_duplicate") and reasons.count("near_duplicate") >= 20, "the check is not vacuous"
    assert pipeline_removals(output) == expected


def test_task_counts_grow_with_the_number_of_input_shards() -> None:
    config = PrepConfig.model_validate(
        {"exact_dedup": {"find_shards_per_task": 4}, "minhash_dedup": {"bucket_shards_per_task": 4}}
    )
    bands = len(config.minhash_dedup.lsh_bands())  # dedupe's and the split groups' bands
    find, buckets = EXACT.step("exact_dedup.find"), MINHASH.step("minhash_dedup.buckets")
    assert [find.tasks(config, n) for n in (1, 4, 5, 400)] == [1, 1, 2, 100]
    # a task per band and key range while ranges are few, then one per range: at least `bands` tasks
    assert [buckets.tasks(config, n) for n in (1, 4, 5, 400)] == [bands, bands, 2 * -(-bands // 2), 100]


def test_a_ranged_file_gives_back_each_run_of_slices(tmp_path: Path) -> None:
    keyed = np.dtype([("key", "<u8"), ("row", "<u4")])
    records = np.zeros(10, keyed)
    records["key"], records["row"] = np.arange(10, dtype=np.uint64) * 7, np.arange(10)[::-1]
    bounds = np.array([0, 3, 3, 8, 10])  # four slices, the second empty
    write_ranged(tmp_path / "keys.bin", records, bounds)
    for first, last in [(0, 1), (1, 2), (1, 3), (2, 4), (0, 4)]:
        got, where = read_ranged(tmp_path / "keys.bin", keyed, first, last)
        assert got.tolist() == records[bounds[first] : bounds[last]].tolist()
        assert where.tolist() == (bounds[first : last + 1] - bounds[first]).tolist()
