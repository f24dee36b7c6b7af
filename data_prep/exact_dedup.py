"""exact_dedup: drop documents whose whitespace-normalized text was already seen.

Three steps so that it scales out like near-dedupe: hash each shard in parallel, find the
duplicates over all hashes in one task (the first occurrence in input order is kept, so the
result does not depend on worker count), then filter each shard by the list of duplicates.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field

from pipeline.ground.schema import Section
from pipeline.stages import TEXT


class ExactDedupConfig(Section):
    """What "the same text" means."""

    lowercase: bool = Field(False, description="Treat texts that differ only in case as duplicates.")


def text_hashes(table: pa.Table, config: ExactDedupConfig) -> np.ndarray:
    """128-bit hashes (as two uint64 columns) of the whitespace-collapsed text of each document."""
    text = pc.utf8_trim_whitespace(pc.replace_substring_regex(table[TEXT], r"\s+", " "))
    if config.lowercase:
        text = pc.utf8_lower(text)
    digests = b"".join(
        hashlib.blake2b(value.encode(), digest_size=16).digest() for value in text.to_pylist()
    )
    return np.frombuffer(digests, dtype=np.uint64).reshape(-1, 2)


def first_occurrences(hashes: np.ndarray) -> np.ndarray:
    """For each document (in global order), the global index of the first one with its hash."""
    if len(hashes) == 0:
        return np.zeros(0, dtype=np.int64)
    _, first, inverse = np.unique(hashes, axis=0, return_index=True, return_inverse=True)
    return first[inverse.reshape(-1)].astype(np.int64)
