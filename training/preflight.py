"""Checks that refuse a training run before it spends time: each ends in one sentence with the fix.

`run` calls them before prep, where the shards do not exist yet (layout, run folder, disk); the
trainer calls them again before building anything, with the shards' manifest (splits).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.ground.errors import UserError
from pipeline.ground.markers import read_pointer
from pipeline.ground.layout import TrainFolder
from training.checkpoint_meta import CheckpointMeta, CorruptCheckpoint, read_meta

if TYPE_CHECKING:
    from data_prep.shards import ShardManifest

CHECKPOINT_BYTES_PER_PARAM = 16  # fp32 weights (4) + Adam's fp32 master copy and two moments (12)
WEIGHT_SHAPES = (
    "d_model",
    "n_layers",
    "n_heads",
    "n_kv_heads",
    "ffn_hidden",
    "vocab_size",
    "vocab_multiple",
    "tie_embeddings",
)  # the model keys a checkpoint's tensors depend on


def latest_checkpoint_meta(run_dir: Path) -> CheckpointMeta | None:
    """The metadata of the run folder's latest checkpoint, or None where there is none (or it or the pointer is
    torn: the trainer then says so and resumes from the newest checkpoint that loads)."""
    try:
        tag = read_pointer(TrainFolder(Path(run_dir)).latest)
    except UserError:
        return None
    if not tag:
        return None
    try:
        return read_meta(TrainFolder(Path(run_dir)).checkpoint(tag))
    except CorruptCheckpoint:
        return None


def check_same_model(run_dir: Path, model: dict[str, Any], resume: str) -> None:
    """A run folder whose checkpoint holds another model cannot be resumed into."""
    meta = latest_checkpoint_meta(run_dir) if resume == "auto" else None
    changed = model_changes(meta, model) if meta is not None else None
    if changed:
        raise UserError(
            f"{run_dir} holds a checkpoint of another model ({changed}): use a new --output, "
            f"or --resume none to start over there"
        )


def model_changes(meta: CheckpointMeta, model: dict[str, Any]) -> str | None:
    """How `model` differs from the one a checkpoint's metadata records, in the keys its tensors' shapes
    depend on (`d_model 64 -> 128, ...`), or None when the weights fit."""
    saved = meta.config.model
    changed = [key for key in WEIGHT_SHAPES if saved.get(key) != model.get(key)]
    return ", ".join(f"{key} {saved.get(key)!r} -> {model.get(key)!r}" for key in changed[:4]) or None


def check_splits(manifest: ShardManifest, shards: Path, needs_validation: bool) -> None:
    """Every split the run reads must hold rows."""
    if not manifest.split("train").sequences:
        raise UserError(f"{shards}: the train split is empty: prep kept too few documents for one sequence")
    if needs_validation and not manifest.split("val").sequences:
        documents = manifest.split("val").documents
        raise UserError(
            f"{shards}: the validation split is empty ({documents} documents held out): raise "
            f"prep.pack.val_fraction, or set train.eval_batches=0 to train without validation"
        )


def check_disk(run_dir: Path, params: int, keep: int) -> None:
    """Refuse a run whose kept checkpoints cannot fit on the run folder's filesystem."""
    folder = Path(run_dir)
    while not folder.exists():
        folder = folder.parent
    needed = params * CHECKPOINT_BYTES_PER_PARAM * (keep + 1)  # kept ones and the one being staged
    free = shutil.disk_usage(folder).free
    if needed > free:
        raise UserError(
            f"checkpoints of {params / 1e6:,.0f}M parameters need ~{needed / 1e9:,.1f} GB "
            f"({keep} kept + 1 being written) but {folder} has {free / 1e9:,.1f} GB free: free space, "
            f"lower checkpoint.keep_last, or write the run elsewhere"
        )
