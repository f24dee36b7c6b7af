"""Array kernels of MinHash LSH near-dedupe, one per scale-out step.

The steps only share arrays, so each runs in parallel over its own slice of the data:
`signatures` needs one shard's texts; `band_keys` and `candidate_pairs` need one band's
columns over all documents; `estimate_jaccard` needs the signatures of the candidate pairs;
`clusters` needs only the verified edges; `choose_removals` needs roots, lengths and ids.

Signatures are bit-identical to datasketch's `MinHash(num_perm, seed)` (its default "affine32"
scheme) fed the UTF-8 shingles, so sketches can be checked against, or mixed with, datasketch.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from functools import lru_cache

import numpy as np
from datasketch import MinHash
from datasketch.minhash import _fmix

from data_prep.minhash.config import DEFAULT_MAX_BUCKET_SIZE, MinHashConfig

_WORD = re.compile(r"\w+")
_SPACE = 0x20
_EMPTY = np.uint32(0xFFFFFFFF)  # datasketch's value for a permutation that saw no shingle
_BLOCK_ROWS = 8192  # shingles permuted at once: BLOCK_ROWS * num_perm * 4 bytes stay in cache


def shingle_hashes(text: str, ngram: int) -> np.ndarray:
    """SHA-1/32 hashes (datasketch's `sha1_hash32`) of the word n-grams of `text`, as uint32.

    Words are `\\w+` tokens, lower-cased, joined by one space. A text with fewer than `ngram`
    words is one shingle of all its words; a text without words has none. The n-grams are byte
    slices of one encoded string, so no per-shingle join or encode is needed.
    """
    joined = " ".join(_WORD.findall(text)).lower().encode()
    if not joined:
        return np.zeros(0, dtype=np.uint32)
    # A space never occurs inside a UTF-8 encoded word, so spaces are the word boundaries.
    spaces = np.flatnonzero(np.frombuffer(joined, dtype=np.uint8) == _SPACE)
    starts = np.concatenate(([0], spaces + 1))
    ends = np.concatenate((spaces, [len(joined)]))
    count = max(len(starts) - ngram + 1, 1)
    sha1 = hashlib.sha1
    digests = b"".join(
        [
            sha1(joined[start:end]).digest()
            for start, end in zip(starts[:count].tolist(), ends[-count:].tolist())
        ]
    )
    # The first 4 bytes of each 20-byte digest, read little-endian, as sha1_hash32 does.
    return np.frombuffer(digests, dtype=np.uint8).reshape(-1, 20)[:, :4].copy().view("<u4").ravel()


@lru_cache(maxsize=8)
def _permutations(num_perm: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """datasketch's own affine permutations (a odd, b) for this num_perm and seed."""
    a, b = MinHash(num_perm=num_perm, seed=seed).permutations
    return a.astype(np.uint32), b.astype(np.uint32)


def signatures(texts: Sequence[str], cfg: MinHashConfig) -> np.ndarray:
    """(len(texts), num_perm) uint32 MinHash signatures; a text without words gets all 2**32-1.

    Shingle hashes are gathered into blocks of about `_BLOCK_ROWS`, whatever the text lengths,
    and each block is permuted as one (num_perm, rows) array and reduced per text along its
    contiguous axis: few numpy calls for short texts, bounded memory for long ones.
    """
    a, b = _permutations(cfg.num_perm, cfg.seed)
    out = np.full((len(texts), cfg.num_perm), _EMPTY, dtype=np.uint32)
    owners: list[int] = []
    pieces: list[np.ndarray] = []
    pending_rows = 0
    for index, text in enumerate(texts):
        hashes = shingle_hashes(text, cfg.ngram)
        for start in range(0, len(hashes), _BLOCK_ROWS):
            piece = hashes[start : start + _BLOCK_ROWS]
            owners.append(index)
            pieces.append(piece)
            pending_rows += len(piece)
            if pending_rows >= _BLOCK_ROWS:
                _fold_block(owners, pieces, a, b, out)
                owners, pieces, pending_rows = [], [], 0
    if pieces:
        _fold_block(owners, pieces, a, b, out)
    return out


def _fold_block(
    owners: list[int], pieces: list[np.ndarray], a: np.ndarray, b: np.ndarray, out: np.ndarray
) -> None:
    """Fold the minimum permuted value of each non-empty hash piece into its owner's row of `out`.

    Permutation k maps a hash h to fmix32(h) * a[k] + b[k] modulo 2**32, as datasketch does.
    """
    offsets = np.cumsum([0] + [len(piece) for piece in pieces[:-1]])
    mixed = _fmix(np.concatenate(pieces), 32)
    permuted = a[:, None] * mixed[None, :] + b[:, None]
    np.minimum.at(out, np.array(owners), np.minimum.reduceat(permuted, offsets, axis=1).T)


def _mix64(values: np.ndarray) -> np.ndarray:
    """SplitMix64 finalizer: an avalanching bijection on uint64."""
    values = (values ^ (values >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    values = (values ^ (values >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return values ^ (values >> np.uint64(31))


def band_keys(sigs: np.ndarray, band: int, rows: int) -> np.ndarray:
    """(n,) uint64 hash of signature columns [band*rows, (band+1)*rows) of each document.

    The key depends on those columns only, so a step holding just one band's columns may pass
    them with band=0. Equal bands give equal keys; a 64-bit collision of unequal bands only
    adds a candidate pair, which verification then rejects.
    """
    columns = sigs[:, band * rows : (band + 1) * rows].astype(np.uint64)
    if columns.shape[1] != rows:
        width = sigs.shape[1]
        raise ValueError(f"band {band} of {rows} rows lies outside signatures of width {width}")
    keys = np.full(len(sigs), rows, dtype=np.uint64)
    for column in columns.T:
        keys = _mix64(keys ^ column)
    return keys


def candidate_pairs(
    keys: np.ndarray, doc_ids: np.ndarray, max_bucket_size: int = DEFAULT_MAX_BUCKET_SIZE
) -> np.ndarray:
    """(m, 2) int64 pairs (a < b) of `doc_ids` that share a key, each once, sorted.

    A bucket of up to `max_bucket_size` documents yields all its pairs. A larger one yields
    only the pairs of its smallest member with each other member, so the work stays linear in
    the bucket size. Clustering needs connectivity, not every edge: when the members are copies
    of one text (the usual cause of a huge bucket, such as boilerplate), the verified star joins
    them into the same cluster the full clique would. A member that fails verification against
    the centre still meets its own near-duplicates in the other bands, whose buckets differ.
    """
    keys = np.asarray(keys, dtype=np.uint64)
    doc_ids = np.asarray(doc_ids, dtype=np.int64)
    order = np.lexsort((doc_ids, keys))
    sorted_keys, sorted_ids = keys[order], doc_ids[order]
    starts = np.flatnonzero(np.concatenate(([True], sorted_keys[1:] != sorted_keys[:-1])))
    sizes = np.diff(np.concatenate((starts, [len(sorted_keys)])))
    parts = [np.zeros((0, 2), dtype=np.int64)]
    small, big = (sizes >= 2) & (sizes <= max_bucket_size), sizes > max_bucket_size
    for size in np.unique(sizes[small]).tolist():
        first, second = np.triu_indices(size, k=1)
        at = starts[sizes == size][:, None]
        parts.append(np.stack((sorted_ids[at + first].ravel(), sorted_ids[at + second].ravel()), 1))
    for start, size in zip(starts[big].tolist(), sizes[big].tolist()):
        members = sorted_ids[start + 1 : start + size]
        parts.append(np.stack((np.full(size - 1, sorted_ids[start]), members), axis=1))
    pairs = np.concatenate(parts)
    pairs = pairs[pairs[:, 0] != pairs[:, 1]]
    return pairs[np.lexsort((pairs[:, 1], pairs[:, 0]))]


def estimate_jaccard(sigs_a: np.ndarray, sigs_b: np.ndarray) -> np.ndarray:
    """Fraction of equal signature rows, per pair of rows of `sigs_a` and `sigs_b`.

    A text without words has nothing to share, so its estimate is 0 rather than the 1.0 two
    empty sketches would give: wordless texts are never each other's duplicates.
    """
    estimate = (sigs_a == sigs_b).mean(axis=1)
    empty = (sigs_a == _EMPTY).all(axis=1) | (sigs_b == _EMPTY).all(axis=1)
    return np.where(empty, 0.0, estimate)


def clusters(n_docs: int, edges: np.ndarray) -> np.ndarray:
    """(n_docs,) int64 root per document: the smallest index in its connected component.

    Union-find done a whole edge list at a time: each round hooks the larger root of every
    edge that still spans two trees under the smaller one, then compresses paths by pointer
    jumping until every node points at its root. Roots only ever point to smaller indices, so
    no cycle can form, and each round removes at least one root, so it ends.
    """
    parent = np.arange(n_docs, dtype=np.int64)
    edges = np.asarray(edges, dtype=np.int64).reshape(-1, 2)
    while len(edges):
        roots_a, roots_b = parent[edges[:, 0]], parent[edges[:, 1]]
        apart = roots_a != roots_b
        if not apart.any():
            break
        low = np.minimum(roots_a[apart], roots_b[apart])
        high = np.maximum(roots_a[apart], roots_b[apart])
        np.minimum.at(parent, high, low)
        while True:
            grand = parent[parent]
            if np.array_equal(grand, parent):
                break
            parent = grand
        edges = edges[apart]
    return parent


def choose_removals(
    roots: np.ndarray, lengths: np.ndarray, ids: Sequence[str] | np.ndarray, priority: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(remove_mask, keeper index per document) for the clusters given by `roots` (from `clusters`).

    Each cluster keeps a document of its highest `priority` (a source's; all equal when None), of
    those the longest (in characters), ties going to the smallest id,
    so the choice depends on the documents only, never on their order or on the sharding.
    Every other member is removed as a duplicate of that keeper; a keeper is its own keeper.
    """
    roots = np.asarray(roots, dtype=np.int64)
    n_docs = len(roots)
    _, id_rank = np.unique(np.asarray(ids, dtype=str), return_inverse=True)
    rank = np.zeros(n_docs, dtype=np.int64) if priority is None else -np.asarray(priority, dtype=np.int64)
    order = np.lexsort((id_rank.reshape(-1), -np.asarray(lengths, dtype=np.int64), rank, roots))
    sorted_roots = roots[order]
    is_keeper = np.concatenate(([True], sorted_roots[1:] != sorted_roots[:-1]))[:n_docs]
    keeper_of_root = np.zeros(n_docs, dtype=np.int64)
    keeper_of_root[sorted_roots[is_keeper]] = order[is_keeper]
    keeper = keeper_of_root[roots]
    return keeper != np.arange(n_docs), keeper
