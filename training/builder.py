"""What a training run is built from, one part at a time: its shards, their datasets and loaders, the model
in its DeepSpeed engine, and the run folder's logs and checkpointer.

`training.engine.Trainer` calls these in order and keeps what they return; a rollback calls `build_engine`
again. Each part is checked where it is made, so a bad shard folder or layout is refused before any
process group or model exists.
"""

from __future__ import annotations

import gc
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from data_prep.shards import ShardError, ShardManifest, manifest_path, read_manifest
from pipeline.ground import storage
from pipeline.ground.errors import UserError
from pipeline.ground.hashing import file_sha256
from training import parallel
from training.checkpoint import Checkpointer
from training.config import TrainingConfig
from training.data import DistributedLoader, MixingLoader, PackedDataset, build_loader
from training.hooks import EventLog
from training.init import init_weights
from training.metrics import MetricsLog
from training.optim import build_optimizer
from training.preflight import check_splits
from training.shard_cache import ShardCache
from training.trackers import Trackers, prep_stats_of


@dataclass
class Shards:
    """The shards a run reads: as given (a folder or a URL), the local folder (a URL's view in the shard
    cache) and the manifest, read once."""

    given: storage.Location
    folder: Path
    remote: str | None  # the URL on object storage, if the shards are there
    cache: ShardCache | None  # the local shard cache, for remote shards
    manifest: ShardManifest

    @property
    def source(self) -> str:
        """Where the shards are, as checkpoints record it: the URL they were read from, or the local folder."""
        return str(self.given) if self.cache else str(self.folder.resolve())


def locate_shards(config: TrainingConfig, data_dir: storage.Location) -> Shards:
    """Open the shards folder (through the cache for a URL) and check it fits the config: its seq_len, its
    splits and its tokenizer's vocabulary."""
    remote = data_dir if storage.is_remote(data_dir) else None
    cache = ShardCache(config.train.shard_cache) if remote else None
    folder = cache.view(remote) if cache and remote else Path(data_dir)
    manifest = read_manifest(folder)
    if config.train.seq_len is not None and config.train.seq_len != manifest.seq_len:
        raise ShardError(
            f"{manifest_path(folder)}: shards hold seq_len {manifest.seq_len}, "
            f"train.seq_len is {config.train.seq_len}; re-pack with prep.pack.seq_len or change it"
        )
    check_splits(manifest, folder, needs_validation=config.train.eval_batches > 0)
    vocab = config.model.vocab_size or manifest.tokenizer.vocab_size
    if vocab < manifest.tokenizer.vocab_size:
        raise UserError(f"model.vocab_size {vocab} is smaller than the tokenizer's {manifest.tokenizer.vocab_size}")
    return Shards(data_dir, folder, remote, cache, manifest)


@dataclass
class Datasets:
    train: PackedDataset
    val: PackedDataset
    loader: DistributedLoader | MixingLoader  # plain, or mixing sources (`train.mixture`)


def open_datasets(shards: Shards, config: TrainingConfig, dp_rank: int, dp: int) -> Datasets:
    """Both splits, each shard checked against the tokenizer it was packed with, and this rank's loader."""
    tokenizer_sha = file_sha256(shards.folder / shards.manifest.tokenizer.file)
    train, val = (
        PackedDataset(
            shards.folder,
            split,
            shards.manifest.seq_len,
            tokenizer_sha,
            manifest=shards.manifest,
            remote=shards.remote,
            cache=shards.cache,
        )
        for split in ("train", "val")
    )
    return Datasets(train, val, build_loader(train, config, dp_rank, dp))


@dataclass
class EngineParts:
    engine: Any  # the DeepSpeed engine (untyped)
    scheduler: torch.optim.lr_scheduler.LambdaLR
    grad_accum: int


def build_engine(
    config: TrainingConfig,
    layout: parallel.Layout,
    vocab: int,
    pad_id: int,
    dtype: torch.dtype,
    initial_weights: Callable[[torch.nn.Module], None] | None,
    seeded_init: bool,
    load_universal: bool = False,
) -> EngineParts:
    """Model, optimizer, schedule and DeepSpeed engine; weights seeded (or `initial_weights`) unless
    `seeded_init` is False, as when a checkpoint is loaded next."""
    gc.collect()  # the engine this one replaces (a rollback's) is released first
    model = parallel.build_model(
        config.model,
        config.parallel,
        layout,
        vocab,
        pad_id,
        dtype,
        config.train.fp8_scaling if config.train.precision == "fp8" else None,
    )
    if seeded_init and initial_weights is not None:
        initial_weights(model)
    elif seeded_init:
        init_weights(model, config.train.seed, config.model.n_layers)
    parallel.seed_everything(config.train.seed, layout, model)
    model.to(layout.device)
    optimizer, scheduler = build_optimizer(model, config.train)
    if config.parallel.pp > 1:
        parallel.check_stage_groups(optimizer, config.parallel, layout)
    ds_config = parallel.deepspeed_config(
        config.train, config.parallel, layout, dtype == torch.bfloat16, load_universal
    )
    engine = parallel.build_engine(model, optimizer, scheduler, ds_config, config.parallel)
    return EngineParts(engine, scheduler, ds_config["gradient_accumulation_steps"])


@dataclass
class RunLogs:
    metrics: MetricsLog
    events: EventLog
    checkpointer: Checkpointer


def open_run_logs(run_dir: Path, config: TrainingConfig, shards: Shards, rank: int) -> RunLogs:
    """metrics.jsonl and the trackers, events.jsonl and the checkpointer; rank 0 writes the logs."""
    trackers = Trackers(
        run_dir,
        config.train.loggers,
        config.train.tracking,
        config.model_dump(mode="json"),
        prep_stats_of(shards.folder),
        enabled=rank == 0,
    )
    metrics = MetricsLog(run_dir, enabled=rank == 0, trackers=trackers)
    events = EventLog(run_dir, enabled=rank == 0, also=trackers.event)
    return RunLogs(metrics, events, Checkpointer(run_dir, config.checkpoint, rank, events))
