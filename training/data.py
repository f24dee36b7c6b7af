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

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from data_prep.shards import ShardError, ShardManifest, check_shard, manifest_path, open_shard, read_manifest
from pipeline.ground import storage
from pipeline.ground.hashing import file_sha256
from pipeline.ground.names import MANIFEST
from training import mixture
from training.mixture import Schedule, source_key
from training.config import ShardCacheConfig
from training.shard_cache import ShardCache
from training.metric_names import mix_target, mix_tokens

PREFETCH_STEPS = 8  # with shards on object storage, the shards of this many steps ahead are downloaded early


@dataclass
class Batch:
    """inputs/targets [B, S]; positions (restarting at each segment with document masking); segment ids."""

    inputs: torch.Tensor
    targets: torch.Tensor
    positions: torch.Tensor
    segments: torch.Tensor
    rows: np.ndarray  # global row indices, for tests and for skipping data windows
    per_token: dict[str, torch.Tensor] = field(
        default_factory=dict
    )  # the shards' further columns, aligned with targets


@dataclass
class Shard:
    """One opened shard: per record batch of its file, the flat token values and the segment starts,
    memory-mapped (never copied), with the first row of each batch and the row count after the last."""

    tokens: list[pa.Array]
    starts: list[pa.ListArray]
    bounds: np.ndarray
    per_token: dict[str, list[pa.Array]]  # further columns of one value per token (post-training), flat per batch


class PackedDataset:
    """All rows of one split, validated against what the trainer expects, opened a shard at a time.

    Opening reads the manifest and stats each file (a missing or resized one is refused at once), so
    it takes the same time for 10 shards or 10,000; a shard is memory-mapped, its shape checked and,
    with `verify`, its SHA-256 compared the first time one of its rows is read, once per dataset.
    Shards on object storage (`remote`, with `folder` its local view) are read through `cache`."""

    def __init__(
        self,
        folder: Path,
        split: str = "train",
        seq_len: int | None = None,
        tokenizer_sha256: str | None = None,
        verify: bool = True,
        manifest: ShardManifest | None = None,
        remote: str | None = None,
        cache: ShardCache | None = None,
    ) -> None:
        """`manifest`: the folder's manifest, when the caller has read it already."""
        self.folder, self.split = Path(folder), split
        self.remote, self.cache = remote, cache
        self.manifest = read_manifest(self.folder) if manifest is None else manifest
        if seq_len is not None and self.manifest.seq_len != seq_len:
            raise ShardError(
                f"{manifest_path(self.folder)}: shards have seq_len {self.manifest.seq_len}, "
                f"the training config asks for {seq_len}"
            )
        if tokenizer_sha256 is not None and self.manifest.tokenizer.sha256 != tokenizer_sha256:
            raise ShardError(
                f"{manifest_path(self.folder)}: shards were made with another tokenizer "
                f"(sha256 {self.manifest.tokenizer.sha256[:12]}…, expected {tokenizer_sha256[:12]}…)"
            )
        if split not in self.manifest.splits:
            raise ShardError(f"{self.folder}: no split {split!r} in the manifest")
        self.entries = self.manifest.splits[split].shards
        self.paths = [self.folder / split / e.file for e in self.entries]
        if cache is None:
            for path, entry in zip(self.paths, self.entries):
                check_shard(path, entry, full=False)
        else:
            cache.check_sizes(self._url(), self.entries)
        self.verify = verify
        self.offsets = np.concatenate([[0], np.cumsum([e.sequences for e in self.entries])]).astype(np.int64)
        self.width = self.manifest.row_width
        self.pad_id = self.manifest.tokenizer.pad_id
        self.shard_sources = [e.source for e in self.entries]  # None: untagged
        self.shard_languages = [e.language for e in self.entries]
        self._shards: dict[int, Shard] = {}

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def _url(self, *parts: str) -> str:
        """This split's folder, or a file in it, in object storage: a dataset read through a cache has `remote`."""
        if self.remote is None:
            raise ValueError("a PackedDataset read through a shard cache needs `remote`, the shards' URL")
        return storage.join_url(self.remote, self.split, *parts)

    def shard(self, index: int) -> Shard:
        """Shard `index`, opened and checked on its first use."""
        opened = self._shards.get(index)
        if opened is None:
            entry = self.entries[index]
            path, check_hash = self._local_file(index)
            check_shard(path, entry, full=check_hash)
            table = open_shard(path, self.width, entry.sequences)
            tokens, starts = table.column("tokens").chunks, table.column("segment_starts").chunks
            bounds = np.cumsum([0, *(len(chunk) for chunk in tokens)])
            per_token = {
                name: [chunk.values for chunk in table.column(name).chunks]
                for name in table.column_names
                if name not in ("tokens", "segment_starts")
            }
            opened = self._shards[index] = Shard([chunk.values for chunk in tokens], starts, bounds, per_token)
        return opened

    def _local_file(self, index: int) -> tuple[Path, bool]:
        """Shard `index`'s file on this machine (downloaded first from object storage) and whether its hash
        is still to be checked; shards the cache evicted to make room are closed."""
        if self.cache is None:
            return self.paths[index], self.verify
        path, checked, evicted = self.cache.fetch(self._url(self.entries[index].file), self.entries[index])
        for number in [i for i in self._shards if self.entries[i].sha256 in evicted]:
            del self._shards[number]
        return path, self.verify and not checked

    def prefetch(self, indices: np.ndarray) -> None:
        """Start downloading the shards of these rows (the loader's next ones), in the order they are needed."""
        if self.cache is None or not len(indices):
            return
        numbers = np.searchsorted(self.offsets, indices, side="right") - 1
        _, first = np.unique(numbers, return_index=True)
        self.cache.prefetch(
            [
                (self._url(self.entries[i].file), self.entries[i])
                for i in numbers[np.sort(first)].tolist()
                if i not in self._shards
            ]
        )

    def _locate(self, indices: np.ndarray) -> Iterator[tuple[int, Shard, int, int]]:
        """(slot, shard, record batch, row inside it) of each global row index."""
        numbers = np.searchsorted(self.offsets, indices, side="right") - 1
        for slot, (number, local) in enumerate(zip(numbers.tolist(), (indices - self.offsets[numbers]).tolist())):
            shard = self.shard(number)
            batch = int(np.searchsorted(shard.bounds, local, side="right") - 1) if len(shard.tokens) > 1 else 0
            yield slot, shard, batch, local - int(shard.bounds[batch])

    def rows(self, indices: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
        """Token rows [n, width] and their segment starts, for global row indices."""
        out = np.empty((len(indices), self.width), dtype=np.int64)
        starts = []
        for slot, shard, batch, local in self._locate(indices):
            out[slot] = shard.tokens[batch].slice(local * self.width, self.width).to_numpy()
            starts.append(shard.starts[batch][local].values.to_numpy())
        return out, starts

    def per_token(self, indices: np.ndarray) -> dict[str, np.ndarray]:
        """The further per-token columns of rows (none in pretraining shards): name -> [n, width]."""
        columns: dict[str, list[np.ndarray]] = {}
        for _, shard, batch, local in self._locate(indices):
            for name, chunks in shard.per_token.items():
                columns.setdefault(name, []).append(chunks[batch].slice(local * self.width, self.width).to_numpy())
        return {name: np.stack(rows) for name, rows in columns.items()}

    def batch(self, indices: np.ndarray, document_positions: bool = True) -> Batch:
        """The micro-batch of these global rows."""
        return make_batch(*self.rows(indices), indices, document_positions, self.per_token(indices), self.pad_id)


LOSS_MASK = "loss_mask"  # a per-token column: 1 where the token is a target the loss counts (SFT: the assistant's)


@contextmanager
def open_split(
    location: storage.Location,
    split: str,
    seq_len: int | None,
    tokenizer_sha256: str | None,
    cache_config: ShardCacheConfig,
) -> Iterator[PackedDataset]:
    """One split of a shards folder on disk, or of its s3:// URL read through a shard cache made for the
    purpose (closed when done)."""
    if not storage.is_remote(location):
        yield PackedDataset(Path(location), split, seq_len, tokenizer_sha256)
        return
    cache = ShardCache(cache_config)
    try:
        yield PackedDataset(
            cache.view(str(location)), split, seq_len, tokenizer_sha256, remote=str(location), cache=cache
        )
    finally:
        cache.close()


def make_batch(
    rows: np.ndarray,
    starts: list[np.ndarray],
    indices: np.ndarray,
    document_positions: bool = True,
    per_token: dict[str, np.ndarray] | None = None,
    pad_id: int = 0,
) -> Batch:
    """Split rows into inputs and targets and derive per-token positions and segment ids.

    Positions restart at each document only with `document_positions` (model.document_masking):
    a model that attends across documents sees a row as one stream, positions 0..S-1. A `LOSS_MASK`
    column turns the targets it leaves out into `pad_id`, which every loss and token count skips."""
    seq_len = rows.shape[1] - 1
    marks = np.zeros((len(rows), seq_len), dtype=np.int64)
    for row, offsets in enumerate(starts):
        marks[row, offsets[offsets < seq_len]] = 1
    marks[:, 0] = 1
    segments = np.cumsum(marks, axis=1)
    index = np.arange(seq_len)[None, :].repeat(len(rows), 0)
    segment_start = np.maximum.accumulate(np.where(marks == 1, index, 0), axis=1)
    per_token = per_token or {}
    targets = rows[:, 1:].copy()
    if LOSS_MASK in per_token:
        targets[per_token[LOSS_MASK][:, 1:] == 0] = pad_id
    return Batch(
        inputs=torch.from_numpy(rows[:, :-1].copy()),
        targets=torch.from_numpy(targets),
        positions=torch.from_numpy(index - segment_start if document_positions else index),
        segments=torch.from_numpy(segments),
        rows=indices,
        per_token={name: torch.from_numpy(values[:, 1:].copy()) for name, values in per_token.items()},
    )


def too_few_rows(dataset: PackedDataset | SourceRows, rows_per_step: int) -> str:
    """Why a split cannot fill one global batch (what training and validation read per step), with the ways out."""
    validation = dataset.split == "val"
    fixes = (
        (
            "add data or raise prep.pack.val_fraction and prep again, lower train.global_batch_size, or set "
            "train.eval_batches=0 to train without validation"
        )
        if validation
        else "add data, or lower train.global_batch_size"
    )
    return (
        f"{dataset.folder}: the {'validation' if validation else dataset.split} split holds {len(dataset):,} "
        f"rows, fewer than one global batch of {rows_per_step:,} (train.global_batch_size): {fixes}"
    )


class DistributedLoader:
    """Micro-batches of rank `dp_rank` of `dp_world`, resumable from `state_dict()`."""

    def __init__(
        self,
        dataset: PackedDataset | SourceRows,
        micro_batch: int,
        dp_rank: int = 0,
        dp_world: int = 1,
        seed: int = 0,
        rows_per_step: int | None = None,
        document_positions: bool = True,
    ) -> None:
        if not 0 <= dp_rank < dp_world:
            raise ValueError(f"dp_rank {dp_rank} is not in [0, {dp_world})")
        self.rows_per_step = rows_per_step or micro_batch * dp_world
        if self.rows_per_step % (micro_batch * dp_world):
            raise ValueError(
                f"rows_per_step {self.rows_per_step} is not a multiple of {dp_world} ranks x {micro_batch}"
            )
        if len(dataset) < self.rows_per_step:
            raise ShardError(too_few_rows(dataset, self.rows_per_step))
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
        if at_step_start:
            self.dataset.prefetch(
                self.order(self.epoch)[self.position : self.position + PREFETCH_STEPS * self.rows_per_step]
            )
        start = self.position + self.dp_rank * self.micro_batch
        indices = self.order(self.epoch)[start : start + self.micro_batch]
        self.position += span
        return self.dataset.batch(indices, self.document_positions)

    def metrics(self) -> dict[str, float]:
        """Nothing per source to report: one stream of rows."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "position": self.position,
            "seed": self.seed,
            "rows": len(self.dataset),
            "manifest_sha256": manifest_hash(self.dataset.folder),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "drawn" in state:
            raise ShardError("the checkpoint's loader state is from a run with train.mixture; set it again to resume")
        if state["rows"] != len(self.dataset) or state["seed"] != self.seed:
            raise ShardError(
                f"loader state was saved for {state['rows']} rows and seed {state['seed']}, "
                f"this dataset has {len(self.dataset)} rows and seed {self.seed}"
            )
        self.epoch, self.position = state["epoch"], state["position"]


def unit_name(source: str | None, language: str | None) -> str | None:
    """What a mixture mixes: `source/language`, a bare source or language, None where a shard is untagged."""
    return "/".join(tag for tag in (source, language) if tag) or None


def shard_units(dataset: PackedDataset) -> list[str | None]:
    return [unit_name(s, lang) for s, lang in zip(dataset.shard_sources, dataset.shard_languages)]


def tagged_names(dataset: PackedDataset) -> list[str]:
    """Every source and source/language the dataset's shards are tagged with, sorted."""
    return sorted({name for name in [*dataset.shard_sources, *shard_units(dataset)] if name is not None})


def source_members(dataset: PackedDataset, name: str) -> np.ndarray:
    """The global row indices of `name`, a source or a source/language (its shards' rows, in shard order)."""
    spans = [
        np.arange(a, b)
        for a, b, source, unit in zip(
            dataset.offsets[:-1], dataset.offsets[1:], dataset.shard_sources, shard_units(dataset)
        )
        if name in (source, unit)
    ]
    return np.concatenate([*spans, np.zeros(0, np.int64)])


UNTAGGED = (
    "train.mixture needs shards tagged by source or language; run prep with prep.sources or prep.pack.split_by_language"
)


class MixingLoader:
    """Micro-batches that draw each global row slot from the source `schedule` assigns it.

    Within a source, rows come in a seeded permutation per (source, epoch), epoch after epoch.
    The state is the global position and the rows drawn so far from each source; both are the
    same on every rank (each rank computes the whole global batch and keeps its slice), so the
    global batches do not depend on the DP size and a resume continues with the very next rows.
    Rows are worked out a block of steps at a time, with the per-source counts at each step's end.
    """

    BLOCK_STEPS = 256

    def __init__(
        self,
        dataset: PackedDataset,
        micro_batch: int,
        dp_rank: int,
        dp_world: int,
        seed: int,
        rows_per_step: int,
        schedule: Schedule,
        document_positions: bool = True,
    ) -> None:
        if not 0 <= dp_rank < dp_world:
            raise ValueError(f"dp_rank {dp_rank} is not in [0, {dp_world})")
        if rows_per_step % (micro_batch * dp_world):
            raise ValueError(f"rows_per_step {rows_per_step} is not a multiple of {dp_world} ranks x {micro_batch}")
        if None in shard_units(dataset):
            raise ShardError(f"{dataset.folder}: {UNTAGGED}")
        self.dataset, self.micro_batch, self.rows_per_step = dataset, micro_batch, rows_per_step
        self.dp_rank, self.dp_world, self.seed, self.schedule = dp_rank, dp_world, seed, schedule
        self.document_positions = document_positions
        self.members = [source_members(dataset, name) for name in schedule.sources]
        self.keys = [source_key(name) for name in schedule.sources]
        self.position = 0
        self.drawn = np.zeros(len(schedule.sources), dtype=np.int64)  # rows drawn per source up to `position`
        self.tokens = np.zeros(len(schedule.sources), dtype=np.int64)  # their real (non-padding) targets
        index: dict[str | None, int] = {name: i for i, name in enumerate(schedule.sources)}
        self.shard_source = np.array([index.get(unit, -1) for unit in shard_units(dataset)], dtype=np.int64)
        self._block_start, self._block_rows = -1, np.zeros(0, np.int64)
        self._block_drawn: np.ndarray = np.zeros((0, 0))  # per-source counts after each step of the block
        self._orders: dict[int, tuple[int, np.ndarray]] = {}

    def source_rows(self) -> np.ndarray:
        return np.array([len(m) for m in self.members], dtype=np.int64)

    def _order(self, source: int, epoch: int) -> np.ndarray:
        cached = self._orders.get(source)
        if cached is None or cached[0] != epoch:
            order = np.random.default_rng([self.seed, self.keys[source], epoch]).permutation(len(self.members[source]))
            cached = self._orders[source] = (epoch, order)
        return cached[1]

    def _draw_block(self) -> None:
        """The global rows of the next BLOCK_STEPS steps and the per-source counts after each of them."""
        count = self.BLOCK_STEPS * self.rows_per_step
        chosen = self.schedule.sources_of(self.position, count, self.rows_per_step)
        rows = np.empty(count, dtype=np.int64)
        for source in np.unique(chosen).tolist():
            slots = np.flatnonzero(chosen == source)
            cursor = self.drawn[source] + np.arange(len(slots))
            n = len(self.members[source])
            epochs = cursor // n
            for epoch in np.unique(epochs).tolist():
                at = epochs == epoch
                rows[slots[at]] = self.members[source][self._order(source, epoch)[cursor[at] % n]]
        per_step = np.zeros((self.BLOCK_STEPS, len(self.drawn)), dtype=np.int64)
        np.add.at(per_step, (np.arange(count) // self.rows_per_step, chosen), 1)
        self._block_start, self._block_rows = self.position, rows
        self._block_drawn = self.drawn + np.cumsum(per_step, axis=0)

    def next_batch(self) -> Batch:
        """This rank's next micro-batch; every rank's call advances the shared global position."""
        offset = self.position - self._block_start
        if self._block_start < 0 or offset >= len(self._block_rows):
            self._draw_block()
            offset = 0
        if self.position % self.rows_per_step == 0:
            self.dataset.prefetch(self._block_rows[offset : offset + PREFETCH_STEPS * self.rows_per_step])
        start = offset + self.dp_rank * self.micro_batch
        indices = self._block_rows[start : start + self.micro_batch]
        self.position += self.micro_batch * self.dp_world
        if self.position % self.rows_per_step == 0:
            self.drawn = self._block_drawn[(self.position - self._block_start) // self.rows_per_step - 1]
        return self.dataset.batch(indices, self.document_positions)

    def source_tokens(self, batches: list[Batch], pad_id: int) -> np.ndarray:
        """Real (non-padding) targets per source in `batches` (this rank's); the trainer sums them over
        data-parallel ranks into `add_tokens`."""
        counts = np.zeros(len(self.tokens), dtype=np.int64)
        for batch in batches:
            sources = self.shard_source[np.searchsorted(self.dataset.offsets, batch.rows, side="right") - 1]
            counts += np.bincount(
                sources, weights=(batch.targets != pad_id).sum(1).numpy(), minlength=len(counts)
            ).astype(np.int64)
        return counts

    def add_tokens(self, counts: np.ndarray) -> None:
        self.tokens += counts

    def metrics(self) -> dict[str, float]:
        """Real tokens drawn so far per source (padding left out, as in `tokens`) and the target fractions
        of the last step drawn, for metrics.jsonl."""
        weights = self.schedule.weights[self.schedule.phase(max(0, self.position - 1) // self.rows_per_step)]
        return {
            key: value
            for name, tokens, weight in zip(self.schedule.sources, self.tokens.tolist(), weights.tolist())
            for key, value in ((mix_tokens(name), tokens), (mix_target(name), weight))
        }

    def state_dict(self) -> dict[str, Any]:
        if self.position % self.rows_per_step:
            raise RuntimeError("the mixing loader's state is taken between steps only")
        return {
            "position": self.position,
            "drawn": dict(zip(self.schedule.sources, self.drawn.tolist())),
            "tokens": dict(zip(self.schedule.sources, self.tokens.tolist())),
            "seed": self.seed,
            "rows": len(self.dataset),
            "manifest_sha256": manifest_hash(self.dataset.folder),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "drawn" not in state:
            raise ShardError(
                "the checkpoint's loader state is from a run without train.mixture; resume without it "
                "or start a fresh run (--resume none)"
            )
        if (
            state["rows"] != len(self.dataset)
            or state["seed"] != self.seed
            or sorted(state["drawn"]) != sorted(self.schedule.sources)
        ):
            raise ShardError(
                f"loader state was saved for {state['rows']} rows, seed {state['seed']} and sources "
                f"{sorted(state['drawn'])}; this run has {len(self.dataset)} rows, seed {self.seed} and "
                f"sources {sorted(self.schedule.sources)}"
            )
        self.position = state["position"]
        self.drawn = np.array([state["drawn"][name] for name in self.schedule.sources], dtype=np.int64)
        # Checkpoints saved before real tokens were counted hold rows only: full rows is what they logged.
        tokens = state.get("tokens") or {name: n * (self.dataset.width - 1) for name, n in state["drawn"].items()}
        self.tokens = np.array([tokens[name] for name in self.schedule.sources], dtype=np.int64)
        self._block_start = -1


class SourceRows:
    """The rows of one source (or language) of a dataset, as a dataset of their own (validation loss per source)."""

    def __init__(self, dataset: PackedDataset, members: np.ndarray) -> None:
        self.dataset, self.members, self.folder, self.split = dataset, members, dataset.folder, dataset.split

    def __len__(self) -> int:
        return len(self.members)

    def rows(self, indices: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
        return self.dataset.rows(self.members[indices])

    def prefetch(self, indices: np.ndarray) -> None:
        self.dataset.prefetch(self.members[indices])

    def batch(self, indices: np.ndarray, document_positions: bool = True) -> Batch:
        return make_batch(
            *self.rows(indices),
            indices,
            document_positions,
            self.dataset.per_token(self.members[indices]),
            self.dataset.pad_id,
        )


def source_views(dataset: PackedDataset, min_rows: int) -> dict[str, SourceRows]:
    """Per named source and per source/language, its rows of `dataset`; those with fewer than `min_rows`
    (one global batch) are left out."""
    views = {}
    for name in tagged_names(dataset):
        members = source_members(dataset, name)
        if len(members) >= min_rows:
            views[name] = SourceRows(dataset, members)
    return views


def source_sizes(manifest: ShardManifest, split: str = "train") -> tuple[dict[str, int], dict[str, int]]:
    """(rows, document tokens) per mixed unit of a split (a source, or source/language), from the
    manifest (empty when untagged)."""
    rows: dict[str, int] = {}
    counts = manifest.split(split)
    for entry in counts.shards:
        unit = unit_name(entry.source, entry.language)
        if unit is not None:
            rows[unit] = rows.get(unit, 0) + entry.sequences
    tokens = {unit_name(None, lang): c.tokens for lang, c in (counts.languages or {}).items()}
    for source, c in (counts.sources or {}).items():
        tokens |= {unit_name(source, lang): by.tokens for lang, by in (c.languages or {}).items()}
        tokens[source] = c.tokens
    return rows, {name: tokens.get(name, 0) for name in rows}


def build_loader(dataset: PackedDataset, config: Any, dp_rank: int, dp_world: int) -> DistributedLoader | MixingLoader:
    """The training loader `config.train` asks for: plain, or mixing sources with the repetition cap checked."""
    train, document_positions = config.train, config.model.document_masking
    if train.mixture is None:
        return DistributedLoader(
            dataset,
            train.micro_batch_size,
            dp_rank,
            dp_world,
            seed=train.data_seed,
            rows_per_step=train.global_batch_size,
            document_positions=document_positions,
        )
    rows, tokens = source_sizes(dataset.manifest)
    if not rows:
        raise ShardError(f"{dataset.folder}: {UNTAGGED}")
    schedule = mixture.resolve(train.mixture, tokens, train.max_steps, train.data_seed)
    loader = MixingLoader(
        dataset,
        train.micro_batch_size,
        dp_rank,
        dp_world,
        train.data_seed,
        train.global_batch_size,
        schedule,
        document_positions,
    )
    mixture.check_repetition(
        schedule,
        loader.source_rows(),
        mixture.caps(train.mixture, schedule.sources),
        train.max_steps,
        train.global_batch_size,
    )
    return loader


def manifest_hash(folder: Path) -> str:
    return file_sha256(Path(folder) / MANIFEST)
