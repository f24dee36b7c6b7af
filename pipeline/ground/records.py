"""Small files of records a user names (eval sets, task files, labelled examples): read whole, or refused in one line.

Unlike prep's inputs, where one bad record is quarantined and the run goes on, these files are
settings: a file that cannot be read as intended would silently change what is measured or
protected, so its first fault stops the command with the file, the line and what is wrong.
"""

from __future__ import annotations

import gzip
import json
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pipeline.ground.errors import UserError

BOM = b"\xef\xbb\xbf"
JSON_KINDS = {
    list: "an array",
    str: "a string",
    int: "a number",
    float: "a number",
    bool: "true/false",
    type(None): "null",
}


def text_lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, line) of a UTF-8 text file, plain or .gz, a leading BOM dropped; bytes that are
    not UTF-8, a damaged .gz or a read error end in one UserError naming the file and line."""
    path = Path(path)
    number = 0
    try:
        with (gzip.open if path.name.lower().endswith(".gz") else open)(path, "rb") as handle:
            for number, raw in enumerate(handle, 1):
                try:
                    yield number, (raw.removeprefix(BOM) if number == 1 else raw).decode("utf-8")
                except UnicodeDecodeError as exc:
                    raise UserError(
                        f"{path}:{number}: not UTF-8 text (byte {raw[exc.start]:#04x} at column "
                        f"{exc.start + 1}); save the file as UTF-8"
                    ) from None
    except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
        raise UserError(f"{path}: not a readable .gz file after line {number} ({exc})") from None
    except OSError as exc:
        raise UserError(f"{path}: cannot be read ({exc.strerror or exc})") from None


def _parquet_records(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        rows = pq.read_table(path).to_pylist()
    except (pa.ArrowException, OSError) as exc:
        raise UserError(f"{path}: not a readable Parquet file ({str(exc).splitlines()[0][:200]})") from None
    yield from enumerate(rows, 1)


def iter_records(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line or row number, record) of a JSON Lines file (.jsonl, .json, .ndjson, optionally .gz) or
    a Parquet file; blank lines are skipped. A line that is not a JSON object ends in one UserError."""
    path = Path(path)
    if path.name.lower().endswith(".parquet"):
        yield from _parquet_records(path)
        return
    for number, line in text_lines(path):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except RecursionError:
            raise UserError(f"{path}:{number}: JSON nested too deep") from None
        except ValueError as exc:
            if number == 1 and line.lstrip().startswith("["):
                raise UserError(f"{path} holds a JSON array; expected JSON Lines, one object a line") from None
            reason = exc.msg if isinstance(exc, json.JSONDecodeError) else str(exc)[:100]
            raise UserError(f"{path}:{number}: not JSON ({reason}); expected one JSON object a line") from None
        if not isinstance(record, dict):
            kind = JSON_KINDS.get(type(record), "a JSON value")
            raise UserError(f"{path}:{number}: {kind}, not an object; expected JSON Lines, one object a line")
        yield number, record


def read_records(path: Path) -> list[dict[str, Any]]:
    """Every record of a JSON Lines or Parquet file (see `iter_records`)."""
    return [record for _, record in iter_records(path)]
