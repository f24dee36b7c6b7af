"""Finding a checkpoint, its tokenizer and its sampling settings from what a user points at."""

from __future__ import annotations

from pathlib import Path

from pipeline.config import CrucibleConfig
from pipeline.ground import storage
from pipeline.ground.errors import UserError
from pipeline.ground.layout import TrainFolder
from training.config import SamplesConfig


def checkpoint_in(path: storage.Location, config: CrucibleConfig) -> Path:
    """A checkpoint folder from what a user points at: the folder itself, `latest`, a run's
    `checkpoints/` folder or the run folder (then its newest loadable checkpoint); the folder of
    `crucible run` holds its training run in train/. A URL is a remote checkpoint, or a run's
    checkpoint.remote (its newest complete one), downloaded into this machine's cache."""
    from pipeline.ground.names import CHECKPOINT_META
    from training.checkpoint import Checkpointer

    if storage.is_remote(path):
        from training.remote_checkpoints import remote_checkpoint
        from training.shard_cache import cache_root

        return remote_checkpoint(path, cache_root() / "checkpoints", config.checkpoint)
    folder = Path(path)
    if (folder / CHECKPOINT_META).exists() or not folder.exists():
        return folder
    run = TrainFolder.pointed_at(folder)
    latest = Checkpointer(run.root, config.checkpoint, rank=0).newest_loadable()
    if latest is None:
        steps = run.checkpoint_tags()
        raise UserError(
            f"{folder} holds no loadable checkpoint"
            + (
                f" (folders: {', '.join(steps[-3:])})"
                if steps
                else "; point --checkpoint at RUN/checkpoints/step-N or at a run folder"
            )
        )
    return latest.path


def tokenizer_of(checkpoint: Path, given: Path | None) -> Path:
    """The tokenizer `checkpoint` was trained with: another one's ids would decode to garbage."""
    from pipeline.ground.hashing import file_sha256
    from training.checkpoint_meta import read_meta, tokenizer_record

    meta = read_meta(checkpoint)
    record = tokenizer_record(meta)
    path = given or Path(meta.data_dir) / record.file
    if given is None and storage.is_remote(meta.data_dir):  # trained from shards on object storage
        from training.shard_cache import cache_root

        path = cache_root() / "tokenizers" / f"{record.sha256}.json"
        if not path.is_file():
            storage.download(storage.join_url(meta.data_dir, record.file), path)
    if given and not given.is_file():
        raise UserError(
            f"--tokenizer {given} is {'a folder' if given.is_dir() else 'not found'}: give the run's tokenizer.json"
        )
    if not path.is_file():
        raise UserError(f"tokenizer {path} not found: pass --tokenizer")
    if file_sha256(path) != record.sha256:
        raise UserError(
            f"tokenizer {path} is not the one {checkpoint} was trained with (its SHA-256 differs from "
            f"the recorded {record.sha256[:12]}...): pass that run's tokenizer.json with --tokenizer"
        )
    return path


def run_samples(checkpoint: Path, config: CrucibleConfig) -> SamplesConfig:
    """The sampling settings the run was trained with (saved in its checkpoints), under the samples.* keys that
    this command's --config and --set give: a run's own prompts and temperature without repeating its config."""
    from pydantic import ValidationError

    from training.checkpoint_meta import read_meta

    saved = read_meta(checkpoint).config.samples  # empty in checkpoints saved before they were kept
    given = config.samples.model_dump(mode="json", include=config.samples.model_fields_set)
    try:
        return SamplesConfig.model_validate(saved | given)
    except ValidationError as exc:
        raise UserError(
            f"{checkpoint}: the samples settings saved with it are not valid ({exc.errors()[0]['msg']}); "
            f"give them with --config or --set samples.*"
        ) from None
