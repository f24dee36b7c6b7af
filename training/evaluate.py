"""The `eval` verb's work: score task files, and the held-out loss, on one checkpoint of any layout.

The checkpoint is consolidated into a single-process model (as for `generate`) and scored with
the same packing and scorer the training loop uses, so a task's accuracy at a step is the same
in the loop and here. The held-out loss is the loop's validation loss (the same rows, positions
and loss per valid target), over the whole validation split or a sample of it, per source and
per source/language where the shards are tagged.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.ground import storage
from pipeline.ground.errors import UserError
from training.config import ShardCacheConfig
from training.data import PackedDataset, make_batch, open_split, source_members, tagged_names
from training.scoring import Pair, encode_tasks, score
from training.tasks import Task, metrics

BATCH_ROWS = 8  # rows of seq_len tokens per forward pass


def evaluate_checkpoint(checkpoint: Path, tasks: list[Task], tokenizer_file: Path) -> dict[str, dict[str, Any]]:
    """Per task: its metrics, item count, kind, file, and (log-likelihood, greedy) per request."""
    from training.checkpoint_meta import read_meta, tokenizer_record

    meta = read_meta(checkpoint)
    seq_len, _ = meta.trained_shape(checkpoint)
    encoded = encode_tasks(tasks, tokenizer_file, tokenizer_record(meta).eod_id, seq_len)  # refuses first
    results = {}
    for task, pairs, scores in zip(tasks, encoded, score_requests(checkpoint, encoded)):
        results[task.name] = {
            **metrics(task, scores, pairs),
            "kind": task.kind,
            "file": str(task.path),
            "requests": [[ll, greedy] for ll, greedy in scores],
        }
    return results


def score_requests(checkpoint: Path, encoded: list[list[Pair]]) -> list[list[tuple[float, bool]]]:
    """(log-likelihood, greedy) of each (context ids, continuation ids) request of each list, by the checkpoint's
    model in this process."""
    from training.checkpoint_meta import tokenizer_record
    from training.generate import load_model

    model, meta = load_model(checkpoint)
    seq_len, _ = meta.trained_shape(checkpoint)
    document_masking = meta.config.model["document_masking"]

    def forward(inputs: torch.Tensor, positions: torch.Tensor, segments: torch.Tensor, _: torch.Tensor) -> torch.Tensor:
        return model(inputs, positions, segments)

    return [
        score(
            forward,
            pairs,
            seq_len,
            BATCH_ROWS,
            tokenizer_record(meta).pad_id,
            torch.device("cpu"),
            one_per_row=not document_masking,
        )
        for pairs in encoded
    ]


ALL_ROWS = "(all)"  # no source is named so: names are letters, digits, '.', '_' and '-'


def heldout_groups(dataset: PackedDataset, max_rows: int | None) -> dict[str, np.ndarray]:
    """The rows scored per group: the whole split (`ALL_ROWS`), each source, each source/language;
    with `max_rows`, a seeded sample of that many rows of each (the same on every call)."""
    groups = {ALL_ROWS: np.arange(len(dataset))} | {
        name: source_members(dataset, name) for name in tagged_names(dataset)
    }
    if max_rows is not None:
        groups = {name: np.sort(np.random.default_rng(0).permutation(rows)[:max_rows]) for name, rows in groups.items()}
    return groups


def heldout_loss(
    checkpoint: Path, data: storage.Location, cache: ShardCacheConfig, max_rows: int | None = None
) -> dict[str, dict[str, float]]:
    """Per group of the validation split: rows, valid target tokens, mean loss per token and perplexity.
    `data`: the shards folder, or its s3:// URL (read through a shard cache with the `cache` settings)."""
    from training.checkpoint_meta import tokenizer_record
    from training.generate import load_model
    from training.model import lm_loss

    model, meta = load_model(checkpoint)
    record = tokenizer_record(meta)
    with open_split(data, "val", meta.seq_len, record.sha256, cache) as dataset:
        if not len(dataset):
            raise UserError(f"{data}: the validation split has no rows; prep with prep.pack.val_fraction > 0")
        groups = heldout_groups(dataset, max_rows)
        needed = np.unique(np.concatenate(list(groups.values())))
        sums, counts = {}, {}  # per row: summed loss over its valid targets, and their count
        one = torch.ones(())
        with torch.no_grad():
            for first in range(0, len(needed), BATCH_ROWS):
                indices = needed[first : first + BATCH_ROWS]
                batch = make_batch(*dataset.rows(indices), indices, meta.config.model["document_masking"])
                logits = model(batch.inputs, batch.positions, batch.segments)
                for row, index in enumerate(indices.tolist()):
                    sums[index] = float(
                        lm_loss(logits[row : row + 1], batch.targets[row : row + 1], record.pad_id, one)
                    )
                    counts[index] = int((batch.targets[row] != record.pad_id).sum())
    results = {}
    for name, rows in groups.items():
        tokens = sum(counts[r] for r in rows.tolist())
        loss = sum(sums[r] for r in rows.tolist()) / max(1, tokens)
        results[name] = {"rows": len(rows), "tokens": tokens, "loss": loss, "perplexity": math.exp(loss)}
    return results
