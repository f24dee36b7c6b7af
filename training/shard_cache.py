"""Shards read from object storage: a size-bounded local cache, filled ahead of the loader.

A shards folder at `s3://bucket/prefix` is used through a local view: its small files (the
manifest, the tokenizer, prep's stats.json beside it) are copied into the cache, and each shard is
downloaded when the loader's next rows need it, by a pool of threads that works a few steps
ahead. Cached shards are named by their SHA-256, which is checked against the manifest after
every download, so a cache may be shared by runs, ranks and datasets and never serves a stale
or torn file. Past `train.shard_cache.max_gb` the least recently used shards are evicted. Which
rows come when does not depend on the cache at all: an empty cache (a new node, a wiped disk)
changes only how long the first steps wait.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import cast

from data_prep.shards import ShardEntry, ShardError, read_manifest
from pipeline.ground import storage
from pipeline.ground.hashing import file_sha256, short_digest
from pipeline.ground.layout import PrepFolder
from pipeline.ground.names import MANIFEST
from training.config import ShardCacheConfig

SHARDS = "objects"  # the cache's content-addressed shard files: <sha256>.arrow
VIEWS = "folders"  # per remote shards folder, its small files


def cache_root() -> Path:
    """This machine's cache of what Crucible reads from object storage: shards/, checkpoints/, tokenizers/."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "crucible"


class ShardCache:
    """Local copies of remote shards, by hash; `fetch` one now, `prefetch` those needed soon."""

    def __init__(self, config: ShardCacheConfig) -> None:
        self.root = Path(config.folder or cache_root() / "shards")
        self.limit = int(config.max_gb * 2**30)
        (self.root / SHARDS).mkdir(parents=True, exist_ok=True)
        self.pool = ThreadPoolExecutor(max_workers=config.download_threads, thread_name_prefix="shard-download")
        self.lock = threading.Lock()
        self.pending: dict[str, Future[Path]] = {}
        self.verified: set[str] = set()  # downloaded (and hashed) by this process
        self.evicted: list[str] = []  # since the last fetch, for the datasets to close
        # Least recently used first: what earlier runs left, by modification time, then this run's uses.
        found = sorted((p for p in (self.root / SHARDS).glob("*.arrow")), key=lambda p: p.stat().st_mtime)
        self.used: OrderedDict[str, int] = OrderedDict((p.stem, p.stat().st_size) for p in found)

    def view(self, location: str) -> Path:
        """The local view of a remote shards folder: its manifest and tokenizer, and prep's stats beside it."""
        local = self.root / VIEWS / short_digest(location.rstrip("/")) / "shards"
        try:
            storage.download(cast(str, storage.join(location, MANIFEST)), local / MANIFEST)
        except FileNotFoundError:
            raise ShardError(
                f"{storage.join(location, MANIFEST)} not found: is {location} a shards folder made by `prep`?"
            ) from None
        tokenizer = read_manifest(local).tokenizer.file
        storage.download(cast(str, storage.join(location, tokenizer)), local / tokenizer)
        stats = cast(str, PrepFolder.holding(location).stats)  # a URL joined is a URL
        if storage.exists(stats):
            storage.download(stats, PrepFolder.holding(local).local_stats)
        return local

    def path(self, sha256: str) -> Path:
        return self.root / SHARDS / f"{sha256}.arrow"

    def check_sizes(self, location: str, entries: list[ShardEntry]) -> None:
        """Refuse a remote split whose shards are missing or of another size than the manifest says, at once
        (one listing, whatever the number of shards)."""
        listed = storage.listing(location)
        for entry in entries:
            url = storage.join(location, entry.file)
            if entry.file not in listed:
                raise ShardError(f"shard {url} listed in the manifest is missing")
            if listed[entry.file] != entry.bytes:
                raise ShardError(
                    f"shard {url} has {listed[entry.file]:,} bytes, the manifest says "
                    f"{entry.bytes:,} (truncated or modified)"
                )

    def prefetch(self, wanted: list[tuple[str, ShardEntry]]) -> None:
        """Start downloading these (url, manifest entry) pairs, in order, as far as the cache holds them."""
        room = self.limit
        for url, entry in wanted:
            room -= entry.bytes
            if room < 0:
                break
            self._start(url, entry)

    def fetch(self, url: str, entry: ShardEntry) -> tuple[Path, bool, list[str]]:
        """The local copy of one shard (downloaded now if no prefetch did), whether this process checked its
        hash already, and the hashes of shards evicted to make room."""
        sha = entry.sha256
        path = self._start(url, entry).result()
        self._admit(sha, entry.bytes)
        os.utime(path)  # for the next run's order of eviction
        with self.lock:
            evicted, self.evicted = self.evicted, []
        return path, sha in self.verified, evicted

    def _admit(self, sha: str, size: int) -> None:
        """Mark a shard as just used, then evict the least recently used ones while over the limit (never that
        one, nor one still downloading)."""
        with self.lock:
            self.used[sha] = size
            self.used.move_to_end(sha)
            total = sum(self.used.values())
            for old in list(self.used):
                future = self.pending.get(old)
                if total <= self.limit:
                    break
                if old == sha or (future is not None and not future.done()):
                    continue
                total -= self.used.pop(old)
                self.pending.pop(old, None)
                self.path(old).unlink(missing_ok=True)
                self.evicted.append(old)

    def _start(self, url: str, entry: ShardEntry) -> Future[Path]:
        sha = entry.sha256
        with self.lock:
            future = self.pending.get(sha)
            if future is None or (future.done() and (future.exception() or not self.path(sha).exists())):
                if self.path(sha).exists():
                    future = Future()
                    future.set_result(self.path(sha))
                else:
                    future = self.pool.submit(self._download, url, entry)
                self.pending[sha] = future
        return future

    def _download(self, url: str, entry: ShardEntry) -> Path:
        """One shard into the cache, published under its hash only once the hash matches the manifest."""
        target = self.path(entry.sha256)
        part = target.with_name(f".{entry.sha256}.{threading.get_ident()}.part")
        try:
            storage.download(url, part)
        except FileNotFoundError:
            raise ShardError(f"shard {url} listed in the manifest is missing") from None
        if file_sha256(part) != entry.sha256:
            part.unlink(missing_ok=True)
            raise ShardError(f"shard {url} does not match its manifest hash (corrupt or modified)")
        os.replace(part, target)
        self.verified.add(entry.sha256)
        self._admit(entry.sha256, entry.bytes)
        return target

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)
