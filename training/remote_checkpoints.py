"""Checkpoints copied to object storage (`checkpoint.remote: s3://bucket/run`), so a run survives its machine.

Each published checkpoint is uploaded in the background while training goes on: its files first,
its crucible.json (the step, loader position and every file's SHA-256) last, so a folder without
one is an upload that was cut off and is never chosen. A failed upload is retried with backoff,
then reported (an event and a warning); until it succeeds the local copy is never pruned.
keep_last and keep_every apply to the remote copies too. `--resume auto` on a machine without the
run folder takes the newest complete remote checkpoint, downloads it and checks every hash before
anything loads it, falling back to an older one when a file does not match.
"""

from __future__ import annotations

import os
import queue
import shutil
import threading
import time
from pathlib import Path
from typing import Any

from pipeline.ground import storage
from pipeline.ground.hashing import short_digest
from pipeline.ground.names import CHECKPOINT_META as META
from training.config import CheckpointConfig
from training.checkpoint_meta import CorruptCheckpoint, read_meta
from training.safe_load import check_files, inside
from pipeline.ground.console import warn

BACKOFF_S = 1.0  # the first retry's wait; each further one doubles it


def step_of(tag: str) -> int | None:
    """The step of a `step-N` folder name; None for anything else."""
    number = tag.removeprefix("step-")
    return int(number) if tag.startswith("step-") and number.isdigit() else None


def kept(steps: list[int], config: CheckpointConfig) -> set[int]:
    """The steps keep_last and keep_every keep, of `steps` sorted oldest first."""
    keep = set(steps[-config.keep_last :])
    return keep | {s for s in steps if config.keep_every and s % config.keep_every == 0}


class RemoteCheckpoints:
    """The checkpoints under one remote prefix: upload (a background thread, in order), list, fetch, prune."""

    def __init__(self, url: str, config: CheckpointConfig, events: Any = None) -> None:
        self.url, self.config, self.events = url.rstrip("/"), config, events
        self.retries = storage.settings().upload_retries
        self.todo: queue.Queue[Path] = queue.Queue()
        self.lock = threading.Lock()
        self.pending: set[str] = set()  # tags queued or on their way
        self.failed: dict[str, str] = {}  # tag -> the last error, after every retry
        self.worker: threading.Thread | None = None

    # -- uploading -------------------------------------------------------------------------

    def upload(self, folder: Path) -> None:
        """Queue a published checkpoint folder for upload; returns at once."""
        with self.lock:
            self.pending.add(folder.name)
            self.failed.pop(folder.name, None)
        self.todo.put(folder)
        if self.worker is None or not self.worker.is_alive():
            self.worker = threading.Thread(target=self._work, name="checkpoint-upload", daemon=True)
            self.worker.start()

    def holds(self, tag: str) -> bool:
        """Whether the local copy of `tag` must stay: its upload is queued, under way or failed."""
        with self.lock:
            return tag in self.pending or tag in self.failed

    def _work(self) -> None:
        while True:
            folder = self.todo.get()
            try:
                self._upload_with_retries(folder)
            finally:
                with self.lock:
                    self.pending.discard(folder.name)
                self.todo.task_done()

    def _upload_with_retries(self, folder: Path) -> None:
        step = step_of(folder.name)
        for attempt in range(self.retries + 1):
            try:
                self._upload(folder)
                self._log(
                    {"event": "upload", "step": step, "remote": f"{self.url}/{folder.name}", "attempts": attempt + 1}
                )
                self.prune()
                return
            except Exception as exc:  # noqa: BLE001 - any failure of the store or network is retried, then reported
                error = f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:200]}"
                if attempt == self.retries:
                    with self.lock:
                        self.failed[folder.name] = error
                    self._log({"event": "upload_failed", "step": step, "error": error})
                    warn(f"checkpoint {folder.name} was not uploaded to {self.url} ({error}); its local copy is kept")
                    return
                self._log({"event": "upload_retry", "step": step, "attempt": attempt + 1, "error": error})
                time.sleep(BACKOFF_S * 2**attempt)

    def _upload(self, folder: Path) -> None:
        """Every file of the checkpoint, its crucible.json last: only then is the remote copy complete."""
        target = f"{self.url}/{folder.name}"
        storage.remove(f"{target}/{META}")  # a copy being replaced is incomplete from here on
        meta = read_meta(folder)
        for name in sorted(meta.files):
            storage.upload(folder / name, f"{target}/{name}")
        storage.upload(folder / META, f"{target}/{META}")

    def wait(self) -> dict[str, str]:
        """Block until every queued upload is done; the ones that failed, by tag, with their errors."""
        self.todo.join()
        with self.lock:
            return dict(self.failed)

    def _log(self, event: dict[str, Any]) -> None:
        if self.events is not None:
            self.events.log(event)

    # -- listing and pruning ---------------------------------------------------------------

    def complete(self) -> list[int]:
        """Steps of the remote checkpoints whose crucible.json is there (their uploads finished), oldest first."""
        steps = [(step_of(tag), tag) for tag in storage.listing(self.url)]
        return sorted(step for step, tag in steps if step is not None and storage.exists(f"{self.url}/{tag}/{META}"))

    def prune(self) -> None:
        """Apply keep_last and keep_every to the complete remote checkpoints; remove the folders of cut-off
        uploads older than the newest complete one (a newer one may be on its way)."""
        complete = self.complete()
        keep = kept(complete, self.config)
        for tag in storage.listing(self.url):
            step = step_of(tag)
            if step is None or step in keep or (step not in complete and (not complete or step > complete[-1])):
                continue
            with self.lock:
                if tag in self.pending:
                    continue
            storage.remove(f"{self.url}/{tag}")

    # -- fetching --------------------------------------------------------------------------

    def fetch_newest(self, root: Path, after: int) -> Path | None:
        """Download the newest complete remote checkpoint newer than step `after` into `root`, hashes checked;
        an older one when a newer does not check out; None when there is none newer."""
        for step in reversed(self.complete()):
            if step <= after:
                return None
            try:
                return self.fetch(f"step-{step:08d}", root)
            except CorruptCheckpoint as exc:
                self._log({"event": "corrupt_checkpoint", "error": str(exc)})
                warn(f"{exc}; trying the previous remote checkpoint")
        return None

    def fetch(self, tag: str, root: Path) -> Path:
        """Download one remote checkpoint into `root/tag`: staged, every file checked against crucible.json,
        then published with one rename."""
        staging = root / ".download" / tag
        shutil.rmtree(staging, ignore_errors=True)
        source = f"{self.url}/{tag}"
        storage.download(f"{source}/{META}", staging / META)
        files = read_meta(staging).files
        for name in files:
            storage.download(f"{source}/{inside(staging, name)}", staging / name)
        check_files(staging, files, hashes=True)
        final = root / tag
        shutil.rmtree(final, ignore_errors=True)
        os.replace(staging, final)
        shutil.rmtree(root / ".download", ignore_errors=True)
        return final


def remote_checkpoint(url: str, cache: Path, config: CheckpointConfig) -> Path:
    """A checkpoint that generate, export and eval can read: `url` is one checkpoint folder (with crucible.json)
    or a run's `checkpoint.remote` prefix (its newest complete checkpoint); downloaded once into `cache`."""
    url = url.rstrip("/")
    if storage.exists(f"{url}/{META}"):
        base, tag = url.rsplit("/", 1)
        where = RemoteCheckpoints(base, config)
    else:
        where = RemoteCheckpoints(url, config)
        steps = where.complete()
        if not steps:
            raise CorruptCheckpoint(f"{url} holds no complete checkpoint (no step-N/{META})")
        tag = f"step-{steps[-1]:08d}"
    root = cache / short_digest(where.url)
    local = root / tag
    if (local / META).is_file():
        try:
            check_files(local, read_meta(local).files, hashes=True)
            return local
        except CorruptCheckpoint:
            pass
    return where.fetch(tag, root)
