"""Reading checkpoint files without running code from them.

Checkpoints are data: whoever can write into a run folder must not get to run commands when a run
resumes, samples or exports. `torch.load` unpickles, and a pickle may call any function, so every
`.pt` file is read by torch's weights-only unpickler, which builds tensors, containers and the few
DeepSpeed types on `ALLOWED` and refuses anything else, naming the file. The SHA-256 list in
crucible.json cannot help: it sits in the same folder as the files. Crucible's own files are not
pickles at all (crucible.json, RNG state as JSON, exports as safetensors).

DeepSpeed reads its files through its checkpoint engine (`SafeCheckpointEngine` here), except its
universal-checkpoint converter and loader, which call `torch.load` themselves: `vet` reads a folder
the safe way before they may touch it (cheaply: tensors are memory-mapped, not read).
"""

from __future__ import annotations

import json
import pickle
import re
import warnings
import zipfile
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np
import torch

import training.accelerator  # noqa: F401  (before deepspeed)

# isort: split
from deepspeed.runtime.checkpoint_engine.torch_checkpoint_engine import TorchCheckpointEngine
from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
from deepspeed.runtime.zero.config import ZeroStageEnum
from deepspeed.utils.tensor_fragment import fragment_address

from pipeline.ground.errors import UserError
from pipeline.ground.names import CHECKPOINT_META as META

# What DeepSpeed's model, optimizer and universal files hold besides tensors and containers, and
# numpy arrays of numbers (the RNG state of checkpoints written before it was JSON).
ENUMS = (ZeroStageEnum,)


def _enum_member(enum: type[Enum], name: str) -> Enum:
    """`getattr(enum, name)` limited to a member of an allowed enum: early Python 3.11 releases
    (Debian 12's 3.11.2) pickle an enum member as that call, later ones by value."""
    if enum not in ENUMS or name not in enum.__members__:
        raise pickle.UnpicklingError(f"Unsupported getattr({getattr(enum, '__name__', enum)!r}, {name!r}): only the "
                                     "members of DeepSpeed's enums are read")
    return enum[name]


ALLOWED = [LossScaler, DynamicLossScaler, *ENUMS, fragment_address, (_enum_member, "builtins.getattr"),
           np._core.multiarray._reconstruct, np.ndarray, np.dtype, np.dtypes.UInt32DType]
REQUIRED = ("step", "healthy", "files", "config")  # of crucible.json, whatever its version


class UnsafeCheckpoint(UserError):
    """A checkpoint file that would build objects outside the allow-list (run code) when loaded."""


class CorruptCheckpoint(UserError):
    """A checkpoint whose files are missing, unreadable or do not match their recorded hashes."""


def read_meta(checkpoint: Path) -> dict[str, Any]:
    """A checkpoint's crucible.json; a missing, torn or incomplete one makes the checkpoint damaged."""
    path = Path(checkpoint) / META
    if not Path(checkpoint).exists():
        raise CorruptCheckpoint(f"checkpoint {checkpoint} not found")
    if not path.is_file():
        raise CorruptCheckpoint(f"{checkpoint} is not a Crucible checkpoint, or a damaged one (no {META})")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CorruptCheckpoint(f"checkpoint {checkpoint}: {path} is damaged ({exc})") from None
    missing = [key for key in REQUIRED if not isinstance(meta, dict) or key not in meta]
    if missing:
        raise CorruptCheckpoint(f"checkpoint {checkpoint}: {path} is incomplete (no {', '.join(missing)})")
    return meta


def _refusal(exc: pickle.UnpicklingError) -> str:
    """torch's reason without its advice to load with weights_only=False."""
    reason = re.search(r"(Trying to load [^\n]*|Unsupported [^\n]*)", str(exc))
    return reason.group(1).strip() if reason else "an object outside the allow-list"


def load(path: Path | str, map_location: Any = None, mmap: bool = False) -> Any:
    """torch.load, weights only: tensors, containers and `ALLOWED`; anything else is refused."""
    try:
        with torch.serialization.safe_globals(ALLOWED), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as exc:
        raise UnsafeCheckpoint(
            f"refused to load {path}: it holds more than tensors ({_refusal(exc)}), which could run code; "
            f"a checkpoint is data, so this file was altered or is not a Crucible/DeepSpeed checkpoint file"
        ) from None
    except (RuntimeError, OSError, EOFError, ValueError) as exc:
        first_line = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise CorruptCheckpoint(f"cannot read checkpoint file {path}: {first_line}") from None


def vet(folder: Path) -> None:
    """Read every `.pt` file under `folder` the safe way, before code that unpickles freely reads it."""
    for path in sorted(Path(folder).rglob("*.pt")):
        load(path, map_location="cpu", mmap=zipfile.is_zipfile(path))


class SafeCheckpointEngine(TorchCheckpointEngine):
    """DeepSpeed's torch.save/torch.load engine, with loads through `load` (weights only)."""

    def load(self, path: str, map_location: Any = None) -> Any:
        return load(path, map_location=map_location)
