"""What one task of each kind of step does, given the plan, the work folder and its index.

Every task reads only its inputs (its shard, or the small global files of its stage), writes
its outputs atomically, and returns the counts that the executor stores in its completion
marker. Per-document steps share one runner that applies a stage's decisions and keeps the
books: kept rows go on, dropped rows become lineage records, quarantined rows keep their raw
text, and docs_in = docs_out + dropped + quarantined by construction.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from data_prep import exact_dedup
from data_prep import pack as pack_lib
from data_prep import shards as shard_format
from data_prep import tokenizer as tokenizer_lib
from data_prep.langid import LangIdStage
from data_prep.minhash import kernels as minhash
from data_prep.normalize import NormalizeStage
from data_prep.pii import PiiStage
from data_prep.quality import QualityStage
from data_prep.readers import ORIGIN, read_shard
from pipeline.ground.atomic import atomic_path, write_npy, write_parquet
from pipeline.ground.names import TOKENIZER_FILE
from pipeline.plan import Plan, Step
from pipeline.stages import ID, TEXT, Decision, DocStage, Drop

Report = Callable[[int], None]
DOC_STAGES: dict[str, type[DocStage]] = {
    stage.name: stage for stage in (NormalizeStage, LangIdStage, PiiStage, QualityStage)
}
DROPPED_SCHEMA = pa.schema(
    [("id", pa.string()), ("stage", pa.string()), ("reason", pa.string()),
     ("detail", pa.string()), ("origin", pa.string())]
)
QUARANTINE_SCHEMA = pa.schema(
    [("origin", pa.string()), ("id", pa.string()), ("stage", pa.string()),
     ("reason", pa.string()), ("detail", pa.string()), ("raw", pa.binary())]
)
REMOVALS_SCHEMA = pa.schema(
    [("shard", pa.int32()), ("row", pa.int64()), ("duplicate_of", pa.string()), ("jaccard", pa.float32())]
)
DETAIL_COLUMNS = ("lang", "lang_score")


def data_file(work: Path, step: str, task: int) -> Path:
    return work / step / f"data-{task:05d}.parquet"


def dropped_file(work: Path, step: str, task: int) -> Path:
    return work / step / f"dropped-{task:05d}.parquet"


def quarantine_file(work: Path, step: str, task: int) -> Path:
    return work / step / f"quarantine-{task:05d}.parquet"


def marker_file(work: Path, step: str, task: int) -> Path:
    return work / step / f"done-{task:05d}.json"


def _detail_json(detail: dict[str, Any]) -> str:
    return json.dumps(detail, sort_keys=True, ensure_ascii=False, default=str)


class DocBooks:
    """Accumulates one task's kept documents, lineage and counts."""

    def __init__(self, stage: str) -> None:
        self.stage = stage
        self.kept: list[pa.Table] = []
        self.dropped: list[dict[str, Any]] = []
        self.quarantined: list[dict[str, Any]] = []
        self.docs_in = 0
        self.tally: dict[str, Counter[str]] = {}

    def quarantine_raw(self, records: list[dict[str, Any]]) -> None:
        """Records that never became documents (reader rejects)."""
        self.docs_in += len(records)
        for record in records:
            self.quarantined.append({**record, "stage": self.stage, "detail": _detail_json(record["detail"])})

    def apply(self, incoming: pa.Table, decision: Decision) -> pa.Table:
        """Book a decision on `incoming`; return the kept rows."""
        table, drops = decision.table, decision.drops
        if table.num_rows != incoming.num_rows:
            raise RuntimeError(f"stage {self.stage} changed the number of rows in a batch")
        self.docs_in += table.num_rows
        if drops:
            ids = table[ID].to_pylist()
            origins = table[ORIGIN].to_pylist() if ORIGIN in table.column_names else [None] * len(ids)
            extras = {c: table[c].to_pylist() for c in DETAIL_COLUMNS if c in table.column_names}
            raw_texts = incoming[TEXT]
            for row in sorted(drops):
                drop = drops[row]
                detail = {c: values[row] for c, values in extras.items()} | drop.detail
                record = {"id": ids[row], "stage": self.stage, "reason": drop.reason,
                          "detail": _detail_json(detail), "origin": origins[row]}
                if drop.quarantine:
                    record["raw"] = raw_texts[row].as_py().encode()
                    self.quarantined.append(record)
                else:
                    self.dropped.append(record)
            mask = np.ones(table.num_rows, dtype=bool)
            mask[list(drops)] = False
            table = table.filter(pa.array(mask))
        self.kept.append(table)
        return table

    def add_tally(self, counts: dict[str, dict[str, int]]) -> None:
        for name, values in counts.items():
            self.tally.setdefault(name, Counter()).update(values)

    def write(self, work: Path, step: str, task: int, empty_schema: pa.Schema | None) -> dict[str, Any]:
        kept = [t for t in self.kept if t.num_rows] or self.kept[:1]
        if kept:
            data = pa.concat_tables(kept, promote_options="permissive")
        else:
            data = (empty_schema or pa.schema([(ID, pa.string()), (TEXT, pa.string())])).empty_table()
        write_parquet(data_file(work, step, task), data)
        write_parquet(dropped_file(work, step, task), pa.Table.from_pylist(self.dropped, DROPPED_SCHEMA))
        write_parquet(quarantine_file(work, step, task), pa.Table.from_pylist(self.quarantined, QUARANTINE_SCHEMA))
        return {
            "docs_in": self.docs_in,
            "docs_out": data.num_rows,
            "dropped": dict(Counter(r["reason"] for r in self.dropped)),
            "quarantined": dict(Counter(r["reason"] for r in self.quarantined)),
            "tally": {name: dict(values) for name, values in self.tally.items()},
        }


def _source_batches(plan: Plan, work: Path, step: Step, task: int) -> Iterator[pa.Table]:
    parquet = pq.ParquetFile(data_file(work, step.source, task))  # type: ignore[arg-type]
    for batch in parquet.iter_batches(batch_size=plan.config.batch_size):
        yield pa.Table.from_batches([batch])


def _source_schema(work: Path, step: Step, task: int) -> pa.Schema:
    return pq.read_schema(data_file(work, step.source, task))  # type: ignore[arg-type]


def _run_doc_stage(plan: Plan, work: Path, step: Step, task: int, stage: DocStage, report: Report) -> dict[str, Any]:
    books = DocBooks(step.stage)
    for table in _source_batches(plan, work, step, task):
        kept = books.apply(table, stage.decide(table))
        books.add_tally(stage.tally(kept))
        report(table.num_rows)
    return books.write(work, step.name, task, _source_schema(work, step, task))


_STAGE_CACHE: dict[tuple[str, str], DocStage] = {}


def _doc_stage(name: str, config: Any) -> DocStage:
    """One stage object per worker process and config, so models load once."""
    key = (name, config.model_dump_json())
    if key not in _STAGE_CACHE:
        stage = DOC_STAGES[name](config)
        stage.setup()
        _STAGE_CACHE[key] = stage
    return _STAGE_CACHE[key]


def run_read(plan: Plan, work: Path, step: Step, task: int, report: Report) -> dict[str, Any]:
    books = DocBooks("read")
    for batch in read_shard(plan.shards[task], plan.config.read, plan.config.batch_size):
        books.quarantine_raw(batch.quarantined)
        books.apply(batch.table, Decision(batch.table))
        report(batch.table.num_rows + len(batch.quarantined))
    return books.write(work, step.name, task, None)


def run_doc(plan: Plan, work: Path, step: Step, task: int, report: Report) -> dict[str, Any]:
    stage = _doc_stage(step.stage, getattr(plan.config, step.stage))
    return _run_doc_stage(plan, work, step, task, stage, report)


class ShardRowFilter(DocStage):
    """Drops the rows a global step chose, by position in this shard (batches arrive in order)."""

    name: ClassVar[str] = "row_filter"

    def __init__(self, drops: dict[int, Drop]) -> None:
        self.drops = drops
        self.offset = 0

    def decide(self, table: pa.Table) -> Decision:
        start, self.offset = self.offset, self.offset + table.num_rows
        return Decision(table, {r - start: d for r, d in self.drops.items() if start <= r < self.offset})


def _run_removals_filter(plan: Plan, work: Path, step: Step, task: int, report: Report, removals: Path, reason: str) -> dict[str, Any]:
    table = pq.read_table(removals, filters=[("shard", "=", task)])
    drops = {}
    for row, duplicate_of, jaccard in zip(*(table[c].to_pylist() for c in ("row", "duplicate_of", "jaccard"))):
        detail = {"duplicate_of": duplicate_of} | ({} if jaccard is None else {"jaccard": round(jaccard, 4)})
        drops[row] = Drop(reason, detail)
    return _run_doc_stage(plan, work, step, task, ShardRowFilter(drops), report)


def _shard_offsets(work: Path, step: Step, n_shards: int) -> np.ndarray:
    counts = [json.loads(marker_file(work, step.source, i).read_text())["docs_out"] for i in range(n_shards)]  # type: ignore[arg-type]
    return np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)


def _source_column(work: Path, step: Step, n_shards: int, column: str) -> list[Any]:
    values: list[Any] = []
    for i in range(n_shards):
        values.extend(pq.read_table(data_file(work, step.source, i), columns=[column])[column].to_pylist())  # type: ignore[arg-type]
    return values


def _write_removals(path: Path, offsets: np.ndarray, removed: np.ndarray, keepers: np.ndarray,
                    ids: list[str], jaccard: np.ndarray | None) -> None:
    shard = np.searchsorted(offsets, removed, side="right") - 1
    table = pa.table({
        "shard": pa.array(shard.astype(np.int32)),
        "row": pa.array((removed - offsets[shard]).astype(np.int64)),
        "duplicate_of": pa.array([ids[k] for k in keepers], pa.string()),
        "jaccard": pa.array(jaccard.astype(np.float32) if jaccard is not None else [None] * len(removed), pa.float32()),
    }, schema=REMOVALS_SCHEMA)
    write_parquet(path, table)


# ---- exact dedupe -----------------------------------------------------------------------

def run_exact_hash(plan: Plan, work: Path, step: Step, task: int, report: Report) -> dict[str, Any]:
    table = pq.read_table(data_file(work, step.source, task), columns=[TEXT])  # type: ignore[arg-type]
    write_npy(work / step.name / f"hashes-{task:05d}.npy", exact_dedup.text_hashes(table, plan.config.exact_dedup))
    report(table.num_rows)
    return {}


def run_exact_find(plan: Plan, work: Path, step: Step, task: int, report: Report) -> dict[str, Any]:
    n = len(plan.shards)
    hash_dir = work / plan.step("exact_dedup.hash").name
    hashes = np.concatenate([np.load(hash_dir / f"hashes-{i:05d}.npy") for i in range(n)])
    first = exact_dedup.first_occurrences(hashes)
    removed = np.flatnonzero(first != np.arange(len(first)))
    ids = _source_column(work, step, n, ID)
    _write_removals(work / step.name / "removals.parquet", _shard_offsets(work, step, n), removed, first[removed], ids, None)
    report(len(first))
    return {"tally": {"exact_dedup": {"duplicates": int(len(removed))}}}


def run_exact_filter(plan: Plan, work: Path, step: Step, task: int, report: Report) -> dict[str, Any]:
    removals = work / plan.step("exact_dedup.find").name / "removals.parquet"
    return _run_removals_filter(plan, work, step, task, report, removals, "exact_duplicate")


# ---- MinHash near-dedupe ----------------------------------------------------------------

def _signature_paths(work: Path, n: int) -> list[Path]:
    return [work / "minhash_dedup.signatures" / f"signatures-{i:05d}.npy" for i in range(n)]


def run_minhash_signatures(plan: Plan, work: Path, step: Step, task: int, report: Report) -> dict[str, Any]:
    texts = pq.read_table(data_file(work, step.source, task), columns=[TEXT])[TEXT]  # type: ignore[arg-type]
    signatures = minhash.signatures(texts.to_pylist(), plan.config.minhash_dedup)
    write_npy(_signature_paths(work, len(plan.shards))[task], signatures)
    write_npy(work / step.name / f"chars-{task:05d}.npy", pc.utf8_length(texts).to_numpy(zero_copy_only=False).astype(np.int64))
    report(len(texts))
    return {}


def run_minhash_buckets(plan: Plan, work: Path, step: Step, task: int, report: Report) -> dict[str, Any]:
    cfg = plan.config.minhash_dedup
    _, rows = cfg.band_layout()
    keys = [minhash.band_keys(np.load(p, mmap_mode="r"), task, rows) for p in _signature_paths(work, len(plan.shards))]
    all_keys = np.concatenate(keys) if keys else np.zeros(0, np.uint64)
    pairs = minhash.candidate_pairs(all_keys, np.arange(len(all_keys), dtype=np.int64), cfg.max_bucket_size)
    write_npy(work / step.name / f"pairs-{task:05d}.npy", pairs)
    report(len(all_keys))
    return {"tally": {"minhash_dedup": {"band_pairs": int(len(pairs))}}}


def run_minhash_clusters(plan: Plan, work: Path, step: Step, task: int, report: Report) -> dict[str, Any]:
    cfg, n = plan.config.minhash_dedup, len(plan.shards)
    bands, _ = cfg.band_layout()
    pairs = np.concatenate([np.load(work / "minhash_dedup.buckets" / f"pairs-{b:05d}.npy") for b in range(bands)])
    pairs = np.unique(pairs, axis=0) if len(pairs) else pairs.reshape(0, 2)
    sigs = np.concatenate([np.load(p) for p in _signature_paths(work, n)])
    estimates = minhash.estimate_jaccard(sigs[pairs[:, 0]], sigs[pairs[:, 1]])
    edges = pairs[estimates >= cfg.threshold]
    roots = minhash.clusters(len(sigs), edges)
    chars = np.concatenate([np.load(work / "minhash_dedup.signatures" / f"chars-{i:05d}.npy") for i in range(n)])
    ids = _source_column(work, step, n, ID)
    remove_mask, keepers = minhash.choose_removals(roots, chars, ids)
    removed = np.flatnonzero(remove_mask)
    jaccard = minhash.estimate_jaccard(sigs[removed], sigs[keepers[removed]])
    _write_removals(work / step.name / "removals.parquet", _shard_offsets(work, step, n), removed, keepers[removed], ids, jaccard)
    report(len(sigs))
    return {"tally": {"minhash_dedup": {"candidate_pairs": int(len(pairs)), "verified_pairs": int(len(edges)),
                                        "removed": int(len(removed))}}}


def run_minhash_filter(plan: Plan, work: Path, step: Step, task: int, report: Report) -> dict[str, Any]:
    removals = work / "minhash_dedup.clusters" / "removals.parquet"
    return _run_removals_filter(plan, work, step, task, report, removals, "near_duplicate")


# ---- tokenizer, tokenize, pack -------------------------------------------------------------



def tokenizer_file(plan: Plan, work: Path) -> Path:
    return plan.config.tokenizer.path or work / "tokenize.train" / TOKENIZER_FILE


def _texts(plan: Plan, work: Path, step: Step) -> Iterator[str]:
    for i in range(len(plan.shards)):
        parquet = pq.ParquetFile(data_file(work, step.source, i))  # type: ignore[arg-type]
        for batch in parquet.iter_batches(batch_size=plan.config.batch_size, columns=[TEXT]):
            yield from batch.column(0).to_pylist()


def run_tokenizer_train(plan: Plan, work: Path, step: Step, task: int, report: Report) -> dict[str, Any]:
    cfg = plan.config.tokenizer
    if cfg.path is None:
        tokenizer = tokenizer_lib.train_tokenizer(_texts(plan, work, step), cfg)
        with atomic_path(work / step.name / TOKENIZER_FILE) as tmp:
            tokenizer.save(str(tmp))
    tokenizer = tokenizer_lib.load_tokenizer(tokenizer_file(plan, work))
    tokenizer_lib.special_ids(tokenizer, cfg)  # a given tokenizer must have the special tokens
    return {"tokens": {"vocab_size": tokenizer.get_vocab_size()}}


_TOKENIZERS: dict[str, Any] = {}


def _encoder(path: Path) -> Any:
    if str(path) not in _TOKENIZERS:
        tokenizer = tokenizer_lib.load_tokenizer(path)
        tokenizer.encode_special_tokens = True  # "<|endoftext|>" typed in a document is just text
        _TOKENIZERS[str(path)] = tokenizer
    return _TOKENIZERS[str(path)]


def run_tokenize(plan: Plan, work: Path, step: Step, task: int, report: Report) -> dict[str, Any]:
    tokenizer = _encoder(tokenizer_file(plan, work))
    eod, _ = tokenizer_lib.special_ids(tokenizer, plan.config.tokenizer)
    ids: list[str] = []
    token_lists: list[np.ndarray] = []
    parquet = pq.ParquetFile(data_file(work, step.source, task))  # type: ignore[arg-type]
    for batch in parquet.iter_batches(batch_size=plan.config.batch_size, columns=[ID, TEXT]):
        encodings = tokenizer.encode_batch_fast(batch.column(1).to_pylist(), add_special_tokens=False)
        ids.extend(batch.column(0).to_pylist())
        token_lists.extend(np.array(e.ids + [eod], dtype=np.uint32) for e in encodings)
        report(batch.num_rows)
    lengths = np.array([len(t) for t in token_lists], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    flat = np.concatenate(token_lists) if token_lists else np.zeros(0, np.uint32)
    table = pa.table({ID: pa.array(ids, pa.string()),
                      "tokens": pa.LargeListArray.from_arrays(pa.array(offsets), pa.array(flat))})
    with atomic_path(work / step.name / f"tokens-{task:05d}.arrow") as tmp:
        with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
            writer.write_table(table)
    return {"tokens": {"documents": len(ids), "tokens": int(lengths.sum())}}


def run_pack(plan: Plan, work: Path, step: Step, task: int, report: Report) -> dict[str, Any]:
    cfg, vocab = plan.config.pack, tokenizer_lib.load_tokenizer(tokenizer_file(plan, work)).get_vocab_size()
    _, pad = tokenizer_lib.special_ids(_encoder(tokenizer_file(plan, work)), plan.config.tokenizer)
    table = pa.ipc.open_file(pa.memory_map(str(work / "tokenize" / f"tokens-{task:05d}.arrow"))).read_all()
    ids = table[ID].to_pylist()
    lists = table["tokens"].combine_chunks()
    flat, offsets = lists.values.to_numpy(), lists.offsets.to_numpy()
    docs = [flat[offsets[i]:offsets[i + 1]] for i in range(len(ids))]
    order = np.random.default_rng([cfg.seed, task]).permutation(len(docs))
    width = cfg.seq_len + 1
    rows_per_file = max(1, int(cfg.max_shard_mb * 2**20) // (width * shard_format.token_type(vocab).bit_width // 8))
    files, counts = [], Counter()
    for split in ("train", "val"):
        chosen = [docs[i] for i in order if pack_lib.is_validation(ids[i], cfg.val_fraction) == (split == "val")]
        packed = (pack_lib.pack_best_fit(chosen, width, pad) if cfg.method == "best_fit"
                  else pack_lib.pack_concat(chosen, width))
        for part, start in enumerate(range(0, len(packed.tokens), rows_per_file)):
            path = work / step.name / split / f"{split}-{task:05d}-{part:03d}.arrow"
            stop = start + rows_per_file
            entry = shard_format.write_shard(path, packed.tokens[start:stop], packed.segment_starts[start:stop], vocab)
            files.append(entry | {"split": split})
        counts.update({f"{split}_documents": len(chosen), f"{split}_tokens": int(sum(len(d) for d in chosen)),
                       f"{split}_sequences": len(packed.tokens), f"{split}_padding": packed.padding,
                       f"{split}_remainder": packed.remainder})
        report(len(chosen))
    return {"tokens": dict(counts), "files": files}


TASKS: dict[str, Callable[[Plan, Path, Step, int, Report], dict[str, Any]]] = {
    "read": run_read,
    "doc": run_doc,
    "exact_hash": run_exact_hash,
    "exact_find": run_exact_find,
    "exact_filter": run_exact_filter,
    "minhash_signatures": run_minhash_signatures,
    "minhash_buckets": run_minhash_buckets,
    "minhash_clusters": run_minhash_clusters,
    "minhash_filter": run_minhash_filter,
    "tokenizer_train": run_tokenizer_train,
    "tokenize": run_tokenize,
    "pack": run_pack,
}
