"""MinHash LSH near-dedupe kernels: exact against datasketch, correct on small cases, and
accurate on real near-duplicates measured against exact word-5-gram Jaccard."""

from __future__ import annotations

import random
import re
from collections.abc import Sequence

import numpy as np
import pytest
from datasketch import MinHash
from datasketch.hashfunc import sha1_hash32
from pydantic import ValidationError

from data_prep.minhash.config import MinHashConfig
from data_prep.minhash.kernels import (
    band_keys,
    candidate_pairs,
    choose_removals,
    clusters,
    estimate_jaccard,
    fast_hashes,
    shingle_hashes,
    signatures,
)
from tests.conftest import DATA, read_set

SHORT_TEXTS = [
    "The quick brown Fox jumps over the lazy dog, twice: the quick brown fox!",
    "Four words only here",
    "",
    "... --- ...",
    "Ünïcode WÖRDS straße ΟΔΟΣ and İstanbul, 東京 too; snake_case_names count as words",
]


def reference_shingles(text: str, ngram: int = 5) -> list[bytes]:
    """The corpus' definition, plainly: lower-cased `\\w+` tokens, n-grams joined by spaces."""
    words = [word.lower() for word in re.findall(r"\w+", text)]
    if not words:
        return []
    return [" ".join(words[i : i + ngram]).encode() for i in range(max(len(words) - ngram + 1, 1))]


def datasketch_signature(text: str, num_perm: int, seed: int) -> np.ndarray:
    minhash = MinHash(num_perm=num_perm, seed=seed)
    minhash.update_batch(reference_shingles(text))
    return minhash.hashvalues


def run_chain(texts: Sequence[str], ids: Sequence[str], cfg: MinHashConfig, shards: int = 4):
    """All four steps in-process: signatures per shard, pairs per band, clusters, keep rule."""
    bounds = np.linspace(0, len(texts), shards + 1).astype(int)
    sigs = np.concatenate([signatures(texts[a:b], cfg) for a, b in zip(bounds[:-1], bounds[1:])])
    bands, rows = cfg.band_layout()
    doc_ids = np.arange(len(texts), dtype=np.int64)
    per_band = [candidate_pairs(band_keys(sigs, band, rows), doc_ids, cfg.max_bucket_size) for band in range(bands)]
    pairs = np.unique(np.concatenate(per_band), axis=0)
    edges = pairs[estimate_jaccard(sigs[pairs[:, 0]], sigs[pairs[:, 1]]) >= cfg.threshold]
    roots = clusters(len(texts), edges)
    remove, keeper = choose_removals(roots, np.array([len(t) for t in texts]), ids)
    return sigs, pairs, remove, keeper


def removals_by_id(ids: Sequence[str], remove: np.ndarray, keeper: np.ndarray) -> dict[str, str]:
    return {ids[i]: ids[keeper[i]] for i in np.flatnonzero(remove)}


def components(pairs: list[tuple[str, str]]) -> list[set[str]]:
    """Connected components by plain graph search, independent of the code under test."""
    neighbours: dict[str, set[str]] = {}
    for a, b in pairs:
        neighbours.setdefault(a, set()).add(b)
        neighbours.setdefault(b, set()).add(a)
    seen: set[str] = set()
    groups = []
    for start in neighbours:
        if start in seen:
            continue
        group, stack = set(), [start]
        while stack:
            node = stack.pop()
            if node not in group:
                group.add(node)
                stack.extend(neighbours[node] - group)
        seen |= group
        groups.append(group)
    return groups


@pytest.fixture(scope="module")
def neardup():
    docs = read_set("neardup")
    lines = (DATA / "neardup_pairs.tsv").read_text(encoding="utf-8").splitlines()[1:]
    truth = [(a, b, float(j)) for a, b, j in (line.split("\t") for line in lines)]
    return [d["text"] for d in docs], [d["id"] for d in docs], truth


def test_pairs_file_holds_the_exact_jaccard_of_the_reference_shingles(neardup) -> None:
    """The ground truth itself, on a seeded sample of its pairs; and it spans every threshold."""
    texts, ids, truth = neardup
    by_id = dict(zip(ids, texts))
    for a, b, listed in random.Random(5).sample(truth, 40):
        first, second = set(reference_shingles(by_id[a])), set(reference_shingles(by_id[b]))
        assert len(first & second) / len(first | second) == pytest.approx(listed, abs=5e-5), (a, b)
    assert {round(j, 1) for *_, j in truth} >= {0.5, 0.6, 0.7, 0.8, 0.9, 1.0}


@pytest.fixture(scope="module")
def default_run(neardup):
    texts, ids, _ = neardup
    return run_chain(texts, ids, MinHashConfig())


# --- signatures ---------------------------------------------------------------------------


@pytest.mark.parametrize(("num_perm", "seed"), [(128, 1), (256, 1), (64, 42)])
def test_signatures_equal_datasketch(num_perm: int, seed: int) -> None:
    cfg = MinHashConfig(num_perm=num_perm, seed=seed, bands=num_perm // 4, rows=4, shingle_hash="datasketch")
    expected = np.array([datasketch_signature(t, num_perm, seed) for t in SHORT_TEXTS])
    np.testing.assert_array_equal(signatures(SHORT_TEXTS, cfg), expected)


def test_signatures_equal_datasketch_on_real_and_long_texts(neardup) -> None:
    texts = neardup[0][:20] + ["\n".join(neardup[0][:40])]  # the last spans several blocks
    expected = np.array([datasketch_signature(t, 128, 1) for t in texts])
    np.testing.assert_array_equal(signatures(texts, MinHashConfig(shingle_hash="datasketch")), expected)


def test_shingle_hashes_follow_the_corpus_definition() -> None:
    for text in SHORT_TEXTS:
        expected = sorted(sha1_hash32(s) for s in reference_shingles(text))
        assert sorted(shingle_hashes(text, 5, "datasketch").tolist()) == expected
    assert shingle_hashes("", 5, "datasketch").size == 0
    assert shingle_hashes("?!", 5, "datasketch").size == 0
    assert shingle_hashes("Two words", 5, "datasketch").tolist() == [sha1_hash32(b"two words")]
    assert np.array_equal(
        shingle_hashes("A b C d E f", 5, "datasketch"), shingle_hashes("a, B; c\nd -- e  F", 5, "datasketch")
    )


# --- LSH buckets and pairs ----------------------------------------------------------------


def test_band_keys_group_equal_bands_only() -> None:
    sigs = np.array([[1, 2, 3, 4], [1, 2, 9, 9], [1, 3, 3, 4], [7, 7, 3, 4]], dtype=np.uint32)
    first, second = band_keys(sigs, 0, 2), band_keys(sigs, 1, 2)
    assert first[0] == first[1] and len(set(first.tolist())) == 3
    assert second[0] == second[2] == second[3] != second[1]
    np.testing.assert_array_equal(second, band_keys(sigs[:, 2:4], 0, 2))
    with pytest.raises(ValueError, match="outside"):
        band_keys(sigs, 2, 2)


def test_candidate_pairs_all_pairs_then_stars() -> None:
    keys = np.array([5, 9, 5, 7, 5, 9, 1, 1, 1, 1], dtype=np.uint64)
    doc_ids = np.array([40, 11, 30, 99, 20, 10, 3, 2, 1, 4], dtype=np.int64)
    pairs = candidate_pairs(keys, doc_ids, max_bucket_size=3)
    expected = [[1, 2], [1, 3], [1, 4], [10, 11], [20, 30], [20, 40], [30, 40]]
    assert pairs.tolist() == expected  # the 4-member bucket {1,2,3,4} became a star at 1
    assert len(candidate_pairs(keys, doc_ids, max_bucket_size=4)) == len(expected) + 3
    assert candidate_pairs(np.zeros(0, np.uint64), np.zeros(0, np.int64)).shape == (0, 2)


def test_estimate_jaccard_matches_datasketch_and_ignores_empty_texts() -> None:
    texts = SHORT_TEXTS + ["The quick brown fox jumps over the lazy dog, twice: the quick red fox!"]
    sigs = signatures(texts, MinHashConfig())
    a, b = np.array([0, 0, 1, 2]), np.array([5, 1, 1, 2])
    minhashes = [MinHash(128, hashvalues=s, scheme="affine32") for s in sigs]
    expected = [minhashes[i].jaccard(minhashes[j]) for i, j in zip(a[:3], b[:3])]
    np.testing.assert_allclose(estimate_jaccard(sigs[a], sigs[b]), expected + [0.0])
    assert 0 < expected[0] < 1 and expected[2] == 1.0


# --- clusters and the keep rule -----------------------------------------------------------


def test_union_find_on_a_small_graph() -> None:
    edges = np.array([[3, 5], [0, 5], [4, 1], [9, 8], [7, 8], [6, 7], [2, 2]])
    expected = [0, 1, 2, 0, 1, 0, 6, 6, 6, 6, 10]
    assert clusters(11, edges).tolist() == expected
    assert clusters(11, edges[::-1, ::-1]).tolist() == expected
    assert clusters(3, np.zeros((0, 2), np.int64)).tolist() == [0, 1, 2]


def test_union_find_matches_graph_search_on_a_random_graph() -> None:
    rng = np.random.default_rng(7)
    edges = rng.integers(0, 400, size=(300, 2))
    roots = clusters(400, edges)
    for group in components([(str(a), str(b)) for a, b in edges.tolist()]):
        members = sorted(int(x) for x in group)
        assert set(roots[members].tolist()) == {members[0]}


def test_keep_rule_longest_then_smallest_id() -> None:
    roots = np.array([0, 0, 0, 3, 3, 5])
    lengths = np.array([10, 30, 30, 5, 5, 1])
    ids = ["c", "z", "b", "y", "x", "q"]
    remove, keeper = choose_removals(roots, lengths, ids)
    assert remove.tolist() == [True, True, False, True, False, False]
    assert keeper.tolist() == [2, 2, 2, 4, 4, 5]


# --- the whole chain on real near-duplicates ----------------------------------------------


def recall_and_precision(truth, ids: Sequence[str], remove: np.ndarray) -> tuple[float, float]:
    """Recall: of each group linked by exact Jaccard >= 0.8, all but one document is removed.
    Precision: each removed document has a partner with exact Jaccard >= 0.7 (exact duplicates
    are listed in the TSV with Jaccard 1.0, so they count)."""
    removed = {ids[i] for i in np.flatnonzero(remove)}
    groups = components([(a, b) for a, b, j in truth if j >= 0.8])
    should = sum(len(g) - 1 for g in groups)
    hits = sum(min(len(g & removed), len(g) - 1) for g in groups)
    justified = {x for a, b, j in truth if j >= 0.7 for x in (a, b)}
    return hits / should, len(removed & justified) / len(removed)


def test_recall_and_precision_against_exact_jaccard(neardup, default_run) -> None:
    _, ids, truth = neardup
    recall, precision = recall_and_precision(truth, ids, default_run[2])
    assert recall >= 0.99, f"recall {recall:.4f}"
    assert precision >= 0.99, f"precision {precision:.4f}"


def test_star_pairs_for_big_buckets_still_cluster(neardup, default_run) -> None:
    texts, ids, truth = neardup
    _, star_pairs, star_remove, _ = run_chain(texts, ids, MinHashConfig(max_bucket_size=2))
    assert len(star_pairs) < len(default_run[1]) // 2  # every bucket above 2 became a star
    recall, precision = recall_and_precision(truth, ids, star_remove)
    assert recall >= 0.98, f"recall {recall:.4f} with star pairs"
    assert precision >= 0.98, f"precision {precision:.4f} with star pairs"


def test_one_and_four_shards_give_identical_results(neardup, default_run) -> None:
    texts, ids, _ = neardup
    sigs, pairs, remove, keeper = default_run
    one_sigs, one_pairs, one_remove, one_keeper = run_chain(texts, ids, MinHashConfig(), shards=1)
    np.testing.assert_array_equal(one_sigs, sigs)
    np.testing.assert_array_equal(one_pairs, pairs)
    assert removals_by_id(ids, one_remove, one_keeper) == removals_by_id(ids, remove, keeper)


def test_removals_do_not_depend_on_input_order(neardup, default_run) -> None:
    texts, ids, _ = neardup
    _, _, remove, keeper = default_run
    order = np.random.default_rng(3).permutation(len(texts))
    shuffled_ids = [ids[i] for i in order]
    _, _, s_remove, s_keeper = run_chain([texts[i] for i in order], shuffled_ids, MinHashConfig())
    assert removals_by_id(shuffled_ids, s_remove, s_keeper) == removals_by_id(ids, remove, keeper)
    assert remove.any()


# --- config -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"threshold": 0.0}, "greater than 0"),
        ({"threshold": 1.2}, "less than or equal to 1"),
        ({"candidate_threshold": 0.8, "threshold": 0.7}, "must not exceed threshold"),
        ({"split_group_threshold": 0.8}, "split_group_threshold \\(0.8\\) must not exceed threshold"),
        ({"bands": 20, "rows": 5}, "bands \\* rows must equal num_perm"),
        ({"bands": 16}, "set both bands and rows"),
        ({"max_bucket_size": 1}, "greater than or equal to 2"),
        ({"num_perms": 128}, "Extra inputs"),
    ],
)
def test_config_rejects_bad_values(values: dict, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        MinHashConfig(**values)


def test_default_layout_rarely_misses_a_pair_at_the_drop_threshold() -> None:
    cfg = MinHashConfig()
    bands, rows = cfg.band_layout()
    assert bands * rows <= cfg.num_perm
    assert 1 - (1 - cfg.threshold**rows) ** bands >= 0.99
    assert 1 - (1 - cfg.candidate_threshold**rows) ** bands < 0.99
    assert MinHashConfig(bands=32, rows=4).band_layout() == (32, 4)


def found(s: float, bands: int, rows: int) -> float:
    """LSH's chance that a pair of Jaccard s shares at least one of `bands` bands of `rows` rows."""
    return 1 - (1 - s**rows) ** bands


def test_split_group_bands_find_the_pairs_dedupe_bands_miss() -> None:
    """The split bands, tuned to split_group_threshold, propose most pairs at it and nearly all at
    Jaccard 0.5, where dedupe's bands propose about half; they key documents after dedupe's bands,
    and there are none when only duplicates are grouped."""
    cfg = MinHashConfig()
    bands, rows = cfg.split_band_layout()
    dedupe_bands, dedupe_rows = cfg.band_layout()
    assert bands * rows <= cfg.num_perm
    assert (
        found(cfg.split_group_threshold, bands, rows)
        > 0.6
        > 10 * found(cfg.split_group_threshold, dedupe_bands, dedupe_rows)
    )
    assert found(0.5, bands, rows) > 0.995 and found(0.5, dedupe_bands, dedupe_rows) < 0.6
    assert found(0.04, bands, rows) < 0.003, "an unrelated pair sharing a sentence is rarely proposed"
    assert cfg.lsh_bands() == [(b, dedupe_rows) for b in range(dedupe_bands)] + [(b, rows) for b in range(bands)]
    assert MinHashConfig(split_group_threshold=cfg.threshold).lsh_bands() == cfg.lsh_bands()[:dedupe_bands]
    assert MinHashConfig(split_group_threshold=0.5).split_band_layout() != (bands, rows)


def test_datasketch_shingle_hash_finds_the_same_near_duplicates(neardup, default_run) -> None:
    texts, ids, truth = neardup
    sigs, _, remove, _ = run_chain(texts, ids, MinHashConfig(shingle_hash="datasketch"))
    assert not np.array_equal(sigs[:20], default_run[0][:20]), "another hash family"
    recall, precision = recall_and_precision(truth, ids, remove)
    assert recall >= 0.99, f"recall {recall:.4f} with the datasketch shingle hash"
    assert precision >= 0.99, f"precision {precision:.4f} with the datasketch shingle hash"


def test_fast_shingle_hash_hashes_the_corpus_shingles() -> None:
    """Equal shingles (lower-cased `\\w+` words, sigma and dotted I included) hash equally, whatever
    text or batch they come from, and distinct ones almost never collide; empty texts sign empty."""
    texts = SHORT_TEXTS + ["ΣΊΣΥΦΟΣ and σίσυφος, ΟΔΟΣ οδος; İZMİR izmi\u0307r, ĲSSELMEER ĳsselmeer", "a\ud800b c"]
    texts += [d["text"] for d in read_set("multilingual")]
    hashes, owner = fast_hashes(texts, 5)
    shingles = [(i, shingle) for i, text in enumerate(texts) for shingle in reference_shingles(text)]
    assert owner.tolist() == [i for i, _ in shingles]
    alone, _ = fast_hashes(texts[:1], 5)  # an ASCII batch is read a byte per code point
    assert np.array_equal(alone, hashes[owner == 0])
    hash_of: dict[bytes, int] = {}
    for (_, shingle), value in zip(shingles, hashes.tolist()):
        assert hash_of.setdefault(shingle, value) == value, shingle
    assert len(set(hash_of.values())) >= len(hash_of) - len(hash_of) ** 2 / 2**31, "4x the 32-bit collisions expected"
    for first, second in [("ΟΔΟΣ ΣΟΦΟΣ", "οδος σοφος"), ("ΟΔΟΣ", "οδοσ"), ("İZMİR", "izmir"), ("İzmir", "i\u0307zmir")]:
        same = reference_shingles(first) == reference_shingles(second)
        assert np.array_equal(shingle_hashes(first, 5), shingle_hashes(second, 5)) == same, (first, second)
    assert np.array_equal(shingle_hashes("A b C d E f", 5), shingle_hashes("a, B; c\nd -- e  F", 5))
    cfg = MinHashConfig()
    batch = signatures(SHORT_TEXTS, cfg)
    np.testing.assert_array_equal(batch, np.concatenate([signatures([t], cfg) for t in SHORT_TEXTS]))
    assert (batch[2] == 0xFFFFFFFF).all() and not (batch[0] == 0xFFFFFFFF).any()
