"""Tokenizer, packing, shards and the loader: the contract between data prep and training."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from data_prep.pack import pack_best_fit, pack_concat
from data_prep.shards import ShardError, SplitIndex, write_manifest, write_shard
from data_prep.tokenizer import load_tokenizer
from pipeline.ground.hashing import file_sha256
from tests.conftest import hand_made_manifest
from tests.test_prep_pipeline import prep, read_dir
from training.data import DistributedLoader, PackedDataset


@pytest.fixture(scope="module")
def prepared(mixed_corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    output = tmp_path_factory.mktemp("tokens")
    stats = prep(
        [mixed_corpus],
        output,
        "prep.shard_mb=0.5",
        "prep.tokenizer.vocab_size=2000",
        "prep.pack.seq_len=128",
        "prep.pack.val_fraction=0.1",
    )
    return output, stats


def test_byte_level_round_trip_on_clean_documents(prepared: tuple[Path, dict]) -> None:
    output, _ = prepared
    tokenizer = load_tokenizer(output / "tokenizer" / "tokenizer.json")
    tokenizer.encode_special_tokens = True
    texts = [r["text"] for r in read_dir(output / "clean")] + ["a literal <|endoftext|> and <|pad|> in text"]
    encodings = tokenizer.encode_batch(texts, add_special_tokens=False)
    mismatches = [
        i for i, (e, t) in enumerate(zip(encodings, texts)) if tokenizer.decode(e.ids, skip_special_tokens=False) != t
    ]
    assert not mismatches, f"{len(mismatches)} of {len(texts)} documents do not round-trip"


def test_every_token_lands_in_exactly_one_row(prepared: tuple[Path, dict]) -> None:
    output, stats = prepared
    tokens = stats.tokens
    manifest = json.loads((output / "shards" / "manifest.json").read_text())
    width = manifest["row_width"]
    assert tokens["train_documents"] + tokens["val_documents"] == stats.stages[-1].docs_out == tokens["documents"]
    assert tokens["train_tokens"] + tokens["val_tokens"] == tokens["tokens"]
    for split in ("train", "val"):
        entry = manifest["splits"][split]
        assert entry["sequences"] * width + entry["remainder"] == entry["tokens"]
        assert sum(s["sequences"] for s in entry["shards"]) == entry["sequences"]
    assert manifest["splits"]["val"]["documents"] > 0


def test_row_boundaries_match_documents(prepared: tuple[Path, dict]) -> None:
    output, _ = prepared
    manifest = json.loads((output / "shards" / "manifest.json").read_text())
    eod = manifest["tokenizer"]["eod_id"]
    dataset = PackedDataset(output / "shards", "train")
    rows, starts = dataset.rows(np.arange(len(dataset)))
    for row, offsets in zip(rows, starts):
        eods = set(np.flatnonzero(row[:-1] == eod) + 1)
        assert set(offsets[offsets > 0]) == eods, "a segment starts right after every end of document"


def test_pack_concat_keeps_every_token_in_order() -> None:
    rng = np.random.default_rng(0)
    docs = [rng.integers(2, 100, rng.integers(1, 40)).astype(np.uint32) for _ in range(200)]
    packed = pack_concat(docs, 17)
    stream = np.concatenate(docs)
    assert packed.remainder == len(stream) % 17
    assert np.array_equal(packed.tokens.reshape(-1), stream[: packed.tokens.size])
    doc_starts = set(np.concatenate([[0], np.cumsum([len(d) for d in docs])[:-1]]))
    for row, offsets in enumerate(packed.segment_starts):
        assert {row * 17 + o for o in offsets if o} == {s for s in doc_starts if row * 17 < s < (row + 1) * 17}


def test_best_fit_never_splits_short_documents_and_loses_nothing() -> None:
    rng = np.random.default_rng(1)
    width, pad = 32, 0
    docs = [rng.integers(1, 100, rng.integers(1, 80)).astype(np.uint32) for _ in range(300)]
    packed = pack_best_fit(docs, width, pad)
    assert packed.padding == packed.tokens.size - sum(len(d) for d in docs)
    pieces = Counter()
    for row, offsets in zip(packed.tokens, packed.segment_starts):
        ends = list(offsets[1:]) + [width]
        for start, end in zip(offsets, ends):
            piece = row[start:end]
            pieces[tuple(piece[piece != pad])] += 1
    for doc in docs:
        if len(doc) <= width:
            assert pieces[tuple(doc)] >= 1, "a short document sits whole in one row"
    assert sum(len(p) * n for p, n in pieces.items()) == sum(len(d) for d in docs)


def test_loader_ranks_cover_the_epoch_exactly_once(prepared: tuple[Path, dict]) -> None:
    output, _ = prepared
    dataset = PackedDataset(output / "shards", "train")
    micro, steps = 2, len(dataset) // 8
    single = DistributedLoader(dataset, micro, seed=3, rows_per_step=8)
    reference = np.concatenate([single.next_batch().rows for _ in range(steps * 4)])
    assert len(set(reference)) == len(reference) == steps * 8
    for world in (2, 4):
        loaders = [DistributedLoader(dataset, micro, r, world, seed=3, rows_per_step=8) for r in range(world)]
        seen = np.concatenate([loader.next_batch().rows for _ in range(steps * 4 // world) for loader in loaders])
        assert len(set(seen)) == len(seen), f"DP={world}: a row was given twice"
        assert sorted(seen) == sorted(reference), f"DP={world}: another set of rows than DP=1"
        assert np.array_equal(seen, reference), f"DP={world}: the global order differs"


def test_loader_resumes_with_the_same_next_batch_also_under_another_dp_size(prepared: tuple[Path, dict]) -> None:
    output, _ = prepared
    dataset = PackedDataset(output / "shards", "train")
    uninterrupted = DistributedLoader(dataset, 2, 0, 1, seed=5, rows_per_step=4)
    for _ in range(6):
        uninterrupted.next_batch()
    state = uninterrupted.state_dict()
    expected = [uninterrupted.next_batch() for _ in range(4)]

    same = DistributedLoader(dataset, 2, 0, 1, seed=5, rows_per_step=4)
    same.load_state_dict(json.loads(json.dumps(state)))
    for batch in expected:
        got = same.next_batch()
        assert np.array_equal(got.rows, batch.rows) and bool((got.inputs == batch.inputs).all())

    resized = [DistributedLoader(dataset, 2, r, 2, seed=5, rows_per_step=4) for r in range(2)]
    for loader in resized:
        loader.load_state_dict(state)
    got = np.concatenate([loader.next_batch().rows for _ in range(2) for loader in resized])
    assert np.array_equal(got, np.concatenate([b.rows for b in expected]))


def test_positions_and_segments_restart_at_documents(prepared: tuple[Path, dict]) -> None:
    output, _ = prepared
    dataset = PackedDataset(output / "shards", "train")
    batch = DistributedLoader(dataset, 4, seed=0).next_batch()
    _, starts = dataset.rows(batch.rows)
    for row, offsets in enumerate(starts):
        offsets = [o for o in offsets if o < batch.inputs.shape[1]]
        positions, segments = batch.positions[row].tolist(), batch.segments[row].tolist()
        assert all(positions[o] == 0 for o in offsets)
        assert sum(1 for p in positions if p == 0) == len(set(offsets) | {0})
        assert segments[-1] == len(set(offsets) | {0})
    assert bool((batch.targets[:, :-1] == batch.inputs[:, 1:]).all())


def test_shards_open_with_plain_pyarrow(prepared: tuple[Path, dict]) -> None:
    output, _ = prepared
    manifest = json.loads((output / "shards" / "manifest.json").read_text())
    entry = manifest["splits"]["train"]["shards"][0]
    with pa.memory_map(str(output / "shards" / "train" / entry["file"])) as source:
        table = pa.ipc.open_file(source).read_all()
    assert table.num_rows == entry["sequences"]
    assert table.schema.field("tokens").type.list_size == manifest["row_width"]
    polars = pytest.importorskip("polars", reason="polars is optional")
    assert polars.read_ipc(output / "shards" / "train" / entry["file"]).height == entry["sequences"]


def copy_shards(prepared: tuple[Path, dict], tmp_path: Path) -> Path:
    import shutil

    output, _ = prepared
    return Path(shutil.copytree(output / "shards", tmp_path / "shards"))


def test_truncated_or_corrupt_shard_is_named(prepared: tuple[Path, dict], tmp_path: Path) -> None:
    shards = copy_shards(prepared, tmp_path)
    victim = sorted((shards / "train").glob("*.arrow"))[0]
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    with pytest.raises(ShardError, match=victim.name):
        PackedDataset(shards, "train")
    with pytest.raises(ShardError, match=victim.name):
        PackedDataset(shards, "train", verify=False)


def test_manifest_and_tokenizer_mismatches_are_refused(prepared: tuple[Path, dict], tmp_path: Path) -> None:
    shards = copy_shards(prepared, tmp_path)
    with pytest.raises(ShardError, match="seq_len"):
        PackedDataset(shards, "train", seq_len=256)
    with pytest.raises(ShardError, match="another tokenizer"):
        PackedDataset(shards, "train", tokenizer_sha256="0" * 64)
    assert len(PackedDataset(shards, "train", tokenizer_sha256=file_sha256(shards / "tokenizer.json"))) > 0
    victim = sorted((shards / "train").glob("*.arrow"))[0]
    data = bytearray(victim.read_bytes())
    data[-100] ^= 0xFF
    victim.write_bytes(bytes(data))
    dataset = PackedDataset(shards, "train")  # opening reads no shard: the first read of the victim checks it
    with pytest.raises(ShardError, match=f"{victim.name}.*hash"):
        dataset.rows(np.arange(len(dataset)))


def test_a_dataset_of_many_shards_reads_only_the_shards_it_touches(tmp_path: Path) -> None:
    rows, width, count = 3, 9, 200
    entries = [
        write_shard(
            tmp_path / "train" / f"train-{i:05d}.arrow",
            np.full((rows, width), i + 2),
            [np.array([0], np.int32)] * rows,
            4096,
        )
        for i in range(count)
    ]
    write_manifest(tmp_path, hand_made_manifest(width - 1, {"train": SplitIndex(shards=entries)}))
    kept = 7
    for entry in entries:  # every shard but one becomes garbage of the same size
        if entry is not entries[kept]:
            path = tmp_path / "train" / entry.file
            path.write_bytes(bytes(path.stat().st_size))
    dataset = PackedDataset(tmp_path, "train")
    assert len(dataset) == rows * count
    tokens, _ = dataset.rows(np.arange(kept * rows, (kept + 1) * rows))
    assert (tokens == kept + 2).all()
    with pytest.raises(ShardError, match=f"{entries[kept + 1].file}.*hash"):
        dataset.rows(np.array([(kept + 1) * rows]))
    with pytest.raises(ShardError, match=f"{entries[0].file}.*corrupt"):
        PackedDataset(tmp_path, "train", verify=False).rows(np.array([0]))
    (tmp_path / "train" / entries[-1].file).unlink()
    with pytest.raises(ShardError, match=f"{entries[-1].file}.*missing"):
        PackedDataset(tmp_path, "train")  # a missing or resized file is refused at once, by a stat


def test_rows_of_a_shard_of_several_record_batches_come_back_as_written(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    tokens = rng.integers(0, 4096, size=(2500, 5))  # three record batches of ROWS_PER_BATCH rows at most
    starts = [np.arange(i % 3 + 1, dtype=np.int32) for i in range(len(tokens))]
    entry = write_shard(tmp_path / "train" / "train-00000.arrow", tokens, starts, 4096)
    write_manifest(tmp_path, hand_made_manifest(4, {"train": SplitIndex(shards=[entry])}))
    order = rng.permutation(len(tokens))
    rows, row_starts = PackedDataset(tmp_path, "train").rows(order)
    assert np.array_equal(rows, tokens[order])
    assert all(np.array_equal(got, starts[i]) for got, i in zip(row_starts, order))
