"""Settings of MinHash LSH near-dedupe: how texts become sets, how pairs are found and judged.

Two thresholds on purpose: LSH only proposes candidate pairs, tuned to `candidate_threshold`
(low, so that true duplicates are rarely missed), and a candidate becomes an edge only when its
signature estimate reaches `threshold` (high, so that merely similar texts are kept). A third,
`split_group_threshold`, lower still, only ties candidates into split groups: similar texts that
are kept go to the same side of the train/validation split (see `data_prep.pack`).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Literal

from pydantic import Field, model_validator

from pipeline.ground.schema import Section

# Above this many documents, one LSH bucket is paired as a star instead of all pairs.
DEFAULT_MAX_BUCKET_SIZE = 100


class MinHashConfig(Section):
    """What a near-duplicate is and how hard to look for one."""

    ngram: int = Field(5, ge=1, description="Words per shingle (`\\w+` tokens, lower-cased).")
    num_perm: int = Field(
        128, ge=2, le=1024, description="Permutations per signature; estimate error ~1/sqrt of it."
    )
    bands: int | None = Field(
        None, ge=1, description="LSH bands; None derives bands and rows from candidate_threshold."
    )
    rows: int | None = Field(None, ge=1, description="Signature rows per band; set with `bands`.")
    candidate_threshold: float = Field(
        0.5, gt=0, le=1, description="Jaccard the LSH band layout is tuned to (when bands unset)."
    )
    threshold: float = Field(
        0.75, gt=0, le=1, description="Estimated Jaccard a candidate pair needs to be a duplicate."
    )
    split_group_threshold: float = Field(
        0.3, gt=0, le=1,
        description="Estimated Jaccard at which a candidate pair, kept or not, joins one split group: a group "
        "lands whole in train or in validation. Set it to `threshold` to split document by document.",
    )
    seed: int = Field(
        1, ge=0, lt=2**32, description="Seed of the permutations, as in datasketch's MinHash."
    )
    shingle_hash: Literal["fast", "datasketch"] = Field(
        "fast",
        description="fast (default): words and shingles hashed with array operations, signing "
        "several times faster than datasketch and as accurate; datasketch: SHA-1 per shingle, "
        "signatures bit-identical to datasketch's MinHash, to check or mix sketches with it.",
    )
    bucket_shards_per_task: int = Field(
        64, ge=1, description="Input shards per key range of the bucket step: ceil(shards / this) ranges, "
        "each split into ceil(bands / ranges) groups of bands, one task per range and group."
    )
    max_bucket_size: int = Field(
        DEFAULT_MAX_BUCKET_SIZE,
        ge=2,
        description="Buckets with more documents pair each member with the smallest one only.",
    )

    @model_validator(mode="after")
    def _consistent(self) -> MinHashConfig:
        if self.candidate_threshold > self.threshold:
            raise ValueError(
                f"candidate_threshold ({self.candidate_threshold}) must not exceed threshold "
                f"({self.threshold}): LSH would rarely propose pairs just above threshold"
            )
        if self.split_group_threshold > self.threshold:
            raise ValueError(
                f"split_group_threshold ({self.split_group_threshold}) must not exceed threshold "
                f"({self.threshold}): every duplicate pair is in a split group already"
            )
        if (self.bands is None) != (self.rows is None):
            raise ValueError(
                "set both bands and rows, or neither (then they follow candidate_threshold)"
            )
        if self.bands is not None and self.bands * self.rows != self.num_perm:
            raise ValueError(
                f"bands * rows must equal num_perm: {self.bands} * {self.rows} != {self.num_perm}"
            )
        return self

    def band_layout(self) -> tuple[int, int]:
        """(bands, rows): as given, or the LSH optimum for `candidate_threshold` and `num_perm`."""
        if self.bands is not None and self.rows is not None:
            return self.bands, self.rows
        return _optimal_layout(self.candidate_threshold, self.num_perm)


@lru_cache(maxsize=16)
def _optimal_layout(threshold: float, num_perm: int) -> tuple[int, int]:
    """Bands and rows (bands * rows <= num_perm) minimising missed plus spurious candidates,
    weighted equally, as LSH theory gives them (datasketch's own optimiser)."""
    from datasketch.lsh import _optimal_param  # imported here: datasketch pulls in scipy

    bands, rows = _optimal_param(threshold, num_perm, 0.5, 0.5)
    return int(bands), int(rows)
