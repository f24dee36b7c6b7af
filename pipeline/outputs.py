"""Publish a finished prep run: clean/, dropped/, quarantine/ and stats.json.

Publication reads only the work folder's completed step outputs and markers, always rewrites
the same bytes for the same work, and removes files a previous, larger run left behind, so a
rerun is idempotent. It also checks the books: per stage, docs_in = docs_out + drops +
quarantined, and each stage receives exactly what the previous one kept.

Publishing scales like the steps: a task per input shard copies that shard's files (a plain copy
wherever the work file already has the published bytes), in whatever executor runs the prep; the
process that starts and finishes it reads only markers and file footers, never documents, and
writes the shard manifest and stats.json after every task, so they mark a complete publication.

The output may be a folder or an object-storage prefix (`s3://bucket/prep`): each file then goes to its final
key in one upload, which the store shows only once it is complete, and the manifest and stats.json, removed
first and written last, are the commit point of the whole (docs/cloud.md).
"""

from __future__ import annotations

import shutil
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from data_prep.books import data_file, dropped_file, marker_file, quarantine_file
from data_prep.overlap import OVERLAP
from data_prep.pack import shard_file
from data_prep.readers import skipped_entries
from data_prep.shards import ShardManifest, SplitIndex, TokenizerRecord, token_type, write_manifest
from data_prep.stage import OVERLAP_MEASURE, SHARD_FILES, TOKEN_COUNTS, TOKENIZER
from data_prep.tokenizer import load_tokenizer, special_ids, tokenizer_file
from pipeline.ground import storage
from pipeline.ground.atomic import atomic_path, write_parquet, write_text
from pipeline.ground.hashing import file_sha256
from pipeline.ground.markers import read_marker
from pipeline.ground.layout import PrepFolder
from pipeline.ground.names import TOKENIZER_FILE
from pipeline.ground.storage import Location
from pipeline.prep_stats import PrepStats
from pipeline.prep_graph import PrepGraph

LEADING_COLUMNS = ("id", "text", "lang", "lang_score")
RUN_ONLY = {"executor", "ray"}  # prep keys that say where it ran, not what it made: left out of the manifest
Languages = dict[str | None, dict[str, dict[str, int]]]  # per source (None: untagged), per language: pack's counts
UPLOADING = "uploading"  # the work folder's place for files made for an object-storage output, until uploaded


class AccountingError(RuntimeError):
    """Documents were lost or invented between stages: a bug, never a user error."""


def stage_stats(plan: PrepGraph, work: Path) -> list[dict[str, Any]]:
    """One row per stage, from the completion markers of its steps."""
    rows: dict[str, dict[str, Any]] = {}
    doc_stages = {step.stage for step in plan.steps if step.makes_docs}
    for step in plan.steps:
        if step.stage not in doc_stages:
            continue
        row = rows.setdefault(
            step.stage,
            {
                "name": step.stage,
                "docs_in": 0,
                "docs_out": 0,
                "dropped": Counter(),
                "quarantined": Counter(),
                "seconds": 0.0,
                "tally": {},
                "sources": {},
            },
        )
        for task in range(step.n_tasks):
            marker = read_marker(marker_file(work, step.name, task))
            if marker is None:
                raise AccountingError(f"step {step.name} task {task} has no completion marker")
            row["seconds"] += marker["seconds"]
            for name, values in marker.get("tally", {}).items():
                row["tally"].setdefault(name, Counter()).update(values)
            if step.makes_docs:
                row["docs_in"] += marker["docs_in"]
                row["docs_out"] += marker["docs_out"]
                row["dropped"].update(marker["dropped"])
                row["quarantined"].update(marker["quarantined"])
                for source, counts in marker.get("sources", {}).items():
                    row["sources"].setdefault(source, Counter()).update(counts)
    stats = []
    for row in rows.values():
        row["seconds"] = round(row["seconds"], 3)
        row["dropped"] = dict(sorted(row["dropped"].items()))
        row["quarantined"] = dict(sorted(row["quarantined"].items()))
        row["tally"] = {k: dict(sorted(v.items(), key=lambda kv: (-kv[1], kv[0]))) for k, v in row["tally"].items()}
        if not row["tally"]:
            del row["tally"]
        row["sources"] = {name: _source_row(counts) for name, counts in sorted(row["sources"].items())}
        if not row["sources"]:
            del row["sources"]
        stats.append(row)
    check_books(stats)
    return stats


def _source_row(counts: Counter[str]) -> dict[str, Any]:
    """One source's counts in a stage, from the markers' flat `dropped/<reason>` keys."""
    row: dict[str, Any] = {"docs_in": counts.get("docs_in", 0), "docs_out": counts.get("docs_out", 0)}
    for kind in ("dropped", "quarantined"):
        row[kind] = dict(sorted((k.split("/", 1)[1], n) for k, n in counts.items() if k.startswith(kind + "/")))
    return row


def check_books(stats: list[dict[str, Any]]) -> None:
    """docs_in = docs_out + dropped + quarantined per stage (and per source), each stage fed by the one before."""
    _check_chain(stats, "")
    for source in sorted({name for row in stats for name in row.get("sources", {})}):
        _check_chain(
            [
                row["sources"].get(
                    source, {"name": row["name"], "docs_in": 0, "docs_out": 0, "dropped": {}, "quarantined": {}}
                )
                | {"name": row["name"]}
                for row in stats
            ],
            f" (source {source})",
        )


def _check_chain(stats: list[dict[str, Any]], of: str) -> None:
    previous_out = None
    for row in stats:
        lost = row["docs_in"] - row["docs_out"] - sum(row["dropped"].values()) - sum(row["quarantined"].values())
        if lost:
            raise AccountingError(f"stage {row['name']}{of}: {lost} documents unaccounted for")
        if previous_out is not None and row["docs_in"] != previous_out:
            raise AccountingError(
                f"stage {row['name']}{of} received {row['docs_in']} documents, previous kept {previous_out}"
            )
        previous_out = row["docs_out"]


def source_summary(stages: list[dict[str, Any]], tokens: dict[str, dict[str, int]]) -> dict[str, dict[str, int]]:
    """Per source: documents read, kept, dropped and quarantined over all stages, and packed tokens."""
    summary: dict[str, dict[str, int]] = {}
    for source in sorted({name for row in stages for name in row.get("sources", {})}):
        rows = [row["sources"][source] for row in stages if source in row.get("sources", {})]
        summary[source] = {
            "docs_in": rows[0]["docs_in"],
            "docs_out": rows[-1]["docs_out"],
            "dropped": sum(sum(r["dropped"].values()) for r in rows),
            "quarantined": sum(sum(r["quarantined"].values()) for r in rows),
        }
        summary[source] |= {k: v for k, v in tokens.get(source, {}).items() if k.endswith(("_tokens", "_sequences"))}
    return summary


def _clean_columns(names: list[str]) -> list[str]:
    """The published columns of clean/, in order: the internal `_` columns left out, the leading ones first."""
    kept = [c for c in names if not c.startswith("_")]
    return [c for c in LEADING_COLUMNS if c in kept] + [c for c in kept if c not in LEADING_COLUMNS]


def _publish_clean(source: Path, output: Location, work: Path, name: str) -> None:
    """A plain copy where the work file already has the published columns in order; else a projection."""
    names = pq.read_schema(source).names
    columns = _clean_columns(names)
    if columns == names:
        _copy(source, output, name)
    else:
        with _made(output, work, name) as target:
            write_parquet(target, pq.read_table(source, columns=columns))


def token_stats(
    plan: PrepGraph, work: Path
) -> tuple[dict[str, Any], list[dict[str, Any]], dict[str, dict[str, int]], Languages]:
    """Summed token counts of the tokenize and pack steps, the shard files pack wrote, pack's counts per
    source, and per source (None: untagged) and language when pack split by language."""
    totals: Counter[str] = Counter()
    seconds_of: dict[str, float] = {}  # per step, the seconds its tasks took
    files: list[dict[str, Any]] = []
    sources: dict[str, Counter[str]] = {}
    languages: dict[str | None, dict[str, Counter[str]]] = {}
    for step in plan.steps:
        if TOKEN_COUNTS not in step.spec.publishes:
            continue
        seconds = 0.0
        for task in range(step.n_tasks):
            marker = read_marker(marker_file(work, step.name, task)) or {}
            totals.update(marker.get("tokens", {}))
            files.extend(marker.get("files", []))
            for source, counts in marker.get("sources", {}).items():
                sources.setdefault(source, Counter()).update(counts)
            source = next(iter(marker.get("sources", {})), None)  # a pack task holds one source
            for language, counts in marker.get("languages", {}).items():
                languages.setdefault(source, {}).setdefault(language, Counter()).update(counts)
            seconds += marker.get("seconds", 0.0)
        seconds_of[f"{step.name}_seconds"] = round(seconds, 3)
    return (
        dict(sorted((dict(totals) | seconds_of).items())),
        files,
        {k: dict(sorted(v.items())) for k, v in sorted(sources.items())},
        {k: {lang: dict(c) for lang, c in v.items()} for k, v in languages.items()},
    )


def _copy(source: Path, output: Location, name: str, read_only: bool = False) -> None:
    """A copy of the bytes (work files are written as they are published: no re-encoding), renamed into place;
    in object storage, one upload to the final key."""
    if storage.is_remote(output):
        storage.upload(source, storage.join_url(output, name))
        return
    with atomic_path(Path(output) / name) as tmp:
        shutil.copyfile(source, tmp)
        if read_only:
            tmp.chmod(0o444)


def _publish_copy(source: Path, output: Location, name: str) -> None:
    """A read-only copy: a published file shares nothing with the work folder, so editing one
    cannot damage the other (a rerun republishes from work/, which it verifies first)."""
    _copy(source, output, name, read_only=True)


@contextmanager
def _made(output: Location, work: Path, name: str) -> Iterator[Path]:
    """Where to write a file that publishing makes (not copies): its place in a local output; for object
    storage, a file in the work folder that is uploaded to its final key, then removed."""
    if not storage.is_remote(output):
        yield Path(output) / name
        return
    local = work / UPLOADING / name
    local.parent.mkdir(parents=True, exist_ok=True)
    try:
        yield local
        storage.upload(local, storage.join_url(output, name))
    finally:
        local.unlink(missing_ok=True)


def _remove(output: Location, name: str) -> None:
    if storage.is_remote(output):
        storage.remove(storage.join_url(output, name))
    else:
        (Path(output) / name).unlink(missing_ok=True)


def publish_manifest(
    plan: PrepGraph,
    work: Path,
    output: Location,
    totals: dict[str, Any],
    files: list[dict[str, Any]],
    sources: dict[str, dict[str, int]],
    languages: Languages,
) -> None:
    """tokenizer/tokenizer.json and shards/manifest.json (and a copy of the tokenizer) for the shard files the
    publishing tasks copied; with named sources, each shard entry names its source and each split counts per
    source; split by language, each entry names its language and each split (and source) counts per language."""
    (trained,) = plan.publishing(TOKENIZER)
    tokenizer_path = tokenizer_file(plan.config, work / trained.name)
    _publish_copy(tokenizer_path, output, f"tokenizer/{TOKENIZER_FILE}")
    if not plan.publishing(SHARD_FILES):
        return
    _publish_copy(tokenizer_path, output, PrepFolder.in_shards(TOKENIZER_FILE))
    splits: dict[str, SplitIndex] = {}
    for split in ("train", "val"):
        entries = sorted((f for f in files if f["split"] == split), key=lambda f: f["file"])
        tagged: dict[str, Any] = {}
        if languages:
            tagged["languages"] = _split_counts(split, _summed(languages.values()))
        if sources:
            tagged["sources"] = _split_counts(split, sources)
            for name, counts in tagged["sources"].items():
                if name in languages:
                    counts["languages"] = _split_counts(split, languages[name])
        splits[split] = SplitIndex.model_validate(
            {
                key: totals.get(f"{split}_{key}", 0)
                for key in ("documents", "tokens", "sequences", "padding", "remainder")
            }
            | {"shards": [{k: v for k, v in f.items() if k != "split"} for f in entries]}
            | tagged
        )
    with _made(output, work, PrepFolder.MANIFEST_FILE) as target:
        _write_manifest(plan, tokenizer_path, splits, target.parent)


def _write_manifest(plan: PrepGraph, tokenizer_path: Path, splits: dict[str, SplitIndex], folder: Path) -> None:
    tokenizer = load_tokenizer(tokenizer_path)
    eod, pad = special_ids(tokenizer, plan.config.tokenizer)
    write_manifest(
        folder,
        ShardManifest(
            seq_len=plan.config.pack.seq_len,
            row_width=plan.config.pack.seq_len + 1,
            packing=plan.config.pack.method,
            token_type=str(token_type(tokenizer.get_vocab_size())),
            tokenizer=TokenizerRecord(
                file=TOKENIZER_FILE,
                sha256=file_sha256(tokenizer_path),
                vocab_size=tokenizer.get_vocab_size(),
                eod_id=eod,
                pad_id=pad,
            ),
            splits=splits,
            prep_config=plan.config.with_absolute_paths().model_dump(mode="json", exclude=RUN_ONLY),
        ),
    )


def _split_counts(split: str, counts: Mapping[str, Mapping[str, int]]) -> dict[str, dict[str, Any]]:
    """Per name, one split's documents, tokens and sequences from pack's `<split>_<key>` counts."""
    return {
        name: {key: c.get(f"{split}_{key}", 0) for key in ("documents", "tokens", "sequences")}
        for name, c in sorted(counts.items())
    }


def _summed(groups: Iterable[dict[str, dict[str, int]]]) -> dict[str, Counter[str]]:
    """Per language, the counts of every source added up."""
    total: dict[str, Counter[str]] = {}
    for group in groups:
        for language, counts in group.items():
            total.setdefault(language, Counter()).update(counts)
    return total


def publish_task_count(plan: PrepGraph) -> int:
    """Publishing runs as tasks, one per task index of the steps whose files it publishes (their input shards)."""
    return max(step.n_tasks for step in plan.steps if step.makes_docs or SHARD_FILES in step.spec.publishes)


def begin_publish(plan: PrepGraph, work: Path, output: Location) -> dict[str, Any]:
    """Check the books, then take stats.json and the shard manifest away until `finish_publish` writes them
    again: a reader sees a prep as published only when every file of it is in place."""
    stats: dict[str, Any] = {"stages": stage_stats(plan, work), "shards": len(plan.shards)}
    for last_written in (PrepFolder.STATS_FILE, PrepFolder.MANIFEST_FILE):
        _remove(output, last_written)
    return stats


def publish_task(plan: PrepGraph, work: Path, output: Location, task: int) -> list[str]:
    """Publish what task `task` of each step wrote: its part of clean/, its dropped and quarantined documents
    (where it has any), its training shards. Returns the files written, relative to `output`."""
    written: list[str] = []
    last = plan.last_docs_step
    if task < last.n_tasks:
        written.append(PrepFolder.clean_file(task))
        _publish_clean(data_file(work, last.name, task), output, work, written[-1])
    for step in plan.steps:
        if step.makes_docs and task < step.n_tasks:
            for kind, path in (
                (PrepFolder.DROPPED, dropped_file(work, step.name, task)),
                (PrepFolder.QUARANTINE, quarantine_file(work, step.name, task)),
            ):
                if pq.ParquetFile(path).metadata.num_rows:
                    written.append(PrepFolder.kept_apart_file(kind, step.stage, task))
                    _copy(path, output, written[-1])
        elif SHARD_FILES in step.spec.publishes and task < step.n_tasks:
            for entry in (read_marker(marker_file(work, step.name, task)) or {}).get("files", []):
                written.append(PrepFolder.in_shards(entry["split"], entry["file"]))
                _publish_copy(shard_file(work / step.name, entry["split"], entry["file"]), output, written[-1])
    return written


def finish_publish(
    plan: PrepGraph, work: Path, output: Location, stats: dict[str, Any], written: Iterable[list[str]]
) -> PrepStats:
    """After every publishing task: remove what a previous, larger run left, then write the tokenizer, the
    shard manifest and, last, stats.json."""
    wanted = {name for names in written for name in names}
    for folder, suffix in (
        (PrepFolder.CLEAN, ".parquet"),
        (PrepFolder.DROPPED, ".parquet"),
        (PrepFolder.QUARANTINE, ".parquet"),
        (PrepFolder.in_shards("train"), ".arrow"),
        (PrepFolder.in_shards("val"), ".arrow"),
    ):
        if not folder.startswith(PrepFolder.SHARDS) and not storage.is_remote(output):
            (Path(output) / folder).mkdir(parents=True, exist_ok=True)
        for name in storage.listing(storage.join(output, folder)):
            if name.endswith(suffix) and f"{folder}/{name}" not in wanted:
                _remove(output, f"{folder}/{name}")
    skipped = skipped_entries(plan.config.all_inputs())
    if skipped:
        stats["skipped_inputs"] = skipped
    sources: dict[str, dict[str, int]] = {}
    if plan.publishing(TOKEN_COUNTS):
        totals, files, sources, languages = token_stats(plan, work)
        publish_manifest(plan, work, output, totals, files, sources, languages)
        stats["tokens"] = totals
    if plan.config.sources:
        stats["sources"] = source_summary(stats["stages"], sources)
    for step in plan.publishing(OVERLAP_MEASURE):
        stats[OVERLAP] = read_marker(marker_file(work, step.name, 0))["overlap"]  # type: ignore[index]
    prep_stats = PrepStats.model_validate(stats)
    with _made(output, work, PrepFolder.STATS_FILE) as target:
        write_text(target, prep_stats.to_json())
    return prep_stats


def publish(
    plan: PrepGraph,
    work: Path,
    output: Location,
    map_tasks: Callable[[Callable[[int], list[str]], range], Iterable[list[str]]] = map,
) -> PrepStats:
    """Publish a finished prep: the tasks through `map_tasks` (an executor's parallel map), the rest here."""
    stats = begin_publish(plan, work, output)
    written = map_tasks(partial(publish_task, plan, work, output), range(publish_task_count(plan)))
    return finish_publish(plan, work, output, stats, written)
