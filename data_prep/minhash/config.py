"""Settings of MinHash LSH near-dedupe: how texts become sets, how pairs are found and judged.

Two thresholds on purpose: LSH only proposes candidate pairs, tuned to `candidate_threshold`
(low, so that true duplicates are rarely missed), and a candidate becomes an edge only when its
signature estimate reaches `threshold` (high, so that merely similar texts are kept). A third,
`split_group_threshold`, lower still, only ties candidates into split groups: similar texts that
are kept go to the same side of the train/validation split (see `data_prep.pack`).

Split groups get LSH bands of their own (`split_band_layout`), tuned to `split_group_threshold`:
dedupe's bands, tuned to 0.5, propose a pair of Jaccard 0.3 about 6% of the time and one of 0.5
about 55%, so many such pairs would never be grouped. A pair of Jaccard s shares at least one of
b bands of r rows with probability P(s) = 1 - (1 - s**r)**b. With the defaults (threshold 0.3,
128 permutations) the split bands are b = 42 bands of r = 3 rows: P(0.3) = 0.683, P(0.4) = 0.938,
P(0.5) = 1 - (7/8)**42 = 0.9963, P(0.6) = 0.99996. Two rows a band would reach 0.99 at 0.3, but
an unrelated pair sharing a sentence or two (s ~ 0.04) would then be proposed 28 times as often
(P(0.04) = 0.075 with 49 x 2 against 0.0027), and their number grows with the square of the corpus.
Pairs the split bands alone propose only join groups, never clusters, so dedupe's removals stay
as its own bands make them.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Literal

from pydantic import Field, model_validator

from pipeline.ground.schema import Section

# Above this many documents, one LSH bucket is paired as a star instead of all pairs.
DEFAULT_MAX_BUCKET_SIZE = 100
SPLIT_MISS_WEIGHT = 0.7  # of a missed pair against a spurious one, when the split bands are tuned


class MinHashConfig(Section):
    """What a near-duplicate is and how hard to look for one."""

    ngram: int = Field(5, ge=1, description="Words per shingle (`\\w+` tokens, lower-cased).")
    num_perm: int = Field(128, ge=2, le=1024, description="Permutations per signature; estimate error ~1/sqrt of it.")
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
        0.3,
        gt=0,
        le=1,
        description="Estimated Jaccard at which a candidate pair, kept or not, joins one split group: a group "
        "lands whole in train or in validation. Set it to `threshold` to split document by document.",
    )
    seed: int = Field(1, ge=0, lt=2**32, description="Seed of the permutations, as in datasketch's MinHash.")
    shingle_hash: Literal["fast", "datasketch"] = Field(
        "fast",
        description="fast (default): words and shingles hashed with array operations, signing "
        "several times faster than datasketch and as accurate; datasketch: SHA-1 per shingle, "
        "signatures bit-identical to datasketch's MinHash, to check or mix sketches with it.",
    )
    bucket_shards_per_task: int = Field(
        64,
        ge=1,
        description="Input shards per key range of the bucket step: ceil(shards / this) ranges, "
        "each split into ceil(bands / ranges) groups of bands, one task per range and group.",
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
            raise ValueError("set both bands and rows, or neither (then they follow candidate_threshold)")
        if self.bands is not None and self.rows is not None and self.bands * self.rows != self.num_perm:
            raise ValueError(f"bands * rows must equal num_perm: {self.bands} * {self.rows} != {self.num_perm}")
        return self

    def band_layout(self) -> tuple[int, int]:
        """(bands, rows): as given, or the LSH optimum for `candidate_threshold` and `num_perm`."""
        if self.bands is not None and self.rows is not None:
            return self.bands, self.rows
        return _optimal_layout(self.candidate_threshold, self.num_perm)

    def split_band_layout(self) -> tuple[int, int] | None:
        """(bands, rows) of the split-group bands: the LSH optimum for `split_group_threshold`, a
        missed pair weighted SPLIT_MISS_WEIGHT (it may straddle the split), a spurious one the rest
        (it costs a verification). None at `split_group_threshold` equal to `threshold`: then only
        duplicates are grouped, and dedupe's bands propose those."""
        if self.split_group_threshold >= self.threshold:
            return None
        return _optimal_layout(self.split_group_threshold, self.num_perm, 1 - SPLIT_MISS_WEIGHT, SPLIT_MISS_WEIGHT)

    def lsh_bands(self) -> list[tuple[int, int]]:
        """(band, rows) of every band a document is keyed by, as `kernels.band_keys` takes them:
        dedupe's `band_layout()[0]` bands first, then the split-group bands."""
        bands, rows = self.band_layout()
        split_bands, split_rows = self.split_band_layout() or (0, 0)
        return [(band, rows) for band in range(bands)] + [(band, split_rows) for band in range(split_bands)]


@lru_cache(maxsize=16)
def _optimal_layout(threshold: float, num_perm: int, spurious: float = 0.5, missed: float = 0.5) -> tuple[int, int]:
    """Bands and rows (bands * rows <= num_perm) minimising the weighted areas of spurious
    candidates below `threshold` and missed ones above it, as LSH theory gives them (datasketch's
    own optimiser); equal weights unless given."""
    from datasketch.lsh import _optimal_param  # imported here: datasketch pulls in scipy

    bands, rows = _optimal_param(threshold, num_perm, spurious, missed)
    return int(bands), int(rows)
