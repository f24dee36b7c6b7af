"""`crucible.json`: a published checkpoint's metadata, the contract between the trainer that writes it
and everything that reads a checkpoint (resume, eval, generate, export, sft and dpo, the remote copy).

It lists every file of the checkpoint with its SHA-256 and carries a digest of its own fields, so
an edited field makes the checkpoint damaged. Checkpoints saved before a field existed still read:
only `step`, `healthy`, `files` and `config` were there from the start.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from data_prep.shards import TokenizerRecord, read_manifest
from pipeline.ground.contract import first_problem
from pipeline.ground.errors import UserError
from pipeline.ground.names import CHECKPOINT_META as META

REQUIRED = ("step", "healthy", "files", "config")  # whatever the version
META_DIGEST = "meta_sha256"  # the digest of the other fields (checkpoints saved since it exists)


class CorruptCheckpoint(UserError):
    """A checkpoint whose files are missing, unreadable or do not match their recorded hashes."""


class SavedLayout(BaseModel):
    """How the ranks were laid out at the save: a resume with another layout converts the checkpoint."""

    tp: int
    pp: int
    dp: int
    zero_stage: int


class SavedConfig(BaseModel):
    """The run's settings as saved: the model's fix the weights' shapes; generate and export take their
    defaults from the rest."""

    model_config = ConfigDict(extra="allow")

    model: dict[str, Any] = {}
    vocab_padded: int | None = None
    parallel: dict[str, Any] = {}
    train: dict[str, Any] = {}
    samples: dict[str, Any] = {}


class CheckpointMeta(BaseModel):
    model_config = ConfigDict(extra="allow")

    step: int
    healthy: bool
    config: SavedConfig
    files: dict[str, str] = Field(default_factory=dict, description="file name -> SHA-256, set at the save")
    loader: dict[str, Any] = {}
    tokens: int = 0
    rollbacks: int = 0
    reason: str = ""
    layout: SavedLayout | None = None
    manifest_sha256: str | None = None
    data_dir: str = ""
    seq_len: int | None = None
    tokenizer: TokenizerRecord | None = None  # older checkpoints: in the manifest of `data_dir`
    meta_sha256: str | None = None  # the digest, as read (`to_json` computes it anew)

    def trained_shape(self, checkpoint: Path) -> tuple[int, int]:
        """(seq_len, vocab_padded) of `checkpoint`, whose metadata this is: every save records both, only the
        oldest minimal files lack them, and a model cannot be built or fed without them."""
        if self.seq_len is None or self.config.vocab_padded is None:
            raise CorruptCheckpoint(
                f"checkpoint {checkpoint}: {Path(checkpoint) / META} has no seq_len or "
                f"config.vocab_padded; it was not saved by a training run"
            )
        return self.seq_len, self.config.vocab_padded

    def to_json(self) -> str:
        fields = self.model_dump(mode="json", exclude_none=True, exclude={META_DIGEST})
        return json.dumps(fields | {META_DIGEST: meta_digest(fields)}, indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str, checkpoint: Path) -> CheckpointMeta:
        """The metadata in `text` (the file of `checkpoint`); torn, incomplete or edited is damaged."""
        path = Path(checkpoint) / META
        try:
            fields = json.loads(text)
        except ValueError as exc:
            raise CorruptCheckpoint(f"checkpoint {checkpoint}: {path} is damaged ({exc})") from None
        missing = [key for key in REQUIRED if not isinstance(fields, dict) or key not in fields]
        if missing:
            raise CorruptCheckpoint(f"checkpoint {checkpoint}: {path} is incomplete (no {', '.join(missing)})")
        if META_DIGEST in fields and fields[META_DIGEST] != meta_digest(fields):
            raise CorruptCheckpoint(
                f"checkpoint {checkpoint}: {path} was edited after the save (its fields no "
                f"longer match their digest); restore it, or resume from another checkpoint"
            )
        try:
            return cls.model_validate(fields)
        except ValidationError as exc:
            raise CorruptCheckpoint(f"checkpoint {checkpoint}: {path} is damaged ({first_problem(exc)})") from None


def meta_digest(fields: dict[str, Any]) -> str:
    """The SHA-256 of the fields other than the digest itself, in one canonical spelling."""
    kept = {key: value for key, value in fields.items() if key != META_DIGEST}
    return hashlib.sha256(json.dumps(kept, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def read_meta(checkpoint: Path) -> CheckpointMeta:
    """A checkpoint's metadata; a missing, torn or incomplete one makes the checkpoint damaged."""
    path = Path(checkpoint) / META
    if not Path(checkpoint).exists():
        raise CorruptCheckpoint(f"checkpoint {checkpoint} not found")
    if not path.is_file():
        raise CorruptCheckpoint(f"{checkpoint} is not a Crucible checkpoint, or a damaged one (no {META})")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, ValueError) as exc:
        raise CorruptCheckpoint(f"checkpoint {checkpoint}: {path} is damaged ({exc})") from None
    return CheckpointMeta.from_json(text, checkpoint)


def tokenizer_record(meta: CheckpointMeta) -> TokenizerRecord:
    """The shards' tokenizer a checkpoint was trained with. Checkpoints carry it; older ones are looked up
    in their shards' manifest."""
    return meta.tokenizer or read_manifest(Path(meta.data_dir)).tokenizer
