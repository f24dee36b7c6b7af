"""The train/validation split keeps near-duplicate groups whole, and the overlap stat finds the
overlap planted across the split and nothing else, in a real `prep` run on real text."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from data_prep.pack import is_validation
from pipeline.config import load_config
from pipeline.prep import run_prep
from pipeline.summary import overlap_line
from tests.conftest import read_set, write_jsonl
from tests.test_minhash import reference_shingles

VAL_FRACTION = 0.3
WORDS = 240  # words of each planted document: about 235 shingles, enough for steady estimates
OVERRIDES = [
    "prep.stages=[normalize, exact_dedup, minhash_dedup, tokenize, pack, split_overlap]",
    "prep.shard_mb=0.05",
    "prep.tokenizer.vocab_size=1000",
    f"prep.pack.val_fraction={VAL_FRACTION}",
    "prep.pack.method=best_fit",
    "prep.pack.seq_len=2048",
]  # every planted document whole in one row


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def variant(words: list[str], every: int, tag: str) -> str:
    """`words` with one word in `every` replaced: word-5 Jaccard with the original about
    (1 - 5/every) / (1 + 5/every), 0.52 for every 16 words, 0.88 for every 80."""
    return " ".join(f"{tag}{i}" if i % every == every // 2 else w for i, w in enumerate(words))


def first_id(prefix: str, held_out: bool) -> str:
    """The first id `prefix-k` that the split by id puts on the asked side."""
    return next(f"{prefix}-{k}" for k in range(1000) if is_validation(f"{prefix}-{k}", VAL_FRACTION) == held_out)


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """30 groups: a document and two variants below the drop threshold (Jaccard ~0.52), every other
    group also a copy above it (~0.88, removed); 25 unrelated documents; and a validation document
    whose whole text (Korean) opens a long training document (Japanese after it: no group)."""
    docs = read_set("english")
    records, groups = [], []
    for g, doc in enumerate(docs[:30]):
        words = doc["text"].split()[:WORDS]
        members = [(f"g{g}-base", " ".join(words))] + [
            (f"g{g}-mid{k}", variant(words, 16, f"m{k}q{g}x")) for k in range(2)
        ]
        if g % 2:
            members.append((f"g{g}-copy", variant(words, 80, f"c{g}x")))
        groups.append([name for name, _ in members])
        records += [{"id": name, "text": text} for name, text in members]
    records += [{"id": f"solo-{n}", "text": " ".join(doc["text"].split()[:WORDS])} for n, doc in enumerate(docs[30:55])]
    held, trained = first_id("overlap-held", True), first_id("overlap-train", False)
    others = read_set("multilingual")  # in languages no other document here is written in: no stray overlap
    passage = max((d["text"] for d in others if d["lang"] == "ko"), key=len)
    tail = "\n".join(d["text"] for d in others if d["id"].startswith("man/manpages-ja/"))
    records += [{"id": held, "text": passage}, {"id": trained, "text": passage + " " + tail}]
    corpus = write_jsonl(tmp_path_factory.mktemp("planted") / "planted.jsonl", records)
    output = tmp_path_factory.mktemp("planted_prep")
    config = load_config(None, OVERRIDES)
    config.prep.inputs = [corpus]
    stats = run_prep(config.prep, output, show_progress=False)
    return {"output": output, "stats": stats, "groups": groups, "held": held, "config": config, "corpus": corpus}


def sides(output: Path) -> dict[str, set[str]]:
    """Which split each clean document's text was packed into, read back from the shards."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(output / "shards" / "tokenizer.json"))
    eod = tokenizer.token_to_id("<|endoftext|>")
    by_text = {}
    for part in sorted((output / "clean").glob("*.parquet")):
        table = pq.read_table(part, columns=["id", "text"])
        by_text.update(zip(table["text"].to_pylist(), table["id"].to_pylist()))
    found: dict[str, set[str]] = {}
    for split in ("train", "val"):
        for shard in sorted((output / "shards" / split).glob("*.arrow")):
            table = pa.ipc.open_file(pa.memory_map(str(shard))).read_all()
            for row, starts in zip(table["tokens"].to_pylist(), table["segment_starts"].to_pylist()):
                for start, stop in zip(starts, [*starts[1:], len(row)]):
                    segment = row[start:stop]
                    text = tokenizer.decode(segment[: segment.index(eod)] if eod in segment else segment)
                    if text in by_text:
                        found.setdefault(by_text[text], set()).add(split)
    return found


def test_near_duplicate_groups_never_straddle_train_and_val(planted: dict) -> None:
    output, stats = planted["output"], planted["stats"]
    minhash = next(s for s in stats.stages if s.name == "minhash_dedup")
    assert minhash.dropped == {"near_duplicate": 15}, "each copy above the drop threshold is removed"
    found = sides(output)
    kept = {i for part in (output / "clean").glob("*.parquet") for i in pq.read_table(part)["id"].to_pylist()}
    group_sides = []
    for members in planted["groups"]:
        survivors = [m for m in members if m in kept]
        assert len(survivors) == 3, members
        assert all(len(found.get(m, ())) == 1 for m in survivors), {m: found.get(m) for m in survivors}
        group_sides.append({side for m in survivors for side in found[m]})
    assert all(len(s) == 1 for s in group_sides), group_sides
    assert {"train"} in group_sides and {"val"} in group_sides
    by_id = [{is_validation(m, VAL_FRACTION) for m in members if m in kept} for members in planted["groups"]]
    assert sum(len(s) == 2 for s in by_id) >= 10, "a split by id would have torn these groups apart"


def test_overlap_stat_counts_the_planted_overlap_only(planted: dict) -> None:
    from tokenizers import Tokenizer

    overlap = planted["stats"].split_overlap
    assert overlap["val_documents"] == overlap["sampled"] == overlap["measured"] > 10
    tokenizer = Tokenizer.from_file(str(planted["output"] / "shards" / "tokenizer.json"))
    clean = pa.concat_tables(pq.read_table(p) for p in sorted((planted["output"] / "clean").glob("*.parquet")))
    text = clean.filter(pa.compute.equal(clean["id"], planted["held"]))["text"][0].as_py()
    tokens = len(tokenizer.encode(text).ids) + 1  # and the end-of-document token
    windows = tokens - overlap["window_tokens"] + 1  # all but the last (which holds the end token) are in training
    assert overlap["worst"][0] == {"id": planted["held"], "share": round((windows - 1) / windows, 4)}
    assert overlap["worst_share"] == overlap["worst"][0]["share"]
    assert all(w["share"] < 0.05 for w in overlap["worst"][1:]), "the rest share a few boilerplate windows at most"
    line = overlap_line(overlap)
    assert f"{overlap['sharing']} of {overlap['measured']} validation documents" in line and planted["held"] in line


def test_overlap_is_zero_without_the_training_copy(planted: dict, tmp_path: Path) -> None:
    """The same corpus without the training document that holds the passage, tokenized alike:
    the passage's document no longer overlaps, and every other count stays."""
    records = [r for r in read_jsonl(planted["corpus"]) if not r["id"].startswith("overlap-train")]
    config = load_config(None, [*OVERRIDES, f"prep.tokenizer.path={planted['output'] / 'shards' / 'tokenizer.json'}"])
    config.prep.inputs = [write_jsonl(tmp_path / "without.jsonl", records)]
    overlap = run_prep(config.prep, tmp_path / "prep", show_progress=False).split_overlap
    before = planted["stats"].split_overlap
    assert overlap["sharing"] == before["sharing"] - 1, (overlap["worst"], before["worst"])
    assert planted["held"] not in [w["id"] for w in overlap["worst"]]
    assert overlap["worst"][: len(before["worst"]) - 1] == before["worst"][1:]


def test_overlap_sample_is_capped(planted: dict) -> None:
    config = load_config(None, [*OVERRIDES, "prep.split_overlap.sample_docs=3"])
    config.prep.inputs = [planted["corpus"]]
    capped = run_prep(config.prep, planted["output"], show_progress=False).split_overlap
    assert capped["sampled"] == 3 and capped["sample_docs"] == 3
    assert capped["val_documents"] == planted["stats"].split_overlap["val_documents"]
    assert np.all([w["share"] <= planted["stats"].split_overlap["worst_share"] for w in capped["worst"]])


# --- edited copies of real documents -----------------------------------------------------------

PAIRS = 250
EDIT_RATE = 0.06  # of the words of a copy: word-5-gram Jaccard with the original 0.53-0.71
PAIR_WORDS = 250  # words kept of each original: about as many shingles


def jaccard(a: str, b: str) -> float:
    """Exact Jaccard of the two texts' word-5-gram sets (the corpus definition)."""
    first, second = set(reference_shingles(a)), set(reference_shingles(b))
    return len(first & second) / len(first | second)


def edited_copy(text: str, rng: random.Random) -> str:
    """`text` with EDIT_RATE of its words, at random places, replaced by another of its words."""
    words = text.split()
    for place in rng.sample(range(len(words)), max(1, round(EDIT_RATE * len(words)))):
        words[place] = rng.choice(words)
    return " ".join(words)


@pytest.fixture(scope="module")
def edited_pairs(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """PAIRS real documents (the English prose set, then the longest multilingual ones in scripts
    that separate words by spaces), each beside an edited copy, through a real prep run."""
    spaced = [d for d in read_set("multilingual") if d["lang"] not in ("ja", "ko", "zh")]
    originals = read_set("english") + sorted(spaced, key=lambda d: (-len(d["text"].split()), d["id"]))
    rng = random.Random(7)
    pairs, records = [], []
    for n, doc in enumerate(originals[:PAIRS]):
        text = " ".join(doc["text"].split()[:PAIR_WORDS])
        copy = edited_copy(text, rng)
        pairs.append((f"pair{n}-a", f"pair{n}-b", jaccard(text, copy)))
        records += [{"id": f"pair{n}-a", "text": text}, {"id": f"pair{n}-b", "text": copy}]
    corpus = write_jsonl(tmp_path_factory.mktemp("pairs") / "pairs.jsonl", records)
    output = tmp_path_factory.mktemp("pairs_prep")
    config = load_config(
        None,
        [
            *OVERRIDES,
            "prep.stages=[normalize, exact_dedup, minhash_dedup, tokenize, pack]",
            "prep.shard_mb=0.25",  # several shards: pairs are found across them
            "prep.pack.val_fraction=0.5",
        ],
    )  # a pair torn apart by chance straddles half the time
    config.prep.inputs = [corpus]
    run_prep(config.prep, output, show_progress=False)
    return {"output": output, "pairs": pairs}


def test_edited_copies_of_real_documents_never_straddle_train_and_val(edited_pairs: dict) -> None:
    """Every pair of Jaccard >= 0.5 lands whole on one side. Dedupe's bands alone (tuned to 0.5)
    would miss about 37 of these pairs, and a missed pair straddles half of the time here."""
    output, pairs = edited_pairs["output"], edited_pairs["pairs"]
    assert min(j for _, _, j in pairs) >= 0.5 and len(pairs) == PAIRS
    found = sides(output)
    whole = [(a, b) for a, b, _ in pairs if a in found and b in found]
    assert len(whole) >= 0.9 * PAIRS, "few copies estimated at the drop threshold are removed"
    assert all(len(found[a]) == len(found[b]) == 1 for a, b in whole)
    straddling = [(a, b) for a, b in whole if found[a] != found[b]]
    assert not straddling, f"{len(straddling)} of {len(whole)} pairs straddle train and val: {straddling[:5]}"
    by_id = sum(is_validation(a, 0.5) != is_validation(b, 0.5) for a, b in whole)
    assert by_id >= 0.3 * len(whole), "a split by id would have torn these pairs apart"
