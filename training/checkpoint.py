"""Checkpoints that survive a kill at any moment, and know when they are damaged.

A save is staged: every rank writes its DeepSpeed shards (model, optimizer, ZeRO partitions)
and its RNG state under `checkpoints/.staging/<tag>/`; then rank 0 writes `crucible.json`
(step, loader position, config, shard-manifest hash, a SHA-256 of every file, health) and
publishes the folder with one rename, then moves the `latest` pointer with another, and empties
staging. A kill before the rename leaves only staging debris and `latest` on the previous checkpoint. Loading
verifies the hashes first and falls back to the previous good checkpoint when a file is damaged
(a missing or torn crucible.json included); with checkpoints present but none loadable, training
stops rather than start over on top of them. Files are read without unpickling code (see
`training.safe_load`), and a failed save names its folder and the space left.
A run resumed under another layout loads DeepSpeed's universal form of the checkpoint, which
re-partitions ZeRO optimizer state and re-slices tensor/pipeline-parallel weights.
"""

from __future__ import annotations

import errno
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
from pipeline.ground.markers import read_pointer
from pipeline.ground.names import CHECKPOINT_META as META
from pipeline.ground.layout import TrainFolder
from pipeline.ground.names import UNIVERSAL
from training.config import CheckpointConfig
from training.export import build_universal, cached_universal, universal_cache
from training.model import EMBED_WEIGHT, NORM_WEIGHT, ROW_PARALLEL
from training.remote_checkpoints import RemoteCheckpoints, kept
from training.checkpoint_meta import CheckpointMeta, CorruptCheckpoint, read_meta
from training.safe_load import SafeCheckpointEngine, check_files, load, vet, weights_only_loads
from pipeline.ground.console import warn

UNIVERSAL_CHECKPOINT_INFO = "universal_checkpoint_info"

STAGING = ".staging"
# How torch's file writer reports a failed write (a full disk included); other errors (a peer rank
# gone during the save's collectives) keep their traceback.
WRITE_FAILURES = ("iostream error", "PytorchStreamWriter", "inline_container")


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


@dataclass(frozen=True)
class CheckpointInfo:
    path: Path
    step: int
    healthy: bool
    meta: CheckpointMeta


def tag_for(step: int) -> str:
    return f"step-{step:08d}"


def rng_file(rank: int) -> str:
    return f"rng-{rank:05d}.json"


def _rng_state() -> dict[str, Any]:
    """This process's generator states as JSON values (exact: ints, and floats that round-trip)."""
    numpy_state = np.random.get_state()
    assert isinstance(numpy_state, tuple)  # the global generator's legacy form (its dict form is opt-in)
    name, keys, position, has_gauss, cached_gaussian = numpy_state
    version, internal, gauss_next = random.getstate()
    state = {
        "torch": torch.get_rng_state().tolist(),
        "numpy": [name, keys.tolist(), position, has_gauss, cached_gaussian],
        "python": [version, list(internal), gauss_next],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state().tolist()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(torch.as_tensor(state["torch"], dtype=torch.uint8))
    name, keys, position, has_gauss, cached_gaussian = state["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), position, has_gauss, cached_gaussian))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(torch.as_tensor(state["cuda"], dtype=torch.uint8))


def _save_failed(folder: Path, exc: BaseException) -> UserError:
    """A failed write named by its folder and the room left: torch reports a full disk only as
    `basic_ios::clear: iostream error`."""
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    free = shutil.disk_usage(existing).free
    full = " (the disk is full)" if getattr(exc, "errno", None) == errno.ENOSPC or free < 1 << 20 else ""
    first_line = (str(exc).splitlines() or [type(exc).__name__])[0]
    return UserError(
        f"cannot save checkpoint {folder}: {first_line}; {free / 2**20:,.1f} MiB free on its "
        f"filesystem{full}. The previous checkpoints are untouched: free space (or lower "
        f"checkpoint.keep_last) and rerun to resume from the latest"
    )


class Checkpointer:
    def __init__(self, run_dir: Path, config: CheckpointConfig, rank: int, events: Any = None) -> None:
        """`events`: the run's log, for the remote copies' uploads (rank 0 makes them)."""
        self.folder = TrainFolder(Path(run_dir))
        self.root = self.folder.checkpoints
        self.config, self.rank = config, rank
        self.remote = RemoteCheckpoints(config.remote, config, events) if config.remote and rank == 0 else None

    # -- listing -------------------------------------------------------------------------

    def scan(self) -> tuple[list[CheckpointInfo], list[CorruptCheckpoint]]:
        """Published checkpoints, oldest first, and the damaged folders: a checkpoint is published
        with its crucible.json, so a folder whose file is missing, torn or incomplete is damaged."""
        found, damaged = [], []
        for path in sorted(p for p in self.root.glob("step-*") if p.is_dir()):
            try:
                found.append(info_of(path))
            except CorruptCheckpoint as exc:
                damaged.append(exc)
        return sorted(found, key=lambda c: c.step), damaged

    def published(self) -> list[CheckpointInfo]:
        return self.scan()[0]

    def latest(self) -> CheckpointInfo | None:
        """The checkpoint `latest` points at; None when there is no pointer, or a bad one (said once, and
        the caller then looks at every published checkpoint)."""
        try:
            tag = read_pointer(self.folder.latest)
        except UserError as exc:
            if self.rank == 0:
                warn(f"{exc}; using the newest checkpoint that loads instead")
            return None
        return next((c for c in self.published() if c.path.name == tag), None) if tag else None

    def verify(self, info: CheckpointInfo) -> None:
        """Refuse a checkpoint folder holding anything but the files it lists (always), or whose files do not
        match their hashes (with `checkpoint.verify`)."""
        check_files(info.path, info.meta.files, hashes=self.config.verify)

    def newest_loadable(self, events: Any = None) -> CheckpointInfo | None:
        """The newest checkpoint (at or before `latest`, when that points at one) whose folder passes
        `verify`; damaged ones on the way are reported and passed over, never touched."""
        return self.resolve("auto", events)

    def resolve(self, resume: str, events: Any) -> CheckpointInfo | None:
        """The checkpoint to start from: `none`, `auto` (latest good) or a checkpoint folder."""
        if resume == "none":
            return None
        if resume != "auto":
            info = info_of(Path(resume))
            self.verify(info)
            return info
        if self.config.remote:
            self._fetch_remote(events)
        published, damaged = self.scan()
        for exc in damaged:
            self._report(exc, events)
        latest = self.latest()
        candidates = [c for c in published if latest is None or c.step <= latest.step]
        for info in reversed(candidates):
            try:
                self.verify(info)
                return info
            except CorruptCheckpoint as exc:
                self._report(exc, events)
                damaged.append(exc)
        if damaged:
            raise UserError(
                f"{self.root} holds {len(damaged)} checkpoint(s) and none can be loaded; they are kept "
                f"as they are. Repair or move them, or start over with --resume none (new saves then "
                f"replace them). First problem: {damaged[0]}"
            )
        return None

    def _fetch_remote(self, events: Any) -> None:
        """Collective where a process group is up: rank 0 downloads the newest complete remote checkpoint when it
        is newer than every local one (a fresh machine has none) and points `latest` at it."""
        if self.remote is not None:  # rank 0's, set where checkpoint.remote is
            newest = max((c.step for c in self.published()), default=-1)
            fetched = self.remote.fetch_newest(self.root, newest)
            if fetched is not None:
                with atomic_path(self.folder.latest) as tmp:
                    tmp.write_text(fetched.name + "\n")
                if events is not None:
                    events.log({"event": "download", "step": info_of(fetched).step, "remote": self.config.remote})
        if dist.is_available() and dist.is_initialized():
            dist.barrier()

    def upload_missing(self) -> None:
        """Queue the upload of kept local checkpoints that have no complete remote copy (an earlier run's failed or
        cut-off upload): what `checkpoint.remote` promises holds after a rerun."""
        if self.remote is not None:
            complete = set(self.remote.complete())
            published = self.published()
            keep = kept([c.step for c in published], self.config)
            for info in published:
                if info.step in keep and info.step not in complete:
                    self.remote.upload(info.path)

    def finish_uploads(self) -> None:
        """Wait for the uploads under way; one that failed after its retries is an error naming it."""
        failed = self.remote.wait() if self.remote is not None else {}
        if failed:
            tag, error = sorted(failed.items())[-1]
            raise UserError(
                f"{len(failed)} checkpoint(s) not uploaded to {self.config.remote}, the last "
                f"{tag} ({error}); the local copies are kept: rerun the same command to upload them"
            )

    def _report(self, exc: CorruptCheckpoint, events: Any) -> None:
        if events is not None:  # a training run's log; a verb that only reads a checkpoint has none
            events.log({"event": "corrupt_checkpoint", "error": str(exc)})
        if self.rank == 0:
            warn(f"{exc}; falling back to the previous checkpoint")

    def last_healthy(self, before_step: int, events: Any) -> CheckpointInfo | None:
        """The newest healthy checkpoint at or before `before_step` that loads; damaged ones on the way
        are reported (an event and a warning), as `resolve` does."""
        for info in reversed(self.published()):
            if info.healthy and info.step <= before_step:
                try:
                    self.verify(info)
                    return info
                except CorruptCheckpoint as exc:
                    self._report(exc, events)
        return None

    # -- saving --------------------------------------------------------------------------

    def save(self, engine: Any, meta: CheckpointMeta) -> Path:
        """Collective: every rank calls it, with the metadata of step `meta.step`. Returns the published folder."""
        tag = tag_for(meta.step)
        staging = self.root / STAGING
        if self.rank == 0:
            shutil.rmtree(staging / tag, ignore_errors=True)
        dist.barrier()
        try:
            engine.save_checkpoint(
                str(staging),
                tag=tag,
                save_latest=False,
                client_state={UNIVERSAL_CHECKPOINT_INFO: universal_checkpoint_info()},
            )
            (staging / tag / rng_file(dist.get_rank())).write_text(json.dumps(_rng_state()))
        except (OSError, RuntimeError) as exc:
            if not isinstance(exc, OSError) and not any(marker in str(exc) for marker in WRITE_FAILURES):
                raise
            raise self._abandon(staging / tag, exc) from None
        dist.barrier()
        final = self.root / tag
        if self.rank == 0:
            files = {
                str(p.relative_to(staging / tag)): file_sha256(p)
                for p in sorted((staging / tag).rglob("*"))
                if p.is_file()
            }
            try:
                (staging / tag / META).write_text(meta.model_copy(update={"files": files}).to_json())
            except OSError as exc:
                raise self._abandon(staging / tag, exc) from None
            if final.exists():
                remove_entry(universal_cache(final))  # made from the checkpoint replaced here
                shutil.rmtree(final)
            os.replace(staging / tag, final)
            # What is left there is of no use: DeepSpeed's recovery scripts (zero_to_fp32.py, written
            # beside the tag folder at every save) and the debris of an interrupted save.
            shutil.rmtree(staging, ignore_errors=True)
            with atomic_path(self.folder.latest) as tmp:
                tmp.write_text(tag + "\n")
            if self.remote is not None:
                self.remote.upload(final)
            self.prune()
        dist.barrier()
        return final

    def _abandon(self, folder: Path, exc: BaseException) -> UserError:
        """The error for a save that failed; its partial folder is removed to give the space back."""
        error = _save_failed(folder, exc)
        shutil.rmtree(folder, ignore_errors=True)
        return error

    def prune(self) -> None:
        """Keep the newest keep_last, every keep_every-th, `latest`, the newest healthy one and those whose upload
        has not succeeded yet; a universal form cached for a checkpoint goes with it."""
        checkpoints = self.published()
        steps = kept([c.step for c in checkpoints], self.config)
        keep = {c.path for c in checkpoints if c.step in steps or (self.remote and self.remote.holds(c.path.name))}
        latest = self.latest()
        if latest is not None:
            keep.add(latest.path)
        healthy = [c for c in checkpoints if c.healthy]
        if healthy:
            keep.add(healthy[-1].path)
        for info in checkpoints:
            if info.path not in keep:
                shutil.rmtree(info.path, ignore_errors=True)
        for cached in (self.root / UNIVERSAL).glob("step-*"):
            if self.root / cached.name not in keep:
                remove_entry(cached)

    # -- loading -------------------------------------------------------------------------

    def universal(self, info: CheckpointInfo) -> Path:
        """Collective: DeepSpeed's layout-free form of `info` (made once by rank 0, then cached); every
        rank checks the cache against its own file list before reading it."""
        target = universal_cache(info.path)
        if self.rank == 0 and cached_universal(info.path) is None:
            (self.root / STAGING).mkdir(parents=True, exist_ok=True)
            built = build_universal(info.path, self.root / STAGING)
            target.parent.mkdir(parents=True, exist_ok=True)
            remove_entry(target)
            os.replace(built, target)
        dist.barrier()
        if cached_universal(info.path) is None:
            raise CorruptCheckpoint(
                f"the universal form of {info.path} in {target} does not match what was "
                f"built; remove {target} and rerun"
            )
        return target

    def load(self, engine: Any, info: CheckpointInfo, folder: Path | None = None) -> None:
        """Collective: load DeepSpeed state (from `folder` if given, e.g. its universal form) and,
        when the layout is unchanged, this rank's RNG state."""
        folder = folder or info.path
        vet(folder)  # names the file a refusal is about, before DeepSpeed's own loads
        engine.checkpoint_engine = SafeCheckpointEngine(engine._config)  # its other reads: weights only
        with weights_only_loads():  # DeepSpeed's universal loader calls torch.load itself
            load_path, _ = engine.load_checkpoint(
                str(folder.parent), tag=folder.name, load_optimizer_states=True, load_lr_scheduler_states=True
            )
        if load_path is None:
            raise CorruptCheckpoint(f"DeepSpeed could not load checkpoint {folder}")
        rng = info.path / rng_file(dist.get_rank())
        if folder == info.path and rng.exists():
            _set_rng_state(json.loads(rng.read_text()))
        elif folder == info.path and rng.with_suffix(".pt").exists():  # written before RNG state was JSON
            _set_rng_state(load(rng.with_suffix(".pt")))


def remove_entry(path: Path) -> None:
    """Remove a folder, file or link at `path` (a link itself, never what it points at)."""
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.exists():
        shutil.rmtree(path)


def info_of(path: Path) -> CheckpointInfo:
    meta = read_meta(path)
    return CheckpointInfo(path, meta.step, meta.healthy, meta)
