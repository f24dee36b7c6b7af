"""The training data loader: packed Arrow shards -> micro-batches for one data-parallel rank.

The order of rows is a pure function of (seed, epoch): a seeded permutation of all rows of the
split. Each micro-batch round takes the next `dp_world * micro_batch` rows of that order and rank r
reads its own contiguous slice, so no two ranks see the same row in an epoch; an optimizer step
(`rows_per_step`, the global batch) is a whole number of rounds. The only state is
(epoch, position in the global order), which a checkpoint stores; resuming from it continues
with the very next rows, also under another data-parallel size, because the order does not
depend on the number of ranks.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from data_prep.shards import ShardError, open_shard, read_manifest, verify_shards
from pipeline.ground.hashing import file_sha256


@dataclass
class Batch:
    """inputs/targets [B, S]; positions (restarting at each segment with document masking); segment ids."""

    inputs: torch.Tensor
    targets: torch.Tensor
    positions: torch.Tensor
    segments: torch.Tensor
    rows: np.ndarray  # global row indices, for tests and for skipping data windows


class PackedDataset:
    """All rows of one split, memory-mapped; validated against what the trainer expects."""

    def __init__(self, folder: Path, split: str = "train", seq_len: int | None = None,
                 tokenizer_sha256: str | None = None, verify: bool = True,
                 manifest: dict[str, Any] | None = None) -> None:
        """`manifest`: the folder's manifest, when the caller has read it already."""
        self.folder = Path(folder)
        self.manifest = read_manifest(self.folder) if manifest is None else manifest
        if seq_len is not None and self.manifest["seq_len"] != seq_len:
            raise ShardError(f"{self.folder / 'manifest.json'}: shards have seq_len {self.manifest['seq_len']}, "
                             f"the training config asks for {seq_len}")
        if tokenizer_sha256 is not None and self.manifest["tokenizer"]["sha256"] != tokenizer_sha256:
            raise ShardError(f"{self.folder / 'manifest.json'}: shards were made with another tokenizer "
                             f"(sha256 {self.manifest['tokenizer']['sha256'][:12]}…, expected {tokenizer_sha256[:12]}…)")
        if split not in self.manifest["splits"]:
            raise ShardError(f"{self.folder}: no split {split!r} in the manifest")
        if verify:
            verify_shards(self.folder, self.manifest, split)
        width = self.manifest["row_width"]
        self.tables = [open_shard(self.folder / split / e["file"], width, e["sequences"])
                       for e in self.manifest["splits"][split]["shards"]]
        self.tokens = [t.column("tokens").combine_chunks() for t in self.tables]
        self.starts = [t.column("segment_starts").combine_chunks() for t in self.tables]
        self.offsets = np.concatenate([[0], np.cumsum([t.num_rows for t in self.tables])]).astype(np.int64)
        self.width = width
        self.pad_id = self.manifest["tokenizer"]["pad_id"]

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def rows(self, indices: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
        """Token rows [n, width] and their segment starts, for global row indices."""
        out = np.empty((len(indices), self.width), dtype=np.int64)
        starts = []
        for slot, index in enumerate(indices):
            shard = int(np.searchsorted(self.offsets, index, side="right") - 1)
            local = int(index - self.offsets[shard])
            values = self.tokens[shard].values
            out[slot] = values.slice(local * self.width, self.width).to_numpy()
            starts.append(self.starts[shard][local].values.to_numpy())
        return out, starts


def make_batch(rows: np.ndarray, starts: list[np.ndarray], indices: np.ndarray,
               document_positions: bool = True) -> Batch:
    """Split rows into inputs and targets and derive per-token positions and segment ids.

    Positions restart at each document only with `document_positions` (model.document_masking):
    a model that attends across documents sees a row as one stream, positions 0..S-1."""
    seq_len = rows.shape[1] - 1
    marks = np.zeros((len(rows), seq_len), dtype=np.int64)
    for row, offsets in enumerate(starts):
        marks[row, offsets[offsets < seq_len]] = 1
    marks[:, 0] = 1
    segments = np.cumsum(marks, axis=1)
    index = np.arange(seq_len)[None, :].repeat(len(rows), 0)
    segment_start = np.maximum.accumulate(np.where(marks == 1, index, 0), axis=1)
    return Batch(
        inputs=torch.from_numpy(rows[:, :-1].copy()),
        targets=torch.from_numpy(rows[:, 1:].copy()),
        positions=torch.from_numpy(index - segment_start if document_positions else index),
        segments=torch.from_numpy(segments),
        rows=indices,
    )


class DistributedLoader:
    """Micro-batches of rank `dp_rank` of `dp_world`, resumable from `state_dict()`."""

    def __init__(self, dataset: PackedDataset, micro_batch: int, dp_rank: int = 0, dp_world: int = 1,
                 seed: int = 0, rows_per_step: int | None = None, document_positions: bool = True) -> None:
        if not 0 <= dp_rank < dp_world:
            raise ValueError(f"dp_rank {dp_rank} is not in [0, {dp_world})")
        self.rows_per_step = rows_per_step or micro_batch * dp_world
        if self.rows_per_step % (micro_batch * dp_world):
            raise ValueError(f"rows_per_step {self.rows_per_step} is not a multiple of {dp_world} ranks x {micro_batch}")
        if len(dataset) < self.rows_per_step:
            raise ShardError(f"{dataset.folder}: {len(dataset)} rows cannot fill one step of {self.rows_per_step} rows")
        self.dataset, self.micro_batch = dataset, micro_batch
        self.dp_rank, self.dp_world, self.seed = dp_rank, dp_world, seed
        self.document_positions = document_positions
        self.epoch, self.position = 0, 0
        self._order_epoch, self._order = -1, np.zeros(0, np.int64)

    def order(self, epoch: int) -> np.ndarray:
        if epoch != self._order_epoch:
            self._order = np.random.default_rng([self.seed, epoch]).permutation(len(self.dataset))
            self._order_epoch = epoch
        return self._order

    def next_batch(self) -> Batch:
        """This rank's next micro-batch; every rank's call advances the shared global position."""
        span = self.micro_batch * self.dp_world
        at_step_start = self.position % self.rows_per_step == 0
        if at_step_start and self.position + self.rows_per_step > len(self.dataset):
            self.epoch, self.position = self.epoch + 1, 0  # the tail too short for a step is skipped
        start = self.position + self.dp_rank * self.micro_batch
        indices = self.order(self.epoch)[start:start + self.micro_batch]
        self.position += span
        return make_batch(*self.dataset.rows(indices), indices, self.document_positions)

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed,
                "rows": len(self.dataset), "manifest_sha256": manifest_hash(self.dataset.folder)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["rows"] != len(self.dataset) or state["seed"] != self.seed:
            raise ShardError(f"loader state was saved for {state['rows']} rows and seed {state['seed']}, "
                             f"this dataset has {len(self.dataset)} rows and seed {self.seed}")
        self.epoch, self.position = state["epoch"], state["position"]


def manifest_hash(folder: Path) -> str:
    return file_sha256(Path(folder) / "manifest.json")
