"""The `eval` verb's work: score task files on one checkpoint, of any training layout.

The checkpoint is consolidated into a single-process model (as for `generate`) and scored with
the same packing and scorer the training loop uses, so a task's accuracy at a step is the same
in the loop and here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from training.scoring import encode_tasks, score
from training.tasks import Task, metrics

BATCH_ROWS = 8  # rows of seq_len tokens per forward pass


def evaluate_checkpoint(checkpoint: Path, tasks: list[Task], tokenizer_file: Path) -> dict[str, dict[str, Any]]:
    """Per task: its metrics, item count, kind, file, and (log-likelihood, greedy) per request."""
    from training.export import tokenizer_record
    from training.generate import load_model

    model, meta = load_model(checkpoint)
    record = tokenizer_record(meta)
    document_masking = meta["config"]["model"]["document_masking"]

    def forward(inputs: torch.Tensor, positions: torch.Tensor, segments: torch.Tensor, _: torch.Tensor) -> torch.Tensor:
        return model(inputs, positions, segments)

    results = {}
    for task, pairs in zip(tasks, encode_tasks(tasks, tokenizer_file, record["eod_id"])):
        scores = score(forward, pairs, meta["seq_len"], BATCH_ROWS, record["pad_id"], torch.device("cpu"),
                       one_per_row=not document_masking)
        results[task.name] = {**metrics(task, scores), "kind": task.kind, "file": str(task.path),
                              "requests": [[ll, greedy] for ll, greedy in scores]}
    return results
