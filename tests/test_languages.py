"""Shards split by language and mixtures per language within a source: the manifest counts per
source and language, target fractions per language, DP-independent batches, resume across a phase
change, temperature over languages, and one-line errors naming the keys that exist."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pipeline.config import ConfigError, load_config
from pipeline.ground.errors import UserError
from pipeline.prep import run_prep
from tests.conftest import read_set, write_jsonl
from data_prep.shards import read_manifest
from training.data import PackedDataset, build_loader, shard_units, source_sizes
from training.mixture import caps

LANGUAGES = ("de", "es", "fr")
UNITS = ["code/und", "web/de", "web/es", "web/fr"]  # sorted, as the schedule orders them


def prep_languages(folder: Path, output: Path, per_language: int, code_docs: int, *extra: str) -> Path:
    """Two sources: web (German, Spanish and French text, labelled by langid) and code (English,
    skipping langid, so undetermined), packed by language; returns the shards folder."""
    multi = [d for d in read_set("multilingual") if d["lang"] in LANGUAGES]
    web = [d for lang in LANGUAGES for d in [m for m in multi if m["lang"] == lang][:per_language]]
    write_jsonl(folder / "web" / "web.jsonl", [{"id": d["id"], "text": d["text"]} for d in web])
    write_jsonl(
        folder / "code" / "code.jsonl", [{"id": r["id"], "text": r["text"]} for r in read_set("english", code_docs)]
    )
    sources = [
        {"name": "web", "inputs": [str(folder / "web")]},
        {"name": "code", "inputs": [str(folder / "code")], "skip": ["langid"]},
    ]
    config = load_config(
        None,
        [
            "prep.stages=[normalize, langid, tokenize, pack]",
            f"prep.sources={json.dumps(sources)}",
            "prep.tokenizer.vocab_size=600",
            "prep.pack.seq_len=32",
            "prep.pack.val_fraction=0.2",
            "prep.workers=1",
            "prep.pack.split_by_language=true",
            *extra,
        ],
    )
    run_prep(config.prep, output, show_progress=False)
    return output / "shards"


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return prep_languages(tmp_path_factory.mktemp("lang_in"), tmp_path_factory.mktemp("lang_out"), 40, 30)


def mix(*overrides: str, steps: int = 400, batch: int = 16, micro: int = 4):
    return load_config(
        None,
        [f"train.max_steps={steps}", f"train.global_batch_size={batch}", f"train.micro_batch_size={micro}", *overrides],
    )


BY_LANGUAGE = "train.mixture.weights={web/de: 0.4, web/fr: 0.1, web/es: 0.1, code: 0.4}"
LATE = "train.mixture.phases=[{start_step: 31, weights: {web: 0.7, code: 0.3}}]"


def unit_rows(shards: Path, config, dp: int, steps: int, state: dict | None = None):
    """Per step, the global batch's row indices at DP `dp` (each round's micro-batches in rank order)."""
    dataset = PackedDataset(shards, "train")
    loaders = [build_loader(dataset, config, rank, dp) for rank in range(dp)]
    for loader in loaders if state is not None else []:
        loader.load_state_dict(json.loads(json.dumps(state)))
    rounds = config.train.global_batch_size // (config.train.micro_batch_size * dp)
    steps_rows = [
        np.concatenate([loader.next_batch().rows for _ in range(rounds) for loader in loaders]) for _ in range(steps)
    ]
    return steps_rows, loaders[0], dataset


def units_of(dataset: PackedDataset, rows: np.ndarray) -> list[str]:
    units = shard_units(dataset)
    return [units[int(np.searchsorted(dataset.offsets, r, side="right")) - 1] for r in rows.tolist()]


def test_shards_are_split_by_language_and_the_manifest_counts_per_source_and_language(shards: Path) -> None:
    manifest = json.loads((shards / "manifest.json").read_text())
    for split in ("train", "val"):
        entry = manifest["splits"][split]
        assert {(s["source"], s["language"]) for s in entry["shards"]} <= {("web", lang) for lang in LANGUAGES} | {
            ("code", "und")
        }
        assert all(f"-{s['language']}-" in s["file"] for s in entry["shards"])
        for key in ("documents", "tokens", "sequences"):
            assert sum(c[key] for c in entry["languages"].values()) == entry[key], (split, key)
            for name, counts in entry["sources"].items():
                assert sum(c[key] for c in counts["languages"].values()) == counts[key], (split, name, key)
        for name, counts in entry["sources"].items():
            for lang, by in counts["languages"].items():
                assert by["sequences"] == sum(
                    s["sequences"] for s in entry["shards"] if (s["source"], s["language"]) == (name, lang)
                )
    assert set(manifest["splits"]["train"]["sources"]["web"]["languages"]) == set(LANGUAGES)
    rows, tokens = source_sizes(read_manifest(shards))
    assert (
        sorted(rows) == UNITS
        and tokens["web/de"] == manifest["splits"]["train"]["sources"]["web"]["languages"]["de"]["tokens"]
    )


def test_realized_fractions_per_language_are_within_a_point_of_the_targets(shards: Path) -> None:
    config = mix(BY_LANGUAGE, "train.mixture.max_epochs={'*': 100}")
    steps, loader, dataset = unit_rows(shards, config, 1, 400)
    drawn = units_of(dataset, np.concatenate(steps))
    realized = {unit: drawn.count(unit) / len(drawn) for unit in UNITS}
    targets = {"code/und": 0.4, "web/de": 0.4, "web/es": 0.1, "web/fr": 0.1}
    assert all(abs(realized[u] - targets[u]) < 0.01 for u in UNITS), realized
    assert loader.metrics()["mix/web/fr/target"] == 0.1  # (its real tokens are counted by the trainer: test_mixture)


def test_a_whole_source_shares_its_weight_among_its_languages_by_their_tokens(shards: Path) -> None:
    _, tokens = source_sizes(PackedDataset(shards, "train").manifest)
    loader = build_loader(PackedDataset(shards, "train"), mix("train.mixture.weights={web: 0.6, code: 0.4}"), 0, 1)
    web = sum(tokens[f"web/{lang}"] for lang in LANGUAGES)
    expected = [0.4] + [0.6 * tokens[f"web/{lang}"] / web for lang in LANGUAGES]
    assert list(loader.schedule.sources) == UNITS
    assert loader.schedule.weights[0] == pytest.approx(expected)


@pytest.mark.parametrize("over", ["language", "source"])
def test_temperature_over_languages_or_sources(shards: Path, over: str) -> None:
    _, tokens = source_sizes(PackedDataset(shards, "train").manifest)
    alpha = 0.3
    loader = build_loader(
        PackedDataset(shards, "train"),
        mix(f"train.mixture.temperature={alpha}", f"train.mixture.temperature_over={over}"),
        0,
        1,
    )
    if over == "language":
        raw = np.array([tokens[u] ** alpha for u in UNITS])
    else:
        web = sum(tokens[f"web/{lang}"] for lang in LANGUAGES)
        raw = np.array([tokens["code/und"] ** alpha] + [web**alpha * tokens[f"web/{lang}"] / web for lang in LANGUAGES])
    assert loader.schedule.weights[0] == pytest.approx(raw / raw.sum())


@pytest.mark.parametrize("dp", [2, 4])
def test_global_batches_by_language_do_not_depend_on_the_dp_size(shards: Path, dp: int) -> None:
    config = mix(BY_LANGUAGE, LATE, steps=60)
    one, _, _ = unit_rows(shards, config, 1, 60)
    many, _, _ = unit_rows(shards, config, dp, 60)
    assert all(np.array_equal(a, b) for a, b in zip(one, many))


@pytest.mark.parametrize("stop", [17, 30, 44])  # before the phase change, at it, after it
def test_resume_by_language_gives_the_next_batches_of_an_uninterrupted_run(shards: Path, stop: int) -> None:
    config = mix(BY_LANGUAGE, LATE, steps=60)
    straight, _, _ = unit_rows(shards, config, 1, 60)
    _, first, _ = unit_rows(shards, config, 2, stop)
    assert set(first.state_dict()["drawn"]) == set(UNITS)
    resumed, _, _ = unit_rows(shards, config, 4, 60 - stop, state=first.state_dict())
    assert all(np.array_equal(a, b) for a, b in zip(straight[stop:], resumed))


def test_repetition_caps_per_language_then_source_then_every(shards: Path) -> None:
    config = mix(BY_LANGUAGE, "train.mixture.max_epochs={web/de: 2, web: 3, '*': 5}")
    assert caps(config.train.mixture, tuple(UNITS)).tolist() == [5, 2, 3, 3]
    with pytest.raises(UserError, match=r"source 'web/de' \(\d+ rows\) runs out of its 1 epoch"):
        build_loader(PackedDataset(shards, "train"), mix(BY_LANGUAGE, "train.mixture.max_epochs={web/de: 1}"), 0, 1)


def test_mixture_key_mistakes_are_one_line_errors_naming_the_keys(shards: Path) -> None:
    dataset = PackedDataset(shards, "train")
    keys = "code, code/und, web, web/de, web/es, web/fr"
    with pytest.raises(UserError, match=f"no source web/it in the shards \\(sources: {keys}\\)"):
        build_loader(dataset, mix("train.mixture.weights={web/it: 1}"), 0, 1)
    with pytest.raises(UserError, match="web is given both whole and by language"):
        build_loader(dataset, mix("train.mixture.weights={web: 1, web/de: 1}"), 0, 1)
    with pytest.raises(UserError, match=f"max_epochs: no source wiki in the shards \\(sources: {keys}\\)"):
        build_loader(dataset, mix(BY_LANGUAGE, "train.mixture.max_epochs={wiki: 1}"), 0, 1)
    with pytest.raises(ConfigError, match="split_by_language needs the langid stage"):
        load_config(None, ["prep.stages=[normalize, tokenize, pack]", "prep.pack.split_by_language=true"])
