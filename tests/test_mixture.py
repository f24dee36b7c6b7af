"""The mixing loader: token fractions per source, DP-independent global batches, exact resume
across phases, and the repetition cap refused before training."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from data_prep.shards import SplitIndex, write_manifest, write_shard
from pipeline.config import load_config
from pipeline.ground.errors import UserError
from tests.conftest import hand_made_manifest
from training.data import DistributedLoader, MixingLoader, PackedDataset, build_loader
from training.mixture import plan_epochs

SEQ_LEN = 16
SOURCES = {"web": (3, 170), "code": (2, 130), "books": (1, 60)}  # name -> (shards, rows per shard)
BASE = {"web": 1000, "code": 2000, "books": 3000}  # token ids of a source start here, so a row tells its source
PAD = 1


def write_sources(folder: Path, real: dict[str, int]) -> Path:
    """Train shards of three sources (rows of distinct token ranges), as prep writes them; the rows of a
    source named in `real` hold that many tokens, then padding."""
    rng = np.random.default_rng(7)
    entries, counts = [], {}
    for name, (n_shards, rows) in SOURCES.items():
        for shard in range(n_shards):
            tokens = BASE[name] + rng.integers(0, 900, size=(rows, SEQ_LEN + 1))
            tokens[:, real.get(name, SEQ_LEN + 1) :] = PAD
            starts = [np.array([0], np.int32)] * rows
            entry = write_shard(folder / "train" / f"train-{name}-{shard}.arrow", tokens, starts, 4096)
            entries.append(entry.model_copy(update={"source": name}))
        counts[name] = {
            "documents": n_shards * rows,
            "tokens": n_shards * rows * (SEQ_LEN + 1),
            "sequences": n_shards * rows,
        }
    entries.sort(key=lambda e: e.file)
    (folder / "val").mkdir()
    write_manifest(
        folder,
        hand_made_manifest(
            SEQ_LEN, {"train": SplitIndex(shards=entries, sources=counts), "val": SplitIndex(sources={})}, pad_id=PAD
        ),
    )
    return folder


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_sources(tmp_path_factory.mktemp("mixed_shards"), {})


def mixture_config(*overrides: str, steps: int = 1000, batch: int = 16, micro: int = 4):
    return load_config(
        None,
        [f"train.max_steps={steps}", f"train.global_batch_size={batch}", f"train.micro_batch_size={micro}", *overrides],
    )


WEIGHTS = "train.mixture.weights={web: 0.5, code: 0.3, books: 0.2}"
LATE_PHASE = "train.mixture.phases=[{start_step: 41, weights: {web: 0.1, code: 0.1, books: 0.8}}]"


def source_of(tokens: np.ndarray) -> np.ndarray:
    return np.select([tokens < 2000, tokens < 3000], [0, 1], 2)


def global_batches(shards: Path, config, dp: int, steps: int, state: dict | None = None):
    """The global batches of `steps` steps at DP `dp`: each round's micro-batches in rank order. After
    each step every rank's loader gets the real tokens per source of all ranks, as the trainer sums them."""
    dataset = PackedDataset(shards, "train")
    loaders = [build_loader(dataset, config, rank, dp) for rank in range(dp)]
    if state is not None:
        for loader in loaders:
            loader.load_state_dict(json.loads(json.dumps(state)))
    rounds = config.train.global_batch_size // (config.train.micro_batch_size * dp)
    batches = []
    for _ in range(steps):
        step = [loader.next_batch() for _ in range(rounds) for loader in loaders]
        counts = sum(loader.source_tokens(step[rank::dp], PAD) for rank, loader in enumerate(loaders))
        for loader in loaders:
            loader.add_tokens(counts)
        batches.append(np.concatenate([batch.inputs.numpy() for batch in step]))
    return batches, loaders[0]


def test_realized_token_fractions_are_within_a_point_of_the_targets_over_1000_batches(shards: Path) -> None:
    config = mixture_config(WEIGHTS, "train.mixture.max_epochs={'*': 100}")
    batches, loader = global_batches(shards, config, 1, 1000)
    tokens = np.bincount(source_of(np.concatenate(batches)[:, 0]), minlength=3) * SEQ_LEN
    realized = tokens / tokens.sum()
    assert np.abs(realized - [0.5, 0.3, 0.2]).max() < 0.01, realized
    metrics = loader.metrics()  # what metrics.jsonl logs: the same counts, per source name
    assert [metrics[f"mix/{name}/tokens"] for name in ("web", "code", "books")] == tokens.tolist()
    assert metrics["mix/books/target"] == pytest.approx(0.2)
    per_step = np.array([np.bincount(source_of(b[:, 0]), minlength=3) for b in batches])
    assert np.abs(per_step.cumsum(0)[-1] - 16_000 * np.array([0.5, 0.3, 0.2])).max() <= 16  # a row per source


def test_tokens_per_source_count_real_tokens_not_padding(tmp_path: Path) -> None:
    """Web rows hold 11 tokens then padding (10 real targets), books rows 5 (4), code rows are full (16):
    the tokens logged per source after one global batch over two ranks are those counts times the rows
    drawn, and a resume carries them on."""
    shards = write_sources(tmp_path, {"web": 11, "books": 5})
    config = mixture_config(WEIGHTS, steps=10)
    batches, loader = global_batches(shards, config, 2, 1)
    rows = np.bincount(source_of(batches[0][:, 0]), minlength=3)
    assert rows.sum() == 16 and (rows > 0).all()
    expected = (rows * [10, 16, 4]).tolist()
    names = ("web", "code", "books")
    assert [loader.metrics()[f"mix/{name}/tokens"] for name in names] == expected
    _, resumed = global_batches(shards, config, 1, 0, state=loader.state_dict())
    assert [resumed.metrics()[f"mix/{name}/tokens"] for name in names] == expected


@pytest.mark.parametrize("dp", [2, 4])
def test_global_batches_do_not_depend_on_the_data_parallel_size(shards: Path, dp: int) -> None:
    config = mixture_config(WEIGHTS, LATE_PHASE, steps=80)
    one, _ = global_batches(shards, config, 1, 80)
    many, _ = global_batches(shards, config, dp, 80)
    assert all(np.array_equal(a, b) for a, b in zip(one, many))


@pytest.mark.parametrize("stop", [25, 40, 57])  # mid-epoch of every source; at the phase change; after it
def test_resume_gives_the_next_batches_of_an_uninterrupted_run(shards: Path, stop: int) -> None:
    config = mixture_config(WEIGHTS, LATE_PHASE, steps=80)
    straight, _ = global_batches(shards, config, 1, 80)
    _, first = global_batches(shards, config, 2, stop)
    resumed, _ = global_batches(shards, config, 4, 80 - stop, state=first.state_dict())  # under another DP too
    assert all(np.array_equal(a, b) for a, b in zip(straight[stop:], resumed))


def test_a_phase_changes_the_mix_from_its_step_without_a_restart(shards: Path) -> None:
    config = mixture_config(WEIGHTS, LATE_PHASE, steps=80)
    batches, loader = global_batches(shards, config, 1, 80)
    late = np.bincount(source_of(np.concatenate(batches[40:])[:, 0]), minlength=3) / (40 * 16)
    early = np.bincount(source_of(np.concatenate(batches[:40])[:, 0]), minlength=3) / (40 * 16)
    assert np.abs(late - [0.1, 0.1, 0.8]).max() < 0.02 and np.abs(early - [0.5, 0.3, 0.2]).max() < 0.02
    assert loader.metrics()["mix/books/target"] == pytest.approx(0.8)
    _, at_40 = global_batches(shards, config, 1, 40)  # step 40 is the old mix's last; 41, as logged, the new one's
    assert at_40.metrics()["mix/books/target"] == pytest.approx(0.2)


def test_every_row_of_a_source_comes_once_per_epoch(shards: Path) -> None:
    config = mixture_config(WEIGHTS, steps=100)
    dataset = PackedDataset(shards, "train")
    loader = build_loader(dataset, config, 0, 1)
    rows = np.concatenate([loader.next_batch().rows for _ in range(100 * 4)])
    books = [
        r
        for r in rows.tolist()
        if dataset.shard_sources[int(np.searchsorted(dataset.offsets, r, "right")) - 1] == "books"
    ]
    assert len(set(books[:60])) == 60 and len(set(books[60:120])) == 60


def test_a_source_past_its_repetition_cap_is_refused_before_training_with_the_numbers(shards: Path) -> None:
    config = mixture_config(WEIGHTS, "train.mixture.max_epochs={books: 2, '*': 50}", steps=100)
    with pytest.raises(UserError) as error:
        build_loader(PackedDataset(shards, "train"), config, 0, 1)
    message = str(error.value)
    # Where it runs out, counted by drawing the rows: the first step that takes its 121st row (2 x 60 + 1).
    uncapped = mixture_config(WEIGHTS, steps=100)
    batches, _ = global_batches(shards, uncapped, 1, 100)
    books = np.cumsum([np.sum(source_of(b[:, 0]) == 2) for b in batches])
    step = int(np.argmax(books > 120)) + 1
    assert f"source 'books' (60 rows) runs out of its 2 epoch(s) at step {step} of 100" in message
    assert "'web'" not in message and "'code'" not in message
    assert "max_epochs" in message


def test_temperature_weighs_sources_by_size(shards: Path) -> None:
    dataset = PackedDataset(shards, "train")
    sizes = {name: n * rows for name, (n, rows) in SOURCES.items()}
    for alpha in (0.0, 0.5, 1.0):
        loader = build_loader(dataset, mixture_config(f"train.mixture.temperature={alpha}", steps=10), 0, 1)
        expected = np.array([sizes[s] ** alpha for s in loader.schedule.sources])
        assert loader.schedule.weights[0] == pytest.approx(expected / expected.sum())


def test_mixture_mistakes_are_one_line_errors(shards: Path) -> None:
    dataset = PackedDataset(shards, "train")
    with pytest.raises(UserError, match="no source wiki in the shards"):
        build_loader(dataset, mixture_config("train.mixture.weights={wiki: 1}"), 0, 1)
    with pytest.raises(Exception, match="either weights .* or a temperature"):
        mixture_config("train.mixture.weights={web: 1}", "train.mixture.temperature=1")
    with pytest.raises(Exception, match="start_step or start_fraction"):
        mixture_config(WEIGHTS, "train.mixture.phases=[{weights: {web: 1}}]")


def test_without_a_mixture_the_plain_loader_is_used(shards: Path) -> None:
    dataset = PackedDataset(shards, "train")
    assert type(build_loader(dataset, mixture_config(), 0, 1)) is DistributedLoader
    assert isinstance(build_loader(dataset, mixture_config(WEIGHTS), 0, 1), MixingLoader)


def test_plan_epochs_per_source_for_a_budget() -> None:
    config = mixture_config(WEIGHTS, "train.mixture.phases=[{start_fraction: 0.5, weights: {books: 1}}]")
    rows = {"web": 1000, "code": 1000, "books": 500}
    table = {r["source"]: r for r in plan_epochs(config.train.mixture, rows, rows, steps=100, rows_per_step=10)}
    # 1000 rows drawn: 500 at 0.5/0.3/0.2, then 500 of books alone.
    assert table["books"]["epochs"] == pytest.approx((100 + 500) / 500)
    assert table["web"]["epochs"] == pytest.approx(250 / 1000)
    assert table["books"]["share"] == pytest.approx(0.6)
