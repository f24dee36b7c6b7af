"""Content hashes that tie files together (shards to manifests, tokenizers to checkpoints)."""

from __future__ import annotations

import hashlib
from pathlib import Path


def file_sha256(path: Path) -> str:
    """The SHA-256 of a file, read in 1 MiB blocks so large shards never sit in memory."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def short_digest(text: str) -> str:
    """16 hex digits of the SHA-256 of `text`: a folder name for a URL or a location."""
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def hash64(key: str, salt: bytes = b"") -> int:
    """A 64-bit integer fixed by `key`: the same on every run and machine. Each use that must not
    follow another (a sample, a split) passes its own `salt` (at most 16 bytes), which makes its
    draws independent of the others'; no salt is the plain blake2b of the key."""
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8, person=salt).digest(), "little")


def uniform(key: str, salt: bytes = b"") -> float:
    """`hash64` as a number in [0, 1): keep a key with probability p when `uniform(key, salt) < p`."""
    return hash64(key, salt) / 2**64
