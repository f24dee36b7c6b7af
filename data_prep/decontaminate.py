"""decontaminate: drop (or flag) training documents that share a long word n-gram with an evaluation item.

Two steps, like the dedupe stages: `.index` (one task) hashes every n-gram of every evaluation
item into one sorted array, and `.filter` (one task per shard) hashes each document's n-grams
the same way and looks them up. Both sides see text as lower-cased `\\w+` words, so changed
case, whitespace or punctuation does not hide a copy, while a document sharing only shorter runs
with an item is kept. Each field of an item (a prompt, an answer, each listed choice) is hashed on
its own, so no n-gram spans two fields; an item with fewer than `ngram` words in every field
cannot match and is counted as `short_items`.
"""

from __future__ import annotations

import json
from collections import Counter
from functools import lru_cache
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import pyarrow as pa
from pydantic import Field, field_validator

from data_prep.books import run_stage_on_source
from data_prep.inputs import file_digests
from data_prep.stage import TEXT, Decision, DocStage, Drop, StageSpec, StepSpec, TaskContext, replace_column, single
from data_prep.words import words
from pipeline.ground.atomic import write_json, write_npy
from pipeline.ground.errors import UserError
from pipeline.ground.hashing import hash64
from pipeline.ground.records import read_records
from pipeline.ground.schema import Section

INDEX = "decontaminate.index"
FLAG_COLUMN = "contamination"
EVAL_SUFFIXES = (".jsonl", ".jsonl.gz", ".json", ".parquet")
# Odd 64-bit multiplier of the n-gram keys (arithmetic wraps modulo 2**64).
_MIX = np.uint64(0x9E3779B97F4A7C15)


class EvalSet(Section):
    """One evaluation set: a JSONL or Parquet file whose `fields` hold prompts and answers."""

    path: Path = Field(description="A .jsonl(.gz) or .parquet file.")
    name: str | None = Field(None, description="Its name in lineage and stats (default: the file name's stem).")
    fields: list[str] = Field(["text"], min_length=1, description="Fields of an item to match (strings or lists).")
    id_field: str = Field("id", description="Field naming an item in lineage (default: its row number).")

    @field_validator("path")
    @classmethod
    def _format(cls, path: Path) -> Path:
        if not path.name.lower().endswith(EVAL_SUFFIXES):
            raise ValueError(f"eval set {path}: expected a file ending in {', '.join(EVAL_SUFFIXES)}")
        return path

    @property
    def label(self) -> str:
        return self.name or self.path.name.split(".")[0]


class DecontaminateConfig(Section):
    """Which evaluation sets, how long a shared run of words counts as contamination, and what to do."""

    eval_sets: list[EvalSet] = Field(default_factory=list, description="Evaluation sets to protect.")
    ngram: int = Field(13, ge=1, description="Words in a shared n-gram that marks a document contaminated.")
    action: Literal["drop", "flag"] = Field(
        "drop", description=f"drop: remove the document; flag: keep it with the item in a `{FLAG_COLUMN}` column."
    )

    def missing(self) -> str | None:
        return None if self.eval_sets else "no eval_sets"

    def fingerprint(self) -> dict[str, Any]:
        files = file_digests([s.path for s in self.eval_sets], "prep.decontaminate.eval_sets")
        return super().fingerprint() | {"files": files}


@lru_cache(maxsize=1 << 20)
def _word_hash(word: str) -> int:
    return hash64(word)


def ngram_keys(text: str, n: int) -> np.ndarray:
    """A 64-bit key for each run of `n` consecutive words of `text` (empty when it has fewer)."""
    tokens = words(text)
    if len(tokens) < n:
        return np.zeros(0, dtype=np.uint64)
    hashes = np.fromiter(map(_word_hash, tokens), dtype=np.uint64, count=len(tokens))
    count = len(tokens) - n + 1
    keys = hashes[:count].copy()
    with np.errstate(over="ignore"):
        for k in range(1, n):
            keys = keys * _MIX + hashes[k : k + count]
    return keys


def _items(eval_set: EvalSet) -> list[dict[str, Any]]:
    """The set's items; one-line errors for a file that is not JSON Lines or Parquet, or whose
    items hold none of the fields to match (which would protect nothing, silently)."""
    records = read_records(eval_set.path)
    if records and not any(name in record for record in records for name in eval_set.fields):
        found = sorted({name for record in records for name in record})
        raise UserError(
            f"eval set {eval_set.label} ({eval_set.path}): no item has a field {eval_set.fields}; "
            f"its items have {found}: set `fields` of this set in prep.decontaminate.eval_sets"
        )
    return records


def _pieces(record: dict[str, Any], fields: list[str]) -> list[str]:
    pieces: list[str] = []
    for name in fields:
        value = record.get(name)
        values = value if isinstance(value, list) else [value]
        pieces.extend(str(v) for v in values if v is not None)
    return pieces


def _index_files(folder: Path) -> tuple[Path, Path, Path]:
    return folder / "ngrams.npy", folder / "owners.npy", folder / "items.json"


def run_index(ctx: TaskContext) -> dict[str, Any]:
    """Hash every n-gram of every evaluation item; an n-gram two items share belongs to the first."""
    cfg: DecontaminateConfig = ctx.settings
    keys, owners = [], []
    items: list[list[str]] = []
    counts: dict[str, Counter[str]] = {"eval_items": Counter(), "short_items": Counter()}
    for eval_set in cfg.eval_sets:
        for row, record in enumerate(_items(eval_set)):
            grams = [ngram_keys(piece, cfg.ngram) for piece in _pieces(record, eval_set.fields)]
            found = np.concatenate(grams) if grams else np.zeros(0, dtype=np.uint64)
            counts["eval_items"][eval_set.label] += 1
            if not len(found):
                counts["short_items"][eval_set.label] += 1
                continue
            keys.append(found)
            owners.append(np.full(len(found), len(items), dtype=np.int64))
            item = record.get(eval_set.id_field)
            items.append([eval_set.label, str(row) if item is None else str(item)])
    all_keys = np.concatenate(keys) if keys else np.zeros(0, dtype=np.uint64)
    all_owners = np.concatenate(owners) if owners else np.zeros(0, dtype=np.int64)
    unique, first = np.unique(all_keys, return_index=True)  # sorted keys, each with its first owner
    ngrams_file, owners_file, items_file = _index_files(ctx.folder)
    write_npy(ngrams_file, unique)
    write_npy(owners_file, all_owners[first])
    write_json(items_file, items)
    ctx.report(len(items))
    return {"tally": {name: dict(values) for name, values in counts.items() if values}}


class ContaminationFilter(DocStage):
    """Looks up each document's n-grams in the index; the first n-gram found names the item."""

    name: ClassVar[str] = "decontaminate"

    def __init__(self, config: DecontaminateConfig, index_folder: Path) -> None:
        self.config = config
        ngrams_file, owners_file, items_file = _index_files(index_folder)
        self.ngrams = np.load(ngrams_file)
        self.owners = np.load(owners_file)
        self.items = json.loads(items_file.read_text())
        self.found: Counter[str] = Counter()

    def match(self, text: str) -> tuple[int, int] | None:
        """(item index, n-grams shared) of the first shared n-gram in `text`, or None."""
        keys = ngram_keys(text, self.config.ngram)
        if not len(keys) or not len(self.ngrams):
            return None
        where = np.minimum(np.searchsorted(self.ngrams, keys), len(self.ngrams) - 1)
        hits = np.flatnonzero(self.ngrams[where] == keys)
        if not len(hits):
            return None
        return int(self.owners[where[hits[0]]]), len(hits)

    def decide(self, table: pa.Table) -> Decision:
        drops: dict[int, Drop] = {}
        flags: list[str | None] = [None] * table.num_rows
        self.found = Counter()
        for row, text in enumerate(table.column(TEXT).to_pylist()):
            found = self.match(text)
            if found is None:
                continue
            (eval_set, item), shared = self.items[found[0]], found[1]
            self.found[eval_set] += 1
            if self.config.action == "drop":
                drops[row] = Drop("contaminated", {"eval_set": eval_set, "item": item, "shared_ngrams": shared})
            else:
                flags[row] = f"{eval_set}:{item}"
        if self.config.action == "flag":
            table = replace_column(table, FLAG_COLUMN, pa.array(flags, pa.string()))
        return Decision(table, drops)

    def tally(self, kept: pa.Table) -> dict[str, dict[str, int]]:
        """Contaminated documents of the last batch, per eval set (dropped or flagged)."""
        return {"contamination": dict(self.found)} if self.found else {}


def run_filter(ctx: TaskContext) -> dict[str, Any]:
    return run_stage_on_source(ctx, ContaminationFilter(ctx.settings, ctx.folder_of(INDEX)))


def _items_unknown(docs: int, n_tasks: int) -> None:
    """The index step counts evaluation items, which no marker knows in advance."""


STAGE = StageSpec(
    "decontaminate",
    DecontaminateConfig,
    (
        StepSpec(".index", run_index, tasks=single, unit="item", units=_items_unknown),
        StepSpec("", run_filter, makes_docs=True, reads=(INDEX,)),
    ),
    default=False,
)
