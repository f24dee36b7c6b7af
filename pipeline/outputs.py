"""Publish a finished prep run: clean/, dropped/, quarantine/ and stats.json.

Publication reads only the work folder's completed step outputs and markers, always rewrites
the same bytes for the same work, and removes files a previous, larger run left behind, so a
rerun is idempotent. It also checks the books: per stage, docs_in = docs_out + drops +
quarantined, and each stage receives exactly what the previous one kept.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from pipeline.atomic import write_json, write_parquet
from pipeline.markers import read_marker
from pipeline.plan import Plan
from pipeline.tasks import data_file, dropped_file, marker_file, quarantine_file

LEADING_COLUMNS = ("id", "text", "lang", "lang_score")


class AccountingError(RuntimeError):
    """Documents were lost or invented between stages: a bug, never a user error."""


def stage_stats(plan: Plan, work: Path) -> list[dict[str, Any]]:
    """One row per stage, from the completion markers of its steps."""
    rows: dict[str, dict[str, Any]] = {}
    for step in plan.steps:
        row = rows.setdefault(step.stage, {"name": step.stage, "docs_in": 0, "docs_out": 0, "dropped": Counter(),
                                           "quarantined": Counter(), "seconds": 0.0, "tally": {}})
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
    stats = []
    for row in rows.values():
        row["seconds"] = round(row["seconds"], 3)
        row["dropped"] = dict(sorted(row["dropped"].items()))
        row["quarantined"] = dict(sorted(row["quarantined"].items()))
        row["tally"] = {k: dict(sorted(v.items(), key=lambda kv: (-kv[1], kv[0]))) for k, v in row["tally"].items()}
        if not row["tally"]:
            del row["tally"]
        stats.append(row)
    check_books(stats)
    return stats


def check_books(stats: list[dict[str, Any]]) -> None:
    previous_out = None
    for row in stats:
        lost = row["docs_in"] - row["docs_out"] - sum(row["dropped"].values()) - sum(row["quarantined"].values())
        if lost:
            raise AccountingError(f"stage {row['name']}: {lost} documents unaccounted for")
        if previous_out is not None and row["docs_in"] != previous_out:
            raise AccountingError(f"stage {row['name']} received {row['docs_in']} documents, previous kept {previous_out}")
        previous_out = row["docs_out"]


def _publish_folder(folder: Path, wanted: dict[str, Path], transform: Any = None) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, source in wanted.items():
        table = pq.read_table(source)
        write_parquet(folder / name, transform(table) if transform else table)
    for stale in folder.glob("*.parquet"):
        if stale.name not in wanted:
            stale.unlink()


def _clean_columns(table: Any) -> Any:
    names = [c for c in table.column_names if not c.startswith("_")]
    ordered = [c for c in LEADING_COLUMNS if c in names] + [c for c in names if c not in LEADING_COLUMNS]
    return table.select(ordered)


def publish(plan: Plan, work: Path, output: Path) -> dict[str, Any]:
    stats = {"stages": stage_stats(plan, work), "shards": len(plan.shards)}
    last = plan.last_docs_step
    _publish_folder(output / "clean", {f"part-{t:05d}.parquet": data_file(work, last.name, t)
                                       for t in range(last.n_tasks)}, _clean_columns)
    lineage: dict[str, dict[str, Path]] = {"dropped": {}, "quarantine": {}}
    for step in plan.steps:
        if not step.makes_docs:
            continue
        for task in range(step.n_tasks):
            for kind, path in (("dropped", dropped_file(work, step.name, task)),
                               ("quarantine", quarantine_file(work, step.name, task))):
                if pq.ParquetFile(path).metadata.num_rows:
                    lineage[kind][f"{step.stage}-{task:05d}.parquet"] = path
    for kind, wanted in lineage.items():
        _publish_folder(output / kind, wanted)
    write_json(output / "stats.json", stats)
    return stats
