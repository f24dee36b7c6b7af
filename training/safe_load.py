"""Reading checkpoint files without running code from them.

Checkpoints are data: whoever can write into a run folder must not get to run commands when a run
resumes, samples or exports. `torch.load` unpickles, and a pickle may call any function, so every
file is read by torch's weights-only unpickler, which builds tensors, containers and the few
DeepSpeed types on `ALLOWED` and refuses anything else, naming the file. Crucible's own files are
not pickles at all (crucible.json, RNG state as JSON, exports as safetensors).

Three layers, each enough on its own against a planted pickle:
- An allow-list (`check_files`): a folder is read only when every entry in it and below it is a
  plain file that its crucible.json lists, under a name that stays inside the folder; anything else
  (an extra `mp_rank_*` file of any extension, a symlink, a FIFO) refuses it by name, before any
  loader lists the folder. crucible.json carries a digest of itself, so an edited field (`layout`)
  makes the checkpoint damaged. Damage and careless edits are caught by this; a forger can rewrite
  the hashes too, which is why the next two layers exist.
- `vet` reads every file the safe way before DeepSpeed's own code may touch the folder, so a
  refusal names the file (cheaply: tensors are memory-mapped, not read).
- `weights_only_loads` forces every `torch.load` in the process (DeepSpeed's universal converter
  and loader call it themselves, some with `weights_only=False`) through the weights-only unpickler.
"""

from __future__ import annotations

import os
import pickle
import re
import stat
import warnings
import zipfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from enum import Enum
from pathlib import PurePosixPath
from pathlib import Path
from typing import Any

import numpy as np
import torch

import training.accelerator  # noqa: F401  (before deepspeed and megatron-core)

# isort: split
from deepspeed.runtime.checkpoint_engine.torch_checkpoint_engine import TorchCheckpointEngine
from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
from deepspeed.runtime.zero.config import ZeroStageEnum
from deepspeed.utils.tensor_fragment import fragment_address

from pipeline.ground.errors import UserError
from pipeline.ground.hashing import file_sha256
from pipeline.ground.names import CHECKPOINT_META as META
from training.checkpoint_meta import CorruptCheckpoint

# What DeepSpeed's model, optimizer and universal files hold besides tensors and containers, and
# numpy arrays of numbers (the RNG state of checkpoints written before it was JSON).
ENUMS = (ZeroStageEnum,)


def _enum_member(enum: type[Enum], name: str) -> Enum:
    """`getattr(enum, name)` limited to a member of an allowed enum: early Python 3.11 releases
    (Debian 12's 3.11.2) pickle an enum member as that call, later ones by value."""
    if enum not in ENUMS or name not in enum.__members__:
        raise pickle.UnpicklingError(
            f"Unsupported getattr({getattr(enum, '__name__', enum)!r}, {name!r}): only the "
            "members of DeepSpeed's enums are read"
        )
    return enum[name]


ALLOWED = [
    LossScaler,
    DynamicLossScaler,
    *ENUMS,
    fragment_address,
    (_enum_member, "builtins.getattr"),
    np._core.multiarray._reconstruct,  # type: ignore[attr-defined]  # a private module numpy's stubs omit
    np.ndarray,
    np.dtype,
    np.dtypes.UInt32DType,
]
# Registered for the whole process, not per load: torch's per-call context removes the types on exit, also
# from an enclosing one (a weights-only DeepSpeed load inside `weights_only_loads`).
torch.serialization.add_safe_globals(ALLOWED)
FORCE_WEIGHTS_ONLY = "TORCH_FORCE_WEIGHTS_ONLY_LOAD"  # torch's switch: weights_only=False is then ignored
ALLOW_FULL_UNPICKLING = "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"  # its opposite, an error beside it: unset while forcing


class UnsafeCheckpoint(UserError):
    """A checkpoint file that would build objects outside the allow-list (run code) when loaded."""


class ForeignEntry(CorruptCheckpoint):
    """A checkpoint folder holding what its crucible.json does not list (a planted file, a symlink, a FIFO):
    never read, and passed over like a damaged one."""


def inside(folder: Path, name: object) -> str:
    """`name` as a path inside `folder`: relative, no `..`, no empty or `.` parts."""
    path = PurePosixPath(name) if isinstance(name, str) and name and "\\" not in name else None
    parts = path.parts if path is not None else ()
    if path is None or not parts or path.is_absolute() or any(part in ("", ".", "..") for part in parts):
        raise ForeignEntry(
            f"checkpoint {folder}: its {META} lists {name!r}, a name outside the folder; it was altered and is not read"
        )
    return "/".join(parts)


def _entries(folder: Path) -> Iterator[tuple[str, os.stat_result]]:
    """Every entry under `folder` as (relative name, lstat), depth first; links are listed, never followed."""
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        info = entry.stat(follow_symlinks=False)
        yield entry.name, info
        if stat.S_ISDIR(info.st_mode):
            yield from ((f"{entry.name}/{name}", below) for name, below in _entries(Path(entry.path)))


def _kind(mode: int) -> str:
    kinds = {
        stat.S_ISLNK: "a symbolic link",
        stat.S_ISFIFO: "a FIFO",
        stat.S_ISSOCK: "a socket",
        stat.S_ISCHR: "a device",
        stat.S_ISBLK: "a device",
    }
    return next((kind for test, kind in kinds.items() if test(mode)), "not a plain file")


def check_files(folder: Path, listed: dict[str, str], extra: Iterable[str] = (META,), hashes: bool = True) -> None:
    """Refuse `folder` unless it holds exactly the files `listed` (name -> SHA-256) plus `extra`, all plain
    files, under names inside it; with `hashes`, each must also match its digest."""
    folder = Path(folder)
    if folder.is_symlink() or not folder.is_dir():
        what = "a symbolic link" if folder.is_symlink() else "not a folder"
        raise ForeignEntry(f"checkpoint {folder} is {what}, which Crucible never writes; it is not read")
    names = {inside(folder, name): digest for name, digest in listed.items()}
    allowed = set(names) | set(extra)
    for name, info in _entries(folder):
        if stat.S_ISDIR(info.st_mode):
            continue
        if not stat.S_ISREG(info.st_mode):
            raise ForeignEntry(
                f"checkpoint {folder}: {folder / name} is {_kind(info.st_mode)}, which Crucible never "
                f"writes there; the checkpoint was altered and is not read"
            )
        if name not in allowed:
            raise ForeignEntry(
                f"checkpoint {folder}: {folder / name} is not one of the files its {META} lists; the "
                f"checkpoint was altered and is not read (remove the file to use it)"
            )
    for name, digest in names.items():
        path = folder / name
        if not path.is_file():
            raise CorruptCheckpoint(f"checkpoint {folder.name}: file {path} is missing")
        if hashes and file_sha256(path) != digest:
            raise CorruptCheckpoint(f"checkpoint {folder.name}: file {path} does not match its SHA-256")


def _refusal(exc: pickle.UnpicklingError) -> str:
    """torch's reason without its advice to load with weights_only=False."""
    reason = re.search(r"(Trying to load [^\n]*|Unsupported [^\n]*)", str(exc))
    return reason.group(1).strip() if reason else "an object outside the allow-list"


def load(path: Path | str, map_location: Any = None, mmap: bool = False) -> Any:
    """torch.load, weights only: tensors, containers and `ALLOWED`; anything else is refused."""
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as exc:
        if "Weights only load failed" not in str(exc):  # not a pickle at all: torn, or another kind of file
            raise CorruptCheckpoint(f"cannot read checkpoint file {path}: {str(exc).splitlines()[0]}") from None
        raise UnsafeCheckpoint(
            f"refused to load {path}: it holds more than tensors ({_refusal(exc)}), which could run code; "
            f"a checkpoint is data, so this file was altered or is not a Crucible/DeepSpeed checkpoint file"
        ) from None
    except Exception as exc:  # noqa: BLE001  (bytes that are no checkpoint fail in any of the unpickler's ways)
        first_line = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise CorruptCheckpoint(f"cannot read checkpoint file {path}: {first_line}") from None


def vet(folder: Path) -> None:
    """Read every file under `folder` but the JSON ones the safe way, before DeepSpeed's code reads them.
    `check_files` has made sure there is nothing else there (no link to follow, no FIFO to block on)."""
    for name, info in _entries(Path(folder)):
        path = Path(folder) / name
        if stat.S_ISREG(info.st_mode) and path.suffix != ".json":
            load(path, map_location="cpu", mmap=zipfile.is_zipfile(path))


@contextmanager
def weights_only_loads() -> Iterator[None]:
    """Every `torch.load` in this process (and in processes it starts) unpickles weights only while inside:
    torch then ignores a caller's `weights_only=False`, and `ALLOWED` are the only types it builds."""
    before = {name: os.environ.pop(name, None) for name in (FORCE_WEIGHTS_ONLY, ALLOW_FULL_UNPICKLING)}
    os.environ[FORCE_WEIGHTS_ONLY] = "1"
    try:
        yield
    finally:
        os.environ.pop(FORCE_WEIGHTS_ONLY)
        os.environ.update({name: value for name, value in before.items() if value is not None})


class SafeCheckpointEngine(TorchCheckpointEngine):
    """DeepSpeed's torch.save/torch.load engine, with loads through `load` (weights only)."""

    def load(self, path: str, map_location: Any = None) -> Any:
        return load(path, map_location=map_location)
