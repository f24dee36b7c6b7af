"""Checkpoints that survive a kill at any moment, and know when they are damaged.

A save is staged: every rank writes its DeepSpeed shards (model, optimizer, ZeRO partitions)
and its RNG state under `checkpoints/.staging/<tag>/`; then rank 0 writes `crucible.json`
(step, loader position, config, shard-manifest hash, a SHA-256 of every file, health) and
publishes the folder with one rename, then moves the `latest` pointer with another. A kill
before the rename leaves only staging debris and `latest` on the previous checkpoint. Loading
verifies the hashes first and falls back to the previous good checkpoint when a file is damaged.
A run resumed under another layout loads DeepSpeed's universal form of the checkpoint, which
re-partitions ZeRO optimizer state and re-slices tensor/pipeline-parallel weights.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from pipeline.ground.atomic import atomic_path
from pipeline.ground.errors import UserError
from pipeline.ground.hashing import file_sha256
from pipeline.ground.names import CHECKPOINT_META as META
from pipeline.ground.names import UNIVERSAL
from training.config import CheckpointConfig
from training.export import convert_to_universal
from training.model import EMBED_WEIGHT, NORM_WEIGHT, ROW_PARALLEL

UNIVERSAL_CHECKPOINT_INFO = "universal_checkpoint_info"

STAGING = ".staging"
LATEST = "latest"


def _ending(name: str) -> str:
    return f".*{re.escape(name)}$"


def universal_checkpoint_info() -> dict[str, Any]:
    """How DeepSpeed's universal-checkpoint conversion must merge this model's TP shards."""
    from deepspeed.checkpoint import constants

    return {
        constants.UNIVERSAL_CHECKPOINT_VERSION_KEY: constants.UNIVERSAL_CHECKPOINT_VERSION_VALUE,
        constants.TP_REPLICATED_PARAMETER_PATTERNS: [_ending(NORM_WEIGHT)],
        constants.PARAMETER_WITH_ROW_PARALLELISM_PATTERNS: [_ending(name) for name in ROW_PARALLEL],
        constants.PIPELINE_REPLICATED_PARAMETER_PATTERNS: [_ending(EMBED_WEIGHT)],
    }


class CorruptCheckpoint(UserError):
    """A checkpoint whose files do not match their recorded hashes (or are missing)."""


@dataclass(frozen=True)
class CheckpointInfo:
    path: Path
    step: int
    healthy: bool
    meta: dict[str, Any]


def tag_for(step: int) -> str:
    return f"step-{step:08d}"


def _rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


class Checkpointer:
    def __init__(self, run_dir: Path, config: CheckpointConfig, rank: int) -> None:
        self.root = Path(run_dir) / "checkpoints"
        self.config, self.rank = config, rank

    # -- listing -------------------------------------------------------------------------

    def published(self) -> list[CheckpointInfo]:
        """Published checkpoints, oldest first (a folder counts only with its crucible.json)."""
        found = []
        for meta_path in sorted(self.root.glob(f"step-*/{META}")):
            meta = json.loads(meta_path.read_text())
            found.append(CheckpointInfo(meta_path.parent, meta["step"], meta["healthy"], meta))
        return sorted(found, key=lambda c: c.step)

    def latest(self) -> CheckpointInfo | None:
        pointer = self.root / LATEST
        if not pointer.exists():
            return None
        tag = pointer.read_text().strip()
        return next((c for c in self.published() if c.path.name == tag), None)

    def verify(self, info: CheckpointInfo) -> None:
        for name, digest in info.meta["files"].items():
            path = info.path / name
            if not path.exists():
                raise CorruptCheckpoint(f"checkpoint {info.path.name}: file {path} is missing")
            if file_sha256(path) != digest:
                raise CorruptCheckpoint(f"checkpoint {info.path.name}: file {path} does not match its SHA-256")

    def resolve(self, resume: str, events: Any) -> CheckpointInfo | None:
        """The checkpoint to start from: `none`, `auto` (latest good) or a checkpoint folder."""
        if resume == "none":
            return None
        if resume != "auto":
            path = Path(resume)
            meta_path = path / META
            if not meta_path.exists():
                raise UserError(f"--resume {resume}: not a checkpoint folder (no {META})")
            meta = json.loads(meta_path.read_text())
            info = CheckpointInfo(path, meta["step"], meta["healthy"], meta)
            if self.config.verify:
                self.verify(info)
            return info
        latest = self.latest()
        candidates = [c for c in self.published() if latest is None or c.step <= latest.step]
        for info in reversed(candidates):
            try:
                if self.config.verify:
                    self.verify(info)
                return info
            except CorruptCheckpoint as exc:
                events.log({"event": "corrupt_checkpoint", "checkpoint": info.path.name, "error": str(exc)})
                if self.rank == 0:
                    print(f"warning: {exc}; falling back to the previous checkpoint", flush=True)
        return None

    def last_healthy(self, before_step: int) -> CheckpointInfo | None:
        for info in reversed(self.published()):
            if info.healthy and info.step <= before_step:
                try:
                    if self.config.verify:
                        self.verify(info)
                    return info
                except CorruptCheckpoint:
                    continue
        return None

    # -- saving --------------------------------------------------------------------------

    def save(self, engine: Any, step: int, meta: dict[str, Any]) -> Path:
        """Collective: every rank calls it. Returns the published folder."""
        tag = tag_for(step)
        staging = self.root / STAGING
        if self.rank == 0:
            shutil.rmtree(staging / tag, ignore_errors=True)
        dist.barrier()
        engine.save_checkpoint(str(staging), tag=tag, save_latest=False,
                               client_state={UNIVERSAL_CHECKPOINT_INFO: universal_checkpoint_info()})
        torch.save(_rng_state(), staging / tag / f"rng-{dist.get_rank():05d}.pt")
        dist.barrier()
        final = self.root / tag
        if self.rank == 0:
            files = {str(p.relative_to(staging / tag)): file_sha256(p)
                     for p in sorted((staging / tag).rglob("*")) if p.is_file()}
            (staging / tag / META).write_text(json.dumps(meta | {"step": step, "files": files}, indent=2, sort_keys=True))
            if final.exists():
                shutil.rmtree(final)
            os.replace(staging / tag, final)
            with atomic_path(self.root / LATEST) as tmp:
                tmp.write_text(tag + "\n")
            self.prune()
        dist.barrier()
        return final

    def prune(self) -> None:
        """Keep the newest keep_last, every keep_every-th, `latest`, and the newest healthy one."""
        checkpoints = self.published()
        keep = {c.path for c in checkpoints[-self.config.keep_last:]}
        if self.config.keep_every:
            keep |= {c.path for c in checkpoints if c.step % self.config.keep_every == 0}
        latest = self.latest()
        if latest is not None:
            keep.add(latest.path)
        healthy = [c for c in checkpoints if c.healthy]
        if healthy:
            keep.add(healthy[-1].path)
        for info in checkpoints:
            if info.path not in keep:
                shutil.rmtree(info.path, ignore_errors=True)

    # -- loading -------------------------------------------------------------------------

    def universal(self, info: CheckpointInfo) -> Path:
        """Collective: DeepSpeed's layout-free form of `info` (made once by rank 0, then cached)."""
        target = self.root / UNIVERSAL / info.path.name
        if self.rank == 0 and not (target / META).exists():
            staging = self.root / STAGING / f"universal-{info.path.name}"
            shutil.rmtree(staging, ignore_errors=True)
            convert_to_universal(info.path, staging)
            shutil.copy(info.path / META, staging / META)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(target, ignore_errors=True)
            os.replace(staging, target)
        dist.barrier()
        return target

    def load(self, engine: Any, info: CheckpointInfo, folder: Path | None = None) -> None:
        """Collective: load DeepSpeed state (from `folder` if given, e.g. its universal form) and,
        when the layout is unchanged, this rank's RNG state."""
        folder = folder or info.path
        load_path, _ = engine.load_checkpoint(str(folder.parent), tag=folder.name,
                                              load_optimizer_states=True, load_lr_scheduler_states=True)
        if load_path is None:
            raise CorruptCheckpoint(f"DeepSpeed could not load checkpoint {folder}")
        rng = info.path / f"rng-{dist.get_rank():05d}.pt"
        if folder == info.path and rng.exists():
            _set_rng_state(torch.load(rng, weights_only=False))
