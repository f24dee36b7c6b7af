"""Readers: JSONL (plain, .gz, .zst), Parquet and folders of .txt files, as Arrow batches.

Inputs are cut into shards that a task can read alone (large plain JSONL files by byte range,
aligned on line starts), so the local and the Slurm executor split work the same way. A record
that cannot become a document (bad JSON, no text, too large) is quarantined with its raw bytes
and a reason, never silently skipped. Invalid UTF-8 is replaced here and counted in the
`_utf8_errors` column so that `normalize` can repair or quarantine the document by policy.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import pyarrow as pa
import pyarrow.parquet as pq
import zstandard
from pydantic import Field, field_validator

from data_prep.stage import ID, ORIGIN, TEXT, Decision, StageSpec, StepSpec, TaskContext
from pipeline.ground.errors import UserError
from pipeline.ground.schema import Section

UTF8_ERRORS = "_utf8_errors"
JSONL_SUFFIXES = (".jsonl", ".ndjson", ".json")
COMPRESSIONS = ("", ".gz", ".zst")
COMPRESSION_RATIO_GUESS = 4
REPLACEMENT = "\ufffd"
REPLACEMENT_BYTES = REPLACEMENT.encode()
SURROGATE = re.compile("[\ud800-\udfff]")


class ReadConfig(Section):
    """How input records map to documents."""

    text_field: str = Field("text", min_length=1, description="JSON/Parquet field with the text.")
    id_field: str = Field("id", min_length=1, description="Optional id field; else an id is derived.")
    max_record_mb: float = Field(
        64.0, gt=0, description="A record larger than this is quarantined without parsing."
    )
    keep_fields: list[str] = Field(
        default_factory=list,
        description="Record fields carried as string columns through every stage into clean/ and lineage, "
                    "e.g. [url, source] for the blocklist stage; absent fields are null.",
    )

    @field_validator("keep_fields")
    @classmethod
    def _no_reserved(cls, fields: list[str]) -> list[str]:
        reserved = [f for f in fields if f in (ID, TEXT, ORIGIN) or f.startswith("_")]
        if reserved or len(set(fields)) != len(fields):
            raise ValueError(f"keep_fields must be distinct and not {ID}, {TEXT}, {ORIGIN} or _-prefixed: {fields}")
        return fields


@dataclass(frozen=True)
class InputPiece:
    """A whole file, or the byte range [start, end) of a plain JSONL file."""

    path: str
    kind: str  # "jsonl", "parquet" or "txt"
    label: str  # stable name used in origins and derived ids
    start: int = 0
    end: int | None = None


@dataclass(frozen=True)
class InputShard:
    pieces: tuple[InputPiece, ...]


@dataclass
class ReadBatch:
    """Documents as an Arrow table plus the quarantine records of the same stretch of input."""

    table: pa.Table
    quarantined: list[dict[str, Any]] = field(default_factory=list)


def _kind_of(path: Path) -> str | None:
    name = path.name.lower()
    if name.endswith(".parquet"):
        return "parquet"
    if name.endswith(".txt"):
        return "txt"
    if any(name.endswith(s + c) for s in JSONL_SUFFIXES for c in COMPRESSIONS):
        return "jsonl"
    return None


def discover(inputs: list[Path]) -> list[InputPiece]:
    """Expand files and folders into whole-file pieces, sorted so every run sees one order."""
    if not inputs:
        raise UserError("no inputs: give --input PATH or set prep.inputs in the config")
    pieces: list[InputPiece] = []
    for root in inputs:
        root = Path(root)
        if root.is_dir():
            files = sorted(p for p in root.rglob("*") if p.is_file() and _kind_of(p))
            if not files:
                raise UserError(f"input folder {root} holds no .jsonl(.gz/.zst), .parquet or .txt file")
            for path in files:
                label = f"{root.name}/{path.relative_to(root).as_posix()}"
                pieces.append(InputPiece(str(path), _kind_of(path), label))  # type: ignore[arg-type]
        elif root.is_file():
            kind = _kind_of(root)
            if kind is None:
                raise UserError(
                    f"input {root}: unknown format (expected .jsonl, .jsonl.gz, .jsonl.zst, .parquet, .txt)"
                )
            pieces.append(InputPiece(str(root), kind, root.name))
        else:
            raise UserError(f"input {root} does not exist")
    return pieces


def plan_shards(inputs: list[Path], shard_bytes: int) -> list[InputShard]:
    """Split inputs into shards of about `shard_bytes`; only plain JSONL files are cut."""
    pieces: list[tuple[InputPiece, int]] = []
    for piece in discover(inputs):
        size = Path(piece.path).stat().st_size
        if piece.path.endswith((".gz", ".zst")):
            size *= COMPRESSION_RATIO_GUESS  # shards are sized by text, not by bytes on disk
        splittable = piece.kind == "jsonl" and not piece.path.endswith((".gz", ".zst"))
        if splittable and size > shard_bytes:
            for start in range(0, size, shard_bytes):
                end = min(start + shard_bytes, size)
                pieces.append((InputPiece(piece.path, piece.kind, piece.label, start, end), end - start))
        else:
            pieces.append((piece, size))
    shards: list[InputShard] = []
    current: list[InputPiece] = []
    current_bytes = 0
    for piece, size in pieces:
        current.append(piece)
        current_bytes += size
        if current_bytes >= shard_bytes:
            shards.append(InputShard(tuple(current)))
            current, current_bytes = [], 0
    if current:
        shards.append(InputShard(tuple(current)))
    return shards


def derive_id(origin: str, text: str) -> str:
    """A stable id from where a record sits and what it says (same input -> same id)."""
    digest = hashlib.blake2b(origin.encode() + b"\0", digest_size=8)
    digest.update(text.encode("utf-8", "surrogatepass"))
    return digest.hexdigest()


def decode_utf8(raw: bytes) -> tuple[str, int]:
    """Decode, replacing invalid sequences with U+FFFD; return the text and how many were replaced."""
    try:
        return raw.decode("utf-8"), 0
    except UnicodeDecodeError:
        text = raw.decode("utf-8", errors="replace")
        return text, text.count(REPLACEMENT) - raw.count(REPLACEMENT_BYTES)


def _scrub_surrogates(text: str) -> tuple[str, int]:
    """JSON escapes can smuggle lone surrogates, which are not UTF-8; treat them as invalid bytes."""
    try:
        text.encode("utf-8")
        return text, 0
    except UnicodeEncodeError:
        surrogates = SURROGATE.findall(text)
        return SURROGATE.sub(REPLACEMENT, text), len(surrogates)


def _metadata_value(value: Any) -> str | None:
    """Kept fields travel as strings: text as it is, other JSON values in their JSON form."""
    if value is None or isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, sort_keys=True)


class _Batcher:
    """Collects documents and quarantine records and cuts them into ReadBatches."""

    def __init__(self, batch_size: int, keep_fields: list[str]) -> None:
        self.batch_size = batch_size
        self.keep_fields = keep_fields
        self.metadata: dict[str, list[str | None]] = {name: [] for name in keep_fields}
        self.ids: list[str] = []
        self.texts: list[str] = []
        self.origins: list[str] = []
        self.errors: list[int] = []
        self.quarantined: list[dict[str, Any]] = []

    def add(self, origin: str, doc_id: str | None, text: str, utf8_errors: int,
            metadata: dict[str, Any] | None = None) -> None:
        self.ids.append(doc_id if doc_id else derive_id(origin, text))
        self.texts.append(text)
        self.origins.append(origin)
        self.errors.append(utf8_errors)
        for name, values in self.metadata.items():
            values.append(_metadata_value((metadata or {}).get(name)))

    def quarantine(self, origin: str, reason: str, raw: bytes, **detail: Any) -> None:
        self.quarantined.append(
            {"origin": origin, "id": None, "reason": reason, "detail": detail, "raw": raw}
        )

    def full(self) -> bool:
        return len(self.ids) + len(self.quarantined) >= self.batch_size

    def flush(self) -> ReadBatch:
        table = pa.table(
            {
                ID: pa.array(self.ids, pa.string()),
                TEXT: pa.array(self.texts, pa.string()),
                ORIGIN: pa.array(self.origins, pa.string()),
                UTF8_ERRORS: pa.array(self.errors, pa.int32()),
            } | {name: pa.array(values, pa.string()) for name, values in self.metadata.items()}
        )
        batch = ReadBatch(table, self.quarantined)
        self.__init__(self.batch_size, self.keep_fields)  # type: ignore[misc]
        return batch


def _open_stream(path: str) -> BinaryIO:
    if path.endswith(".gz"):
        return gzip.open(path, "rb")  # type: ignore[return-value]
    if path.endswith(".zst"):
        raw = open(path, "rb")
        return io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(raw, closefd=True))
    return open(path, "rb")


def _lines(piece: InputPiece, max_bytes: int) -> Iterator[tuple[int, bytes, bool]]:
    """Yield (offset, line, too_large) for lines that start inside the piece's range."""
    with _open_stream(piece.path) as stream:
        offset = 0
        if piece.start > 0:
            stream.seek(piece.start - 1)
            offset = piece.start - 1 + len(stream.readline())  # skip the line owned by the previous range
        while piece.end is None or offset < piece.end:
            line = stream.readline(max_bytes + 1)
            if not line:
                return
            start = offset
            offset += len(line)
            if len(line) > max_bytes and not line.endswith(b"\n"):
                head = line[:4096]
                while line and not line.endswith(b"\n"):
                    line = stream.readline(max_bytes)
                    offset += len(line)
                yield start, head, True
                continue
            yield start, line, False


def _read_jsonl(piece: InputPiece, cfg: ReadConfig, out: _Batcher) -> Iterator[ReadBatch]:
    max_bytes = int(cfg.max_record_mb * 2**20)
    for offset, line, too_large in _lines(piece, max_bytes):
        origin = f"{piece.label}:{offset}"
        if too_large:
            out.quarantine(origin, "record_too_large", line, limit_mb=cfg.max_record_mb)
        elif line.strip():
            _parse_json_record(origin, line, cfg, out)
        if out.full():
            yield out.flush()


def _parse_json_record(origin: str, line: bytes, cfg: ReadConfig, out: _Batcher) -> None:
    decoded, bad_bytes = decode_utf8(line)
    try:
        record = json.loads(decoded)
    except json.JSONDecodeError as exc:
        out.quarantine(origin, "malformed_json", line, error=str(exc)[:200])
        return
    if not isinstance(record, dict):
        out.quarantine(origin, "not_an_object", line, type=type(record).__name__)
        return
    text = record.get(cfg.text_field)
    if text is None:
        out.quarantine(origin, "missing_text", line, field=cfg.text_field)
        return
    if not isinstance(text, str):
        out.quarantine(origin, "text_not_string", line, type=type(text).__name__)
        return
    text, bad_escapes = _scrub_surrogates(text)
    doc_id = record.get(cfg.id_field)
    out.add(origin, None if doc_id is None else str(doc_id), text, bad_bytes + bad_escapes, record)


def _read_txt(piece: InputPiece, cfg: ReadConfig, out: _Batcher) -> Iterator[ReadBatch]:
    max_bytes = int(cfg.max_record_mb * 2**20)
    with open(piece.path, "rb") as handle:
        raw = handle.read(max_bytes + 1)
    if len(raw) > max_bytes:
        out.quarantine(piece.label, "record_too_large", raw[:4096], limit_mb=cfg.max_record_mb)
    else:
        text, bad_bytes = decode_utf8(raw)
        out.add(piece.label, None, text, bad_bytes)
    if out.full():
        yield out.flush()


def _read_parquet(piece: InputPiece, cfg: ReadConfig, out: _Batcher) -> Iterator[ReadBatch]:
    parquet = pq.ParquetFile(piece.path)
    names = parquet.schema_arrow.names
    if cfg.text_field not in names:
        raise UserError(f"{piece.path}: no column {cfg.text_field!r} (columns: {names})")
    kept = [name for name in cfg.keep_fields if name in names]
    columns = [cfg.text_field] + ([cfg.id_field] if cfg.id_field in names else []) + kept
    row = 0
    for batch in parquet.iter_batches(batch_size=out.batch_size, columns=columns):
        texts = batch.column(cfg.text_field).cast(pa.binary()).to_pylist()
        ids = batch.column(cfg.id_field).to_pylist() if cfg.id_field in names else [None] * len(texts)
        metadata = batch.select(kept).to_pylist() if kept else [None] * len(texts)
        for raw, doc_id, fields in zip(texts, ids, metadata):
            origin = f"{piece.label}:{row}"
            row += 1
            if raw is None:
                out.quarantine(origin, "missing_text", b"", field=cfg.text_field)
                continue
            text, bad_bytes = decode_utf8(raw)
            out.add(origin, None if doc_id is None else str(doc_id), text, bad_bytes, fields)
            if out.full():
                yield out.flush()


READERS = {"jsonl": _read_jsonl, "txt": _read_txt, "parquet": _read_parquet}


def read_shard(shard: InputShard, cfg: ReadConfig, batch_size: int) -> Iterator[ReadBatch]:
    """Stream one shard as ReadBatches of at most `batch_size` records."""
    out = _Batcher(batch_size, cfg.keep_fields)
    for piece in shard.pieces:
        yield from READERS[piece.kind](piece, cfg, out)
    if out.ids or out.quarantined:
        yield out.flush()


def run_read(ctx: TaskContext) -> dict[str, Any]:
    """The first step: read input shard `ctx.task` into documents, quarantining what cannot be one."""
    from data_prep.books import DocBooks

    books = DocBooks(ctx.stage, ctx.settings.keep_fields)
    for batch in read_shard(ctx.shards[ctx.task], ctx.settings, ctx.config.batch_size):
        books.quarantine_raw(batch.quarantined)
        books.apply(batch.table, Decision(batch.table))
        ctx.report(batch.table.num_rows + len(batch.quarantined))
    return books.write(ctx.work, ctx.step, ctx.task, None)


STAGE = StageSpec("read", ReadConfig, (StepSpec("", run_read, makes_docs=True),))
