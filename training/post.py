"""Post-training on the pretraining trainer: a base checkpoint and a chat file become shards and a start.

`sft` (and `dpo`) build their training data once, into RUN/data: the base tokenizer grown by the chat
markers, the conversations encoded and packed several to a row with a per-token loss mask (a shard
column, `training.data.LOSS_MASK`), the records refused with their reasons, and the base weights. The
Trainer then runs as in pretraining (layouts, checkpoints, resume, rollback, metrics), starting from
those weights instead of a seeded init. The model is the base's: its config is taken from the checkpoint
and any other one given is refused; vocabulary rows of new tokens start as the mean of the base's rows.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from data_prep.shards import (
    ShardManifest,
    SplitIndex,
    TokenizerRecord,
    read_manifest,
    token_type,
    write_manifest,
    write_shard,
)
from pipeline.ground import storage
from pipeline.ground.atomic import write_json
from pipeline.ground.errors import UserError
from pipeline.ground.hashing import file_sha256, uniform
from pipeline.ground.markers import read_marker
from pipeline.ground.names import CHECKPOINT_META, POST_DATA_STATS, TOKENIZER_FILE
from pipeline.ground.schema import Section
from training.post_config import PostConfig, SFTConfig
from training.chat import ChatCodec, Ledger, Rejection, check_messages, grow_tokenizer, json_records
from training.config import ModelConfig, TrainConfig
from training.data import LOSS_MASK
from training.preflight import model_changes
from training.checkpoint_meta import read_meta
from pipeline.ground.console import say

DATA = "data"  # RUN/data: what a post-training run reads
SOURCE = "source"  # RUN/source: the --data file, when it was given as an object-storage URL
SHARDS, BASE_WEIGHTS, STATS, REJECTED = "shards", "base.safetensors", POST_DATA_STATS, "rejected.jsonl"


class PostTrainingConfig(Protocol):
    """What `prepare` reads of the root config (`pipeline.config.CrucibleConfig`, which training does not import):
    the training sections and `post`."""

    train: TrainConfig
    post: PostConfig


# -- the base model ------------------------------------------------------------------------------


def base_config(config: Any, base: Path, vocab_size: int) -> Any:
    """`config` with the base checkpoint's model (its vocabulary at least `vocab_size`); a model section that
    was changed from the defaults and differs from the base is refused."""
    meta = read_meta(base)
    saved = meta.config.model
    given = config.model.model_dump(mode="json")
    changed = model_changes(meta, given)
    if changed and given != ModelConfig().model_dump(mode="json"):
        raise UserError(
            f"the model settings differ from the base checkpoint {base}'s ({changed}): post-training "
            f"continues that model; drop the model.* settings"
        )
    vocab = None if saved.get("vocab_size") is None else max(saved["vocab_size"], vocab_size)
    return config.model_copy(update={"model": ModelConfig.model_validate(saved | {"vocab_size": vocab})})


def base_weights(folder: Path, known_rows: int | None) -> Callable[[torch.nn.Module], None]:
    """The Trainer's `initial_weights`: the base's weights from RUN/data, each rank's slices."""
    from safetensors.torch import load_file

    from training.init import load_full_weights

    def load(model: torch.nn.Module) -> None:
        load_full_weights(model, load_file(str(folder / BASE_WEIGHTS)), known_rows)

    return load


# -- building RUN/data once --------------------------------------------------------------------------


def build_once(folder: Path, fingerprint: dict[str, Any], build: Callable[[Path], None]) -> None:
    """Make `folder` with `build` on rank 0 (into a temporary folder renamed into place when whole; the other
    ranks wait for it), or check that the one there was built from the same inputs."""
    if not folder.exists() and int(os.environ.get("RANK", 0)) == 0:
        staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
        try:
            build(staging)
            write_json(staging / "inputs.json", fingerprint)
            staging.rename(folder)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    while not (folder / "inputs.json").exists():  # rank 0 is building it; a failure there ends this job too
        time.sleep(0.5)
    built = read_marker(folder / "inputs.json") or {}  # unreadable: built from nothing known
    if built != fingerprint:
        changed = ", ".join(key for key in fingerprint if built.get(key) != fingerprint[key])
        raise UserError(f"{folder} was built from other inputs ({changed} differ): write the run to a new --output")


def fingerprint(kind: str, data: Path, base: Path, settings: Section, seq_len: int) -> dict[str, Any]:
    return {
        "kind": kind,
        "data_sha256": file_sha256(data),
        "base": str(base.resolve()),
        "seq_len": seq_len,
        "base_meta_sha256": file_sha256(base / CHECKPOINT_META),
        "settings": settings.model_dump(mode="json"),
    }


def pack(
    sequences: list[tuple[list[int], list[bool]]], width: int, pad_id: int, seed: int
) -> tuple[np.ndarray, list[np.ndarray], np.ndarray]:
    """(tokens, segment starts, loss mask) of rows of `width`, sequences put in a seeded order one after the
    other into the current row while they fit (none is split), the rest of a row padding."""
    rows: list[tuple[list[int], list[bool], list[int]]] = []
    for index in np.random.default_rng(seed).permutation(len(sequences)).tolist():
        ids, learn = sequences[index]
        if not rows or len(rows[-1][0]) + len(ids) > width:
            rows.append(([], [], []))
        row = rows[-1]
        row[2].append(len(row[0]))
        row[0].extend(ids)
        row[1].extend(learn)
    tokens = np.full((len(rows), width), pad_id, dtype=np.uint32)
    mask = np.zeros((len(rows), width), dtype=np.uint8)
    for r, (ids, learn, _) in enumerate(rows):
        tokens[r, : len(ids)], mask[r, : len(learn)] = ids, learn
    return tokens, [np.array(starts, dtype=np.int32) for _, _, starts in rows], mask


Rows = tuple[np.ndarray, list[np.ndarray], np.ndarray, int, int]  # tokens, segment starts, column, records, tokens used


def write_shards(folder: Path, tokenizer: Any, seq_len: int, splits: dict[str, Rows], column: str) -> dict[str, Any]:
    """Shards of rows per split with their per-token `column`, the tokenizer beside them, and the manifest."""
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(folder / TOKENIZER_FILE))
    vocab, pad = tokenizer.get_vocab_size(), tokenizer.token_to_id("<|pad|>")
    counts = {}
    for split, (tokens, starts, values, documents, used) in splits.items():
        entry = write_shard(folder / split / f"{split}-00000-000.arrow", tokens, starts, vocab, {column: values})
        counts[split] = SplitIndex(
            documents=documents,
            tokens=used,
            learned_tokens=int((values > 0).sum()),
            sequences=len(tokens),
            padding=int(tokens.size - used),
            remainder=0,
            shards=[entry],
        )
    write_manifest(
        folder,
        ShardManifest(
            seq_len=seq_len,
            row_width=seq_len + 1,
            packing="chat",
            token_type=str(token_type(vocab)),
            tokenizer=TokenizerRecord(
                file=TOKENIZER_FILE,
                sha256=file_sha256(folder / TOKENIZER_FILE),
                vocab_size=vocab,
                eod_id=tokenizer.token_to_id("<|endoftext|>"),
                pad_id=pad,
            ),
            splits=counts,
            prep_config={},
        ),
    )
    return {split: index.model_dump(mode="json", exclude_unset=True) for split, index in counts.items()}


def packed(sequences: list[tuple[list[int], list[bool]]], seq_len: int, pad_id: int, seed: int) -> Rows:
    """SFT's rows: conversations packed several to a row, with their loss mask."""
    return (*pack(sequences, seq_len + 1, pad_id, seed), len(sequences), int(sum(len(s[0]) for s in sequences)))


def write_stats(folder: Path, ledger: Ledger, grown: dict[str, Any], counts: dict[str, Any]) -> None:
    ledger.write(folder / REJECTED)
    write_json(
        folder / STATS,
        {
            "records": ledger.summary(),
            "tokenizer": grown,
            "splits": {s: {k: v for k, v in c.items() if k != "shards"} for s, c in counts.items()},
        },
    )


def held_out(raw: str, fraction: float) -> bool:
    return uniform(raw.strip(), b"post-val") < fraction


def save_base(base: Path, folder: Path) -> None:
    """The base checkpoint's full weights as one safetensors file (any layout it was trained in)."""
    from training.export import save_consolidated

    save_consolidated(base, folder, torch.float32).rename(folder / BASE_WEIGHTS)


def grown_tokenizer(tokenizer_file: Path) -> tuple[Any, dict[str, Any]]:
    """The base tokenizer grown by the chat markers, and what stats.json says about it."""
    tokenizer, added = grow_tokenizer(tokenizer_file)
    return tokenizer, {
        "base_vocab": tokenizer.get_vocab_size() - len(added),
        "added": {tokenizer.id_to_token(i): i for i in added},
        "new_rows": "the mean of the base model's rows of its tokenizer's vocabulary",
    }


# -- SFT -----------------------------------------------------------------------------------------


def read_chat(
    chat: Path, codec: ChatCodec, settings: SFTConfig, seq_len: int
) -> tuple[Ledger, dict[str, list[tuple[list[int], list[bool]]]]]:
    """The usable conversations of a chat file as (ids, learn) per split, and the ledger of every record."""
    ledger = Ledger()
    splits: dict[str, list[tuple[list[int], list[bool]]]] = {"train": [], "val": []}
    for line, raw, record in json_records(chat, ledger):
        try:
            ids, learn = codec.encode(check_messages(record.get("messages")), tuple(settings.learn))
            if len(ids) > seq_len + 1:
                raise Rejection("too_long", f"{len(ids)} tokens; a row holds {seq_len + 1}")
        except Rejection as why:
            ledger.reject(line, raw, why)
            continue
        ledger.kept += 1
        splits["val" if held_out(raw, settings.val_fraction) else "train"].append((ids, learn))
    return ledger, splits


def build_data(
    folder: Path,
    records: Path,
    base: Path,
    tokenizer_file: Path,
    settings: Any,
    seq_len: int,
    read: Callable[..., Any],
    arrange: Callable[..., Rows],
    column: str,
) -> None:
    """RUN/data of a post-training run: shards (train and val) of the records `read` keeps, laid out in rows
    by `arrange` with their per-token `column`, the refused records, the base weights."""
    tokenizer, grown = grown_tokenizer(tokenizer_file)
    ledger, splits = read(records, ChatCodec(tokenizer), settings, seq_len)
    pad = tokenizer.token_to_id("<|pad|>")
    rows = {split: arrange(items, seq_len, pad, settings.seed) for split, items in splits.items()}
    write_stats(folder, ledger, grown, write_shards(folder / SHARDS, tokenizer, seq_len, rows, column))
    save_base(base, folder)


def build_sft_data(
    folder: Path, chat: Path, base: Path, tokenizer_file: Path, settings: SFTConfig, seq_len: int
) -> None:
    """RUN/data of an SFT run: conversations packed several to a row, with their loss mask."""
    build_data(folder, chat, base, tokenizer_file, settings, seq_len, read_chat, packed, LOSS_MASK)


def prepare(
    kind: str,
    config: PostTrainingConfig,
    base: Path,
    tokenizer_file: Path,
    data: storage.Location,
    output: Path,
    build: Callable[..., None],
) -> tuple[Any, Path, Callable[[torch.nn.Module], None]]:
    """The config, shards folder and initial weights of a post-training run of `kind` (`sft`, `dpo`): RUN/data
    made on first use by `build(folder, data, base, tokenizer_file, post.<kind>, seq_len)` (build_sft_data,
    build_dpo_data), checked to hold training (and validation) rows. A `data` URL is downloaded into
    RUN/source first (each start: RUN/data is rebuilt when its content changed)."""
    if storage.is_remote(data):
        try:
            data = storage.download(str(data), output / SOURCE / storage.name_of(data))
        except FileNotFoundError:
            raise UserError(f"--data {data}: not found in object storage; give a JSONL file's URL") from None
    data = Path(data)
    if not data.is_file():
        raise UserError(f"--data {data}: {'a folder' if data.is_dir() else 'not found'}; give a JSONL file")
    seq_len = config.train.seq_len or read_meta(base).trained_shape(base)[0]
    folder = output / DATA
    output.mkdir(parents=True, exist_ok=True)
    settings = getattr(config.post, kind)
    build_once(
        folder,
        fingerprint(kind, data, base, settings, seq_len),
        lambda staging: build(staging, data, base, tokenizer_file, settings, seq_len),
    )
    stats = read_marker(folder / STATS)
    if stats is None:
        raise UserError(f"{folder / STATS} is missing or damaged: remove {folder} and rerun to build it again")
    records, splits = stats["records"], stats["splits"]
    if not splits["train"]["sequences"]:
        raise UserError(
            f"--data {data}: no usable record ({records['read']} read, rejected "
            f"{records['rejected']}; see {folder / REJECTED})"
        )
    if config.train.eval_batches and not splits["val"]["sequences"]:
        raise UserError(
            f"--data {data}: no record held out for validation: raise post.{kind}.val_fraction, "
            f"or set train.eval_batches=0"
        )
    vocab = read_manifest(folder / SHARDS).tokenizer.vocab_size
    announce(folder, stats)
    grown = stats["tokenizer"]
    return (
        base_config(config, base, vocab),
        folder / SHARDS,
        base_weights(folder, grown["base_vocab"] if grown["added"] else None),
    )


def announce(folder: Path, stats: dict[str, Any]) -> None:
    """What the data folder holds, said once (rank 0)."""
    if int(os.environ.get("RANK", 0)) != 0:
        return
    records, grown = stats["records"], stats["tokenizer"]
    rejected = ", ".join(f"{reason} {n}" for reason, n in records["rejected"].items()) or "none"
    say(
        f"post-training data: {records['read']} records, {records['kept']} kept, rejected: {rejected} "
        f"(listed in {folder / REJECTED}); rows: "
        + ", ".join(f"{split} {c['sequences']} ({c['documents']} records)" for split, c in stats["splits"].items())
    )
    if grown["added"]:
        say(
            f"vocabulary grown by {', '.join(f'{t} (id {i})' for t, i in grown['added'].items())}: their embedding "
            f"rows start as {grown['new_rows']}"
        )
