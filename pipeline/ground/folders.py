"""Output folders a user names: made up front, so a file or an unwritable place in their way is
one line before any work, not a traceback after it."""

from __future__ import annotations

from pathlib import Path

from pipeline.ground.errors import UserError


def make_output_folder(folder: Path, flag: str = "--output") -> Path:
    """`folder`, made with its parents; UserError when a file is in the way or it cannot be made."""
    if folder.exists() and not folder.is_dir():
        raise UserError(f"{flag} {folder} is a file: give a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"{flag} {folder}: cannot make the folder ({exc.strerror})") from None
    return folder


def check_output_file(path: Path, flag: str = "--output") -> Path:
    """`path` can be written as a file: not a folder, and its folder exists or can be made."""
    if path.is_dir():
        raise UserError(f"{flag} {path} is a folder: give a file name, e.g. {path / 'results.json'}")
    make_output_folder(path.parent, f"the folder of {flag}")
    return path
