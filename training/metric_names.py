"""The names of the metrics a run logs in metrics.jsonl, built and read back in one place.

The trainer and the mixing loader write them; the report, the summary and the step line read them.
Both sides go through these functions, so a name changes here or nowhere:

- `val_loss`, and `val_loss/<source>` per source of a mixture;
- `eval/<task>/<metric>` per task and metric (a task's name may hold `/`, a metric's never does);
- `mix/<source>/tokens` and `mix/<source>/target`: tokens drawn so far and the mixture's target share.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

VAL_LOSS = "val_loss"
EVAL_SECONDS = "eval_seconds"
_TASK = "eval/"
_MIX = "mix/"


def source_val_loss(source: str) -> str:
    return f"{VAL_LOSS}/{source}"


def task_score(task: str, metric: str) -> str:
    return f"{_TASK}{task}/{metric}"


def mix_tokens(source: str) -> str:
    return f"{_MIX}{source}/tokens"


def mix_target(source: str) -> str:
    return f"{_MIX}{source}/target"


def parse_task_score(key: str) -> tuple[str, str] | None:
    """(task, metric) of an `eval/<task>/<metric>` name; None for any other name."""
    if not key.startswith(_TASK) or "/" not in key[len(_TASK) :]:
        return None
    task, _, metric = key[len(_TASK) :].rpartition("/")
    return task, metric


def task_scores(record: Mapping[str, Any]) -> dict[tuple[str, str], float]:
    """A record's task results, by (task, metric)."""
    return {parsed: value for key, value in record.items() if (parsed := parse_task_score(key)) is not None}


def mixture_sources(records: Iterable[Mapping[str, Any]]) -> list[str]:
    """The sources whose mixture counts appear in any of the records, sorted."""
    return sorted({key[len(_MIX) :].rpartition("/")[0] for record in records for key in record if key.startswith(_MIX)})


def has_mixture(record: Mapping[str, Any]) -> bool:
    return any(key.startswith(_MIX) for key in record)
