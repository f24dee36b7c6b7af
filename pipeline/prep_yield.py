"""Whether a finished prep kept enough to train on, and if not, one line that says why and what to set.

A corpus whose text sits under another field name (`content`, `body`) is quarantined whole as
`missing_text`; without this check prep would exit 0, publish empty shards and point at training.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from data_prep.config import PrepSettings
from pipeline.ground import storage
from pipeline.ground.errors import UserError
from pipeline.ground.layout import PrepFolder
from pipeline.ground.storage import Location
from pipeline.prep_stats import PrepStats

SAMPLED_RECORDS = 200  # quarantined records read for their field names
NO_TEXT = ("missing_text", "no_text_column")


class PrepYieldError(UserError):
    """Prep kept nothing, or quarantined more than prep.max_quarantined_share of what it read."""


def check_yield(config: PrepSettings, output: Location, stats: PrepStats) -> None:
    """Raise PrepYieldError when prep kept no document or quarantined too large a share of them."""
    read, kept = stats.read, stats.kept
    quarantined: Counter[str] = Counter()
    for row in stats.stages:
        quarantined.update(row.quarantined)
    total = sum(quarantined.values())
    share = total / read if read else 0.0
    if kept and share <= config.max_quarantined_share:
        return
    reasons = ", ".join(f"{reason} {n:,}" for reason, n in quarantined.most_common(3))
    what = (
        f"prep kept no documents of the {read:,} it read"
        if not kept
        else f"prep quarantined {share:.0%} of the {read:,} documents it read, more than "
        f"prep.max_quarantined_share={config.max_quarantined_share:g}"
    )
    what += f" ({reasons})" if reasons else ""
    no_text = any(reason in quarantined for reason in NO_TEXT)
    hint = _field_hint(config, Path(output)) if no_text and not storage.is_remote(output) else ""
    raise PrepYieldError(
        f"{what}{hint}; each record and its reason is in {storage.join(output, 'quarantine')}"
        if total
        else f"{what}; see the table above for the stage that removed them"
    )


def _field_hint(config: PrepSettings, output: Path) -> str:
    """`: the records have fields a, b, c but no 'text': set prep.read.text_field (e.g. ...=content)`."""
    fields, lengths = _fields_seen(PrepFolder(output).quarantine)
    text_field = config.read.text_field
    if not fields:
        return f": the records have no field {text_field!r}; set prep.read.text_field to the field with the text"
    shown = ", ".join(name for name, _ in fields.most_common(12))
    likely = max(lengths, key=lengths.__getitem__) if lengths else None
    example = f" (e.g. --set prep.read.text_field={likely})" if likely else ""
    return (
        f": the records have the fields {shown} but no {text_field!r}; set prep.read.text_field to the one "
        f"with the text{example}"
    )


def _fields_seen(quarantine: Path) -> tuple[Counter[str], Counter[str]]:
    """Field names of the first quarantined records that had no text field, and the characters of string
    values under each (the text field is most likely the longest)."""
    fields: Counter[str] = Counter()
    lengths: Counter[str] = Counter()
    seen = 0
    for path in sorted(quarantine.glob("read-*.parquet")):  # a batch at a time: a quarantine can be the whole corpus
        for batch in pq.ParquetFile(path).iter_batches(batch_size=SAMPLED_RECORDS, columns=["reason", "detail", "raw"]):
            for reason, detail, raw in zip(*(batch.column(c).to_pylist() for c in range(3))):
                if reason not in NO_TEXT:
                    continue
                record = _json_object(raw) if reason == "missing_text" else {}
                fields.update(list(record) or json.loads(detail or "{}").get("columns", []))
                lengths.update({name: len(value) for name, value in record.items() if isinstance(value, str)})
                seen += 1
                if seen >= SAMPLED_RECORDS:
                    return fields, lengths
    return fields, lengths


def _json_object(raw: bytes | None) -> dict[str, Any]:
    try:
        record = json.loads(raw or b"")
    except ValueError:
        return {}
    return record if isinstance(record, dict) else {}
