"""Task files and their metrics: what is scored, not how (that is `training.scoring`).

A task is one local file, JSONL (one item a line) or Parquet, its name the file's stem:
- multiple choice (HellaSwag, ARC, PIQA shape): {"context": str, "choices": [str], "gold": int};
  `acc` (highest log-likelihood is gold), `acc_norm` (log-likelihood per character of the choice)
  and `chance` (the accuracy of guessing: the mean of 1 / number of choices over the items);
- cloze (LAMBADA shape): {"context": str, "target": str}; `acc` (every target token is the
  model's greedy pick), `perplexity` (exp of minus the mean target log-likelihood: per target,
  which is per word for LAMBADA's one-word targets, as lm-evaluation-harness reports it) and
  `perplexity_per_token` (the same log-likelihood over the targets' tokens).

Requests follow lm-evaluation-harness, so that scores agree with it: the continuation is
" " + choice (its default target delimiter), trailing spaces of the context move to the
continuation, the continuation's tokens are those of encode(context + continuation) after the
context's, and an empty context is the end-of-document token. A context longer than the model's
seq_len keeps its last tokens (the harness cuts it so too); a continuation that cannot fit is refused.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.ground.errors import UserError
from pipeline.ground.records import read_records

MULTIPLE_CHOICE, CLOZE = "multiple_choice", "cloze"
DELIMITER = " "  # between context and continuation, lm-evaluation-harness's default
# The metrics tables and the report show, in order (chance beside acc), and the names of those
# whose key alone would mislead.
SHOWN_METRICS = ("acc", "chance", "acc_norm", "perplexity", "perplexity_per_token")
METRIC_LABELS = {
    "perplexity": "perplexity per word",
    "perplexity_per_token": "perplexity per token",
    "chance": "chance acc",
}


@dataclass
class Task:
    name: str
    path: Path
    kind: str  # MULTIPLE_CHOICE or CLOZE
    items: list[dict[str, Any]]

    def continuations(self, item: dict[str, Any]) -> list[str]:
        return item["choices"] if self.kind == MULTIPLE_CHOICE else [item["target"]]


def _check(path: Path, number: int, item: Any) -> str:
    """The item's kind, or a one-line error naming the file and item."""
    where = f"{path}: item {number}"
    if not isinstance(item, dict) or not isinstance(item.get("context"), str):
        raise UserError(f"{where}: needs a string `context`")
    if "choices" in item:
        choices, gold = item["choices"], item.get("gold")
        if not (isinstance(choices, list) and len(choices) >= 2 and all(isinstance(c, str) and c for c in choices)):
            raise UserError(f"{where}: `choices` must be two or more non-empty strings")
        if not (isinstance(gold, int) and 0 <= gold < len(choices)):
            raise UserError(f"{where}: `gold` must be the index of the right choice (0..{len(choices) - 1})")
        return MULTIPLE_CHOICE
    if isinstance(item.get("target"), str) and item["target"]:
        return CLOZE
    raise UserError(f"{where}: needs `choices` and `gold` (multiple choice) or a non-empty `target` (cloze)")


def load_task(path: Path, max_items: int | None = None) -> Task:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"task file {path} not found")
    if path.suffix not in (".jsonl", ".parquet"):
        raise UserError(f"task file {path}: expected .jsonl or .parquet")
    items = read_records(path)[:max_items]
    if not items:
        raise UserError(f"task file {path} has no items")
    kinds = {_check(path, number, item) for number, item in enumerate(items, 1)}
    if len(kinds) > 1:
        raise UserError(f"task file {path} mixes multiple-choice and cloze items; use one file per kind")
    return Task(path.stem, path, kinds.pop(), items)


def load_tasks(paths: list[Path], max_items: int | None = None) -> list[Task]:
    tasks = [load_task(path, max_items) for path in paths]
    names = [task.name for task in tasks]
    if len(set(names)) < len(names):
        raise UserError(f"two task files share a name (a task's name is its file's stem): {names}")
    return tasks


def encode_pair(encode: Any, context: str, continuation: str, eod_id: int) -> tuple[list[int], list[int]]:
    """Context and continuation token ids, split as lm-evaluation-harness splits them."""
    if not context:
        return [eod_id], encode(continuation)
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    whole, head = encode(context + continuation), encode(context)
    return head, whole[len(head) :]


def check_fits(task: Task, pairs: list[tuple[list[int], list[int]]], seq_len: int) -> None:
    """Refuse a choice or target longer than seq_len tokens before anything is scored: its first
    tokens would never be scored (lm-evaluation-harness stops on an assertion)."""
    at = 0
    for number, item in enumerate(task.items, 1):
        for index, _ in enumerate(task.continuations(item)):
            length = len(pairs[at][1])
            at += 1
            if length > seq_len:
                which = f"choices[{index}]" if task.kind == MULTIPLE_CHOICE else "target"
                raise UserError(
                    f"{task.path}: item {number}: {which} is {length:,} tokens, longer than the "
                    f"{seq_len:,} (seq_len) the model was trained on; shorten it, or train with a "
                    f"larger prep.pack.seq_len (a long context keeps its last tokens)"
                )


def requests(task: Task) -> list[tuple[str, str]]:
    """(context, continuation) for every choice of every item, in order."""
    return [(item["context"], DELIMITER + text) for item in task.items for text in task.continuations(item)]


def chance(task: Task) -> float:
    """The accuracy of a uniform guess among each item's choices, averaged over the items."""
    return sum(1 / len(item["choices"]) for item in task.items) / len(task.items)


def metrics(task: Task, scores: list[tuple[float, bool]], pairs: list[tuple[list[int], list[int]]]) -> dict[str, float]:
    """Task metrics from (log-likelihood, greedy) per request and the requests' token ids, in
    `requests` order."""
    if task.kind == CLOZE:
        lls = [ll for ll, _ in scores]
        return {
            "acc": sum(greedy for _, greedy in scores) / len(scores),
            "perplexity": math.exp(-sum(lls) / len(lls)),
            "perplexity_per_token": math.exp(-sum(lls) / sum(len(target) for _, target in pairs)),
            "items": len(scores),
        }
    right = right_norm = at = 0
    for item in task.items:
        choices = item["choices"]
        lls = [ll for ll, _ in scores[at : at + len(choices)]]
        at += len(choices)
        right += _argmax(lls) == item["gold"]
        right_norm += _argmax([ll / len(c) for ll, c in zip(lls, choices)]) == item["gold"]
    n = len(task.items)
    return {"acc": right / n, "acc_norm": right_norm / n, "chance": chance(task), "items": n}


def _argmax(values: list[float]) -> int:
    return max(range(len(values)), key=lambda i: (values[i], -i))  # the first of equals, as numpy's
