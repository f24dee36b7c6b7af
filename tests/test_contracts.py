"""Artifacts that cross packages are read through their typed contracts, never by string key.

The shard manifest (`data_prep.shards.ShardManifest`) and a checkpoint's crucible.json
(`training.checkpoint_meta.CheckpointMeta`) are each spelled out once, in the module that owns them;
every other module reads their fields as attributes. The scan reads every product module with `ast`.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest
from pydantic import BaseModel

from data_prep.shards import (
    SCHEMA_VERSION,
    ShardEntry,
    ShardError,
    ShardManifest,
    SourceCounts,
    SplitIndex,
    TokenizerRecord,
    read_manifest,
)
from pipeline.ground.names import CHECKPOINT_META, MANIFEST, PREP_STATS
from pipeline.prep_stats import PrepStats, SourceRow, StageRow, StatsError, read_prep_stats
from tests.conftest import REPO
from training.checkpoint_meta import (
    META_DIGEST,
    CheckpointMeta,
    CorruptCheckpoint,
    SavedConfig,
    SavedLayout,
    meta_digest,
    read_meta,
)

PACKAGES = ("pipeline", "data_prep", "training", "launch")
OWNERS = {
    "data_prep/shards.py",
    "training/checkpoint_meta.py",
    "pipeline/ground/names.py",
    "pipeline/prep_stats.py",
    "pipeline/outputs.py",  # writes stats.json, from the step markers that share its counts' names
    "pipeline/ground/contract.py",  # the versioned reader the owners share
}
CONTRACTS: tuple[type[BaseModel], ...] = (
    ShardManifest,
    TokenizerRecord,
    SplitIndex,
    ShardEntry,
    SourceCounts,
    CheckpointMeta,
    SavedConfig,
    SavedLayout,
    PrepStats,
    StageRow,
    SourceRow,
)
# Field names that other records share (metrics, events, prep's stats, pack's markers): a key of theirs, not proof of
# a contract read by hand. Every other field name of the contracts is theirs alone.
SHARED_WORDS = {
    "step",
    "files",
    "file",
    "tokens",
    "sequences",
    "documents",
    "padding",
    "remainder",
    "shards",
    "splits",
    "tokenizer",
    "languages",
    "sources",
    "source",
    "language",
    "bytes",
    "sha256",
    "config",
    "model",
    "train",
    "parallel",
    "samples",
    "reason",
    "vocab_size",
    # a step's completion marker counts with the names of stats.json's rows; the prep config lists its stages
    "stages",
    "name",
    "docs_in",
    "docs_out",
    "dropped",
    "quarantined",
    "seconds",
    "tally",
}


def contract_keys() -> set[str]:
    return {name for model in CONTRACTS for name in model.model_fields} - SHARED_WORDS | {META_DIGEST}


def product_modules() -> list[Path]:
    return [p for package in PACKAGES for p in sorted((REPO / package).rglob("*.py"))]


def key_reads(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, key) of every `x["key"]` and `x.get("key")` with a literal string key."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant):
            key = node.slice.value
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "get"
            and node.args
            and isinstance(node.args[0], ast.Constant)
        ):
            key = node.args[0].value
        else:
            continue
        if isinstance(key, str):
            found.append((node.lineno, key))
    return found


def test_no_module_reads_the_manifest_or_checkpoint_metadata_by_string_key() -> None:
    keys, offences = contract_keys(), []
    assert {"seq_len", "row_width", "pad_id", "manifest_sha256", "layout", "loader", "skipped_inputs"} <= keys
    for path in product_modules():
        name = str(path.relative_to(REPO))
        if name in OWNERS:
            continue
        tree = ast.parse(path.read_text(), name)
        offences += [f"{name}:{line}: [{key!r}]" for line, key in key_reads(tree) if key in keys]
        offences += [
            f"{name}:{node.lineno}: {node.value!r}"
            for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and node.value in (MANIFEST, CHECKPOINT_META, PREP_STATS)
        ]
    assert not offences, "read these through ShardManifest / CheckpointMeta / PrepStats:\n" + "\n".join(offences)


def test_the_scan_finds_a_key_read_by_hand() -> None:
    tree = ast.parse('meta = json.loads(text)\nwidth = manifest["row_width"]\nsaved = meta.get("layout")\n')
    assert [key for _, key in key_reads(tree) if key in contract_keys()] == ["row_width", "layout"]


def manifest() -> ShardManifest:
    entry = ShardEntry(file="train-00000-000.arrow", sequences=4, tokens=260, bytes=1234, sha256="ab" * 32)
    return ShardManifest(
        seq_len=64,
        row_width=65,
        packing="concat",
        token_type="uint16",
        tokenizer=TokenizerRecord(file="tokenizer.json", sha256="cd" * 32, vocab_size=512, eod_id=0, pad_id=1),
        splits={"train": SplitIndex(documents=9, tokens=260, sequences=4, shards=[entry])},
    )


def test_a_manifest_reads_back_to_the_same_bytes(tmp_path: Path) -> None:
    text = manifest().to_json()
    (tmp_path / MANIFEST).write_text(text)
    read = read_manifest(tmp_path)
    assert read.to_json() == text
    assert json.loads(text)["schema_version"] == SCHEMA_VERSION
    assert "source" not in json.loads(text)["splits"]["train"]["shards"][0]  # untagged entries stay untagged
    assert read.split("val").sequences == 0  # a split the manifest does not have holds nothing


def test_a_manifest_keeps_fields_a_newer_writer_added(tmp_path: Path) -> None:
    fields = json.loads(manifest().to_json())
    fields["splits"]["train"]["learned_tokens"] = 17
    (tmp_path / MANIFEST).write_text(json.dumps(fields))
    assert json.loads(read_manifest(tmp_path).to_json())["splits"]["train"]["learned_tokens"] == 17


@pytest.mark.parametrize(
    "change, message",
    [
        ({"schema_version": 2}, "schema_version 2 is not 1"),
        ({"seq_len": "long"}, "seq_len: Input should be a valid integer"),
    ],
)
def test_a_damaged_manifest_is_refused_in_one_line(tmp_path: Path, change: dict, message: str) -> None:
    (tmp_path / MANIFEST).write_text(json.dumps(json.loads(manifest().to_json()) | change))
    with pytest.raises(ShardError, match=message):
        read_manifest(tmp_path)


def test_checkpoint_metadata_round_trips_with_its_digest(tmp_path: Path) -> None:
    meta = CheckpointMeta(
        step=7,
        healthy=True,
        files={"model.pt": "ef" * 32},
        tokens=896,
        seq_len=64,
        layout=SavedLayout(tp=1, pp=1, dp=2, zero_stage=1),
        loader={"epoch": 0, "position": 14},
        tokenizer=manifest().tokenizer,
        config=SavedConfig(model={"d_model": 64}, vocab_padded=512),
    )
    (tmp_path / CHECKPOINT_META).write_text(meta.to_json())
    fields = json.loads((tmp_path / CHECKPOINT_META).read_text())
    assert fields[META_DIGEST] == meta_digest(fields)
    read = read_meta(tmp_path)
    assert read.meta_sha256 == fields[META_DIGEST]
    assert read.model_copy(update={META_DIGEST: None}) == meta


def test_checkpoint_metadata_of_the_first_version_still_reads(tmp_path: Path) -> None:
    """The first checkpoints had only these four fields and no digest."""
    (tmp_path / CHECKPOINT_META).write_text(json.dumps({"step": 3, "healthy": True, "files": {}, "config": {}}))
    meta = read_meta(tmp_path)
    assert (meta.step, meta.layout, meta.tokenizer, meta.rollbacks) == (3, None, None, 0)


def test_edited_checkpoint_metadata_is_damaged(tmp_path: Path) -> None:
    meta = CheckpointMeta(step=7, healthy=True, config=SavedConfig())
    fields = json.loads(meta.to_json()) | {"step": 8}
    (tmp_path / CHECKPOINT_META).write_text(json.dumps(fields))
    with pytest.raises(CorruptCheckpoint, match="was edited after the save"):
        read_meta(tmp_path)


# -- metric names: built and parsed by training.metric_names alone ------------------------------------------

METRIC_PREFIXES = ("eval/", "mix/", "val_loss/")


def metric_name_literals(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, text) of every string constant, plain or the literal part of an f-string, that spells a metric
    name's prefix."""
    return [
        (node.lineno, node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.startswith(METRIC_PREFIXES)
    ]


def test_no_module_spells_a_metric_name_outside_its_owner() -> None:
    offences = []
    for path in product_modules():
        name = str(path.relative_to(REPO))
        if name != "training/metric_names.py":
            offences += [f"{name}:{line}: {text!r}" for line, text in metric_name_literals(ast.parse(path.read_text()))]
    assert not offences, "build and parse these through training.metric_names:\n" + "\n".join(offences)


def test_the_metric_scan_finds_an_f_string_and_a_slice() -> None:
    tree = ast.parse('key = f"mix/{name}/tokens"\ntask = key[len("eval/") :]\n')
    assert [text for _, text in metric_name_literals(tree)] == ["mix/", "eval/"]


def test_metric_names_parse_back_to_what_built_them() -> None:
    from training.metric_names import (
        mix_target,
        mix_tokens,
        mixture_sources,
        parse_task_score,
        source_val_loss,
        task_score,
        task_scores,
    )

    record = {task_score("arc/easy", "acc_norm"): 0.5, mix_tokens("web"): 10, mix_target("code/py"): 0.25}
    record[source_val_loss("web")] = 3.0
    assert parse_task_score(task_score("arc/easy", "acc_norm")) == ("arc/easy", "acc_norm")
    assert parse_task_score("val_loss") is None and parse_task_score("eval/") is None
    assert task_scores(record) == {("arc/easy", "acc_norm"): 0.5}
    assert mixture_sources([record]) == ["code/py", "web"]


# -- prep's stats.json ----------------------------------------------------------------------------------------


def prep_stats() -> PrepStats:
    read = StageRow(name="read", docs_in=5, docs_out=4, quarantined={"bad_json": 1}, seconds=0.5)
    quality = StageRow(
        name="quality",
        docs_in=4,
        docs_out=3,
        dropped={"too_short": 1},
        tally={"languages": {"en": 3}},
        sources={"web": SourceRow(docs_in=4, docs_out=3, dropped={"too_short": 1})},
    )
    return PrepStats(stages=[read, quality], shards=1, tokens={"train_tokens": 99})


def test_prep_stats_read_back_to_the_same_bytes(tmp_path: Path) -> None:
    text = prep_stats().to_json()
    (tmp_path / PREP_STATS).write_text(text)
    read = read_prep_stats(tmp_path)
    assert read.to_json() == text and json.loads(text)["schema_version"] == 1
    assert (read.read, read.kept, read.stage("quality").removed()) == (5, 3, 1)
    assert "sources" not in json.loads(text)["stages"][0], "a row without sources has none in the file"


def test_prep_stats_from_before_the_version_field_still_read(tmp_path: Path) -> None:
    fields = json.loads(prep_stats().to_json())
    del fields["schema_version"]
    fields["stages"][0]["learned"] = 7  # and a field a newer writer added is kept
    (tmp_path / PREP_STATS).write_text(json.dumps(fields))
    read = read_prep_stats(tmp_path)
    assert read.stage("read").docs_in == 5 and json.loads(read.to_json())["stages"][0]["learned"] == 7


@pytest.mark.parametrize(
    "change, message",
    [({"schema_version": 2}, "schema_version 2 is not 1"), ({"shards": "many"}, "shards: Input should be")],
)
def test_damaged_prep_stats_are_refused_in_one_line(tmp_path: Path, change: dict, message: str) -> None:
    (tmp_path / PREP_STATS).write_text(json.dumps(json.loads(prep_stats().to_json()) | change))
    with pytest.raises(StatsError, match=message):
        read_prep_stats(tmp_path)
