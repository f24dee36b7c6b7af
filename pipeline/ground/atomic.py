"""Atomic file publication: write to a temp name in the same folder, then rename.

A reader (or a resumed run) sees either the old file or the complete new one, never half of
one, which is what lets completion markers be trusted after a SIGKILL. A write that fails for
lack of space is reported with the path and the space left, not as a bare I/O error.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.ground.errors import UserError

TMP_PREFIX = ".tmp-"


class DiskFull(UserError):
    """The filesystem ran out of space (or quota) while a file was written."""


def disk_full(exc: OSError) -> bool:
    """Whether `exc` says no space was left (Arrow reports it without an errno, in its message)."""
    return exc.errno in (errno.ENOSPC, errno.EDQUOT) or "No space left on device" in str(exc)


def disk_full_error(path: Path) -> DiskFull:
    try:
        free = f"{shutil.disk_usage(path.parent).free / 2**20:,.1f} MiB free"
    except OSError:
        free = "free space unknown"
    return DiskFull(
        f"no space left on device writing {path} ({free} there); free some space or write elsewhere, "
        f"then rerun: finished work is kept"
    )


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temp path beside `path`; rename it over `path` when the block succeeds."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{TMP_PREFIX}{os.getpid()}-{path.name}")
    try:
        yield tmp
        os.replace(tmp, path)
    except OSError as exc:
        if disk_full(exc):
            raise disk_full_error(path) from exc
        raise
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: Path, payload: Any) -> None:
    write_text(path, json.dumps(payload, indent=2, sort_keys=True) + "\n")


def write_parquet(path: Path, table: pa.Table) -> None:
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd")


def write_npy(path: Path, array: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            np.save(handle, array)


def remove_temp_files(folder: Path) -> None:
    """Clear what a killed writer left behind."""
    for stale in folder.glob(f"{TMP_PREFIX}*"):
        stale.unlink(missing_ok=True)
