"""Array kernels of MinHash LSH near-dedupe, one per scale-out step.

The steps only share arrays, so each runs in parallel over its own slice of the data:
`signatures` needs one shard's texts; `band_keys` and `candidate_pairs` need one band's keys
(a key range of them); `estimate_jaccard` needs the signatures of the candidate pairs;
`clusters` needs only the verified edges; `choose_removals` needs roots, lengths and ids.

Two shingle hashes feed the same permutations. `shingle_hash="fast"` (the default) finds and
hashes the words of a whole batch of texts with array operations, no call per word or shingle.
`shingle_hash="datasketch"` makes signatures bit-identical to datasketch's `MinHash(num_perm,
seed)` (its "affine32" scheme) fed the UTF-8 shingles, so sketches can be checked against, or
mixed with, datasketch; it costs one SHA-1 call per shingle, a few times slower.
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
_SPACE, _NEWLINE = 0x20, 0x0A
_EMPTY = np.uint32(0xFFFFFFFF)  # datasketch's value for a permutation that saw no shingle
_BLOCK_ROWS = 8192  # shingles permuted at once: BLOCK_ROWS * num_perm * 4 bytes stay in cache
_BATCH_TEXTS = 1024  # texts shingled at once
_DIGEST = type(hashlib.sha1()).digest
_WORD_BASE, _SHINGLE_BASE = 0x100000001B3, 0x9E3779B97F4A7C15  # odd: polynomial bases of `fast_hashes`
_DOTTED_I, _SIGMA = "\u0130", "\u03a3"  # the two code points `str.lower` does not map one to one


def _ngrams(word_owner: np.ndarray, n_texts: int, ngram: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(owner, first, stop): the word n-grams of texts whose words are numbered in text order.

    A text with fewer than `ngram` words is one n-gram of all its words; one without has none.
    N-gram i covers words [first[i], stop[i]); `owner` is its text.
    """
    counts = np.bincount(word_owner, minlength=n_texts)
    first_word = np.cumsum(counts) - counts
    per_text = np.where(counts > 0, np.maximum(counts - ngram + 1, 1), 0)
    owner = np.repeat(np.arange(n_texts, dtype=np.int64), per_text)
    first = first_word[owner] + np.arange(len(owner)) - np.repeat(np.cumsum(per_text) - per_text, per_text)
    stop = np.minimum(first + ngram, first_word[owner] + counts[owner])
    return owner, first, stop


def shingle_spans(texts: Sequence[str], ngram: int) -> tuple[bytes, np.ndarray, np.ndarray, np.ndarray]:
    """The word n-grams of a batch of texts as byte spans of one buffer: (buffer, starts, ends, owner).

    Words are `\\w+` tokens, lower-cased, joined by one space; texts are joined by a newline.
    Neither separator occurs inside a UTF-8 encoded word, so one pass over the bytes finds every
    word of the batch, and the shingles (see `_ngrams`) are computed without a per-text loop.
    `owner` is the text of each shingle, in text order.
    """
    findall = _WORD.findall
    # Lower-casing after joining equals lower-casing each text: a newline, like the end of a
    # string, is neither cased nor case-ignorable, so context-dependent rules (final sigma) agree.
    joined = "\n".join([" ".join(findall(text)) for text in texts]).lower().encode()
    buffer = np.frombuffer(joined, dtype=np.uint8)
    breaks = np.flatnonzero((buffer == _SPACE) | (buffer == _NEWLINE))
    starts = np.concatenate(([0], breaks + 1))
    ends = np.concatenate((breaks, [len(buffer)]))
    text_of = np.concatenate(([0], np.cumsum(buffer[breaks] == _NEWLINE)))
    words = ends > starts  # a text without words leaves an empty span between two newlines
    starts, ends, text_of = starts[words], ends[words], text_of[words]
    owner, first, stop = _ngrams(text_of, len(texts), ngram)
    return joined, starts[first], ends[stop - 1], owner


def sha1_hashes(texts: Sequence[str], ngram: int) -> tuple[np.ndarray, np.ndarray]:
    """(hashes, owner): datasketch's `sha1_hash32` of each shingle (the first 4 bytes of its
    SHA-1, little-endian) and the text of each."""
    joined, starts, ends, owner = shingle_spans(texts, ngram)
    spans = map(joined.__getitem__, map(slice, starts.tolist(), ends.tolist()))
    digests = b"".join(map(_DIGEST, map(hashlib.sha1, spans)))
    return np.frombuffer(digests, dtype=np.uint8).reshape(-1, 20)[:, :4].copy().view("<u4").ravel(), owner


@lru_cache(maxsize=1)
def _code_point_tables() -> tuple[np.ndarray, np.ndarray]:
    """(is_word, lower) for every code point: whether `\\w` matches it, and its lower case.

    `str.lower` maps each code point to one except U+0130 (to "i" and a combining dot, which is
    not `\\w`) and U+03A3 (to final or medial sigma, by context). U+0130 keeps its own code here:
    no other letter lowers to it, so words stay as distinct as their lower-cased strings; texts
    with U+03A3 are lowered word by word before (see `word_spans`).
    """
    everything = np.arange(0x110000, dtype="<u4").tobytes().decode("utf-32-le", "surrogatepass")
    is_word = np.zeros(len(everything), dtype=bool)
    for match in _WORD.finditer(everything):
        is_word[match.start() : match.end()] = True
    lowered = everything.replace(_DOTTED_I, "\u0131").lower().encode("utf-32-le", "surrogatepass")
    lower = np.frombuffer(lowered, dtype="<u4").copy()
    lower[ord(_DOTTED_I)] = ord(_DOTTED_I)
    return is_word, lower


def _lower_words(text: str) -> str:
    """A text's words lower-cased one by one (so sigma follows its word), U+0130 kept as itself."""
    return " ".join([word.lower().replace("i\u0307", _DOTTED_I) for word in _WORD.findall(text)])


def word_spans(texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The `\\w+` words of a batch of texts: (codes, starts, ends, owner), word i being the
    lower-cased code points codes[starts[i]:ends[i]] of text owner[i], in text order.

    The texts, joined by a newline (not `\\w`), become one array of code points (one byte each
    when all are ASCII) that two table look-ups classify and lower-case.
    """
    is_word, lower = _code_point_tables()
    pieces = [_lower_words(text) if _SIGMA in text else text for text in texts]
    joined = "\n".join(pieces)
    if joined.isascii():
        points = np.frombuffer(joined.encode("ascii"), dtype=np.uint8)
        wordy, codes = is_word[:128][points], lower[:128].astype(np.uint8)[points]
    else:
        points = np.frombuffer(joined.encode("utf-32-le", "surrogatepass"), dtype="<u4")
        wordy, codes = is_word[points], lower[points]
    edges = np.flatnonzero(np.diff(wordy, prepend=False, append=False))
    starts, ends = edges[0::2], edges[1::2]
    text_ends = np.cumsum([len(piece) + 1 for piece in pieces])
    return codes, starts, ends, np.searchsorted(text_ends, starts, side="right")


@lru_cache(maxsize=4)
def _powers(base: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """base**k and base**-k modulo 2**64 for k < size (base odd, so it has an inverse)."""
    forward = np.full(size, base, np.uint64)
    inverse = np.full(size, pow(base, -1, 2**64), np.uint64)
    forward[0] = inverse[0] = 1
    with np.errstate(over="ignore"):
        return np.cumprod(forward, dtype=np.uint64), np.cumprod(inverse, dtype=np.uint64)


def _range_hashes(values: np.ndarray, starts: np.ndarray, stops: np.ndarray, base: int) -> np.ndarray:
    """A 64-bit hash of each range values[start:stop], all ranges at once with no per-range call.

    Prefix sums of value * base**position (mod 2**64) give each range's polynomial hash in O(1),
    which the range's length and a SplitMix64 finalizer turn into well-mixed bits.
    """
    forward, inverse = _powers(base, 1 << (len(values) + 1).bit_length())
    with np.errstate(over="ignore"):
        prefix = np.zeros(len(values) + 1, dtype=np.uint64)
        np.cumsum(values * forward[: len(values)], out=prefix[1:])
        polynomial = (prefix[stops] - prefix[starts]) * inverse[starts]
        return _mix64(polynomial + (stops - starts).astype(np.uint64))


def fast_hashes(texts: Sequence[str], ngram: int) -> tuple[np.ndarray, np.ndarray]:
    """(hashes, owner): a 32-bit hash of each shingle (see `_ngrams`) and the text of each.

    Each word is hashed from its code points, each shingle from its words' hashes, so equal
    shingles hash equally whatever separates their words and whatever text they come from.
    """
    codes, starts, ends, word_owner = word_spans(texts)
    words = _range_hashes(codes, starts, ends, _WORD_BASE)
    owner, first, stop = _ngrams(word_owner, len(texts), ngram)
    return (_range_hashes(words, first, stop, _SHINGLE_BASE) >> np.uint64(32)).astype(np.uint32), owner


def shingle_hashes(text: str, ngram: int, scheme: str = "fast") -> np.ndarray:
    """The uint32 hashes of one text's shingles, in the given scheme."""
    return _HASHES[scheme]([text], ngram)[0]


@lru_cache(maxsize=8)
def _permutations(num_perm: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """datasketch's own affine permutations (a odd, b) for this num_perm and seed."""
    a, b = MinHash(num_perm=num_perm, seed=seed).permutations
    return a.astype(np.uint32), b.astype(np.uint32)


def signatures(texts: Sequence[str], cfg: MinHashConfig) -> np.ndarray:
    """(len(texts), num_perm) uint32 MinHash signatures; a text without words gets all 2**32-1.

    Texts are shingled and hashed a batch at a time; the shingle hashes are permuted in blocks
    of `_BLOCK_ROWS`, as (num_perm, rows) arrays reduced per text along their contiguous axis,
    so memory stays bounded whatever the text lengths.
    """
    out = np.full((len(texts), cfg.num_perm), _EMPTY, dtype=np.uint32)
    for start in range(0, len(texts), _BATCH_TEXTS):
        hashes, owner = _HASHES[cfg.shingle_hash](texts[start : start + _BATCH_TEXTS], cfg.ngram)
        _fold(hashes, owner + start, cfg, out)
    return out


def _fold(hashes: np.ndarray, owner: np.ndarray, cfg: MinHashConfig, out: np.ndarray) -> None:
    """Fold the minimum permuted hash of each text into its row of `out`.

    Permutation k maps a hash h to fmix32(h) * a[k] + b[k] modulo 2**32, as datasketch does.
    """
    a, b = _permutations(cfg.num_perm, cfg.seed)
    mixed = _fmix(hashes, 32)
    block = np.empty((cfg.num_perm, min(_BLOCK_ROWS, len(mixed))), dtype=np.uint32)
    for start in range(0, len(mixed), _BLOCK_ROWS):
        rows = block[:, : min(_BLOCK_ROWS, len(mixed) - start)]
        np.multiply(a[:, None], mixed[None, start : start + rows.shape[1]], out=rows)
        np.add(rows, b[:, None], out=rows)
        owners = owner[start : start + rows.shape[1]]
        firsts = np.flatnonzero(np.concatenate(([True], owners[1:] != owners[:-1])))
        texts = owners[firsts]  # distinct within a block: a text's shingles are contiguous
        out[texts] = np.minimum(out[texts], np.minimum.reduceat(rows, firsts, axis=1).T)


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


_HASHES = {"fast": fast_hashes, "datasketch": sha1_hashes}


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
    # ranked as str objects: no fixed-width copy as wide as the longest id (4 bytes a character)
    _, id_rank = np.unique(np.asarray(ids, dtype=object), return_inverse=True)
    rank = np.zeros(n_docs, dtype=np.int64) if priority is None else -np.asarray(priority, dtype=np.int64)
    order = np.lexsort((id_rank.reshape(-1), -np.asarray(lengths, dtype=np.int64), rank, roots))
    sorted_roots = roots[order]
    is_keeper = np.concatenate(([True], sorted_roots[1:] != sorted_roots[:-1]))[:n_docs]
    keeper_of_root = np.zeros(n_docs, dtype=np.int64)
    keeper_of_root[sorted_roots[is_keeper]] = order[is_keeper]
    keeper = keeper_of_root[roots]
    return keeper != np.arange(n_docs), keeper
