"""Readers: JSONL (plain, .gz, .zst), Parquet, folders of .txt files and web archives (WARC, WET;
see `data_prep.warc`), as Arrow batches.

Inputs are cut into shards that a task can read alone (large plain JSONL files by byte range,
aligned on line starts), so the local and the Slurm executor split work the same way. A record
that cannot become a document (bad JSON, no text, too large, a bad id) is quarantined with its
raw bytes and a reason, never silently skipped. A file that breaks part-way (a truncated or
corrupt compressed stream, a damaged Parquet row group, a read error) keeps the records before
the break and becomes one quarantine record naming the file, the byte offset or row group and
the reason; so does a Parquet file without the text column. The run goes on with the next file. Invalid UTF-8 is replaced here and counted in
the `_utf8_errors` column so that `normalize` can repair or quarantine the document by policy.
Inside input folders symbolic links are skipped (they can loop or leave the folder), and so are
FIFOs, sockets and devices (opening a FIFO blocks until a writer comes); `skipped_entries` lists
them, so the run reports them. Given as an input itself, such a file is refused.
A web archive's records that are no page (requests, metadata, images, ...) are counted as dropped
here, with a reason per kind.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import stat
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import pyarrow as pa
import pyarrow.parquet as pq
import zstandard
from pydantic import Field, field_validator

from data_prep.charset import REPLACEMENT, decode_utf8
from data_prep.sources import SOURCE
from data_prep.stage import HTML, ID, ORIGIN, TEXT, WARC_FIELDS, Decision, StageSpec, StepSpec, TaskContext
from data_prep.warc import Damage, record_outcome, warc_records
from pipeline.ground import storage
from pipeline.ground.errors import UserError
from pipeline.ground.records import BOM
from pipeline.ground.schema import Section

UTF8_ERRORS = "_utf8_errors"
JSONL_SUFFIXES = (".jsonl", ".ndjson", ".json")
WARC_SUFFIXES = (".warc", ".warc.gz")
WET_SUFFIXES = (".warc.wet", ".warc.wet.gz", ".wet", ".wet.gz")
WEB_KINDS = ("warc", "wet")
FORMATS = ".jsonl, .jsonl.gz, .jsonl.zst, .parquet, .txt, .warc, .warc.gz, .warc.wet.gz"
COMPRESSIONS = ("", ".gz", ".zst")
COMPRESSION_RATIO_GUESS = 4
SURROGATE = re.compile("[\ud800-\udfff]")
CHUNK = 1 << 16  # compressed bytes decoded at a time
RAW_KEEP = 4096  # bytes of a broken stretch kept in its quarantine record
MAX_ID_CHARS = 1024
SPECIAL_FILES = (
    (stat.S_ISFIFO, "FIFO"),
    (stat.S_ISSOCK, "socket"),
    (stat.S_ISCHR, "character device"),
    (stat.S_ISBLK, "block device"),
)


class ReadConfig(Section):
    """How input records map to documents."""

    text_field: str = Field("text", min_length=1, description="JSON/Parquet field with the text.")
    id_field: str = Field("id", min_length=1, description="Optional id field; else an id is derived.")
    max_record_mb: float = Field(64.0, gt=0, description="A record larger than this is quarantined without parsing.")
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
    kind: str  # "jsonl", "parquet", "txt", "warc" or "wet"
    label: str  # stable name used in origins and derived ids
    start: int = 0
    end: int | None = None


@dataclass(frozen=True)
class InputShard:
    pieces: tuple[InputPiece, ...]
    source: str | None = None  # the named source all its pieces belong to (None: no named sources)


@dataclass
class ReadBatch:
    """Documents as an Arrow table plus the quarantine and drop records of the same stretch of input."""

    table: pa.Table
    quarantined: list[dict[str, Any]] = field(default_factory=list)
    dropped: list[dict[str, Any]] = field(default_factory=list)


def _kind_of(path: Path) -> str | None:
    name = path.name.lower()
    if name.endswith(".parquet"):
        return "parquet"
    if name.endswith(".txt"):
        return "txt"
    if any(name.endswith(s + c) for s in JSONL_SUFFIXES for c in COMPRESSIONS):
        return "jsonl"
    if name.endswith(WET_SUFFIXES):
        return "wet"
    if name.endswith(WARC_SUFFIXES):
        return "warc"
    return None


def discover(inputs: Sequence[storage.Location]) -> list[InputPiece]:
    """Expand files and folders into whole-file pieces, sorted so every run sees one order."""
    if not inputs:
        raise UserError("no inputs: give --input PATH or set prep.inputs in the config")
    pieces: list[InputPiece] = []
    for root in inputs:
        if storage.is_remote(root):
            pieces += _discover_remote(str(root))
            continue
        root = Path(root)
        if root.is_dir():
            files = sorted(p for p in root.rglob("*") if p.is_file() and _kind_of(p) and not p.is_symlink())
            if not files:
                raise UserError(f"input folder {root} holds no file of a known format ({FORMATS})")
            for path in files:
                label = f"{root.name}/{path.relative_to(root).as_posix()}"
                pieces.append(InputPiece(str(path), _kind_of(path), label))  # type: ignore[arg-type]
        elif root.is_file():
            kind = _kind_of(root)
            if kind is None:
                raise UserError(f"input {root}: unknown format (expected {FORMATS})")
            pieces.append(InputPiece(str(root), kind, root.name))
        elif special := _special_kind(root):
            raise UserError(f"input {root} is a {special}, not a regular file: give a file or a folder of files")
        else:
            raise UserError(f"input {root} does not exist")
    return pieces


def _discover_remote(url: str) -> list[InputPiece]:
    """The pieces of an object, or of every object of a known format under a prefix, labelled as the same
    file or folder on disk would be (the same labels give the same document ids)."""
    found = storage.objects_under(url)
    if found is None:
        kind = _kind_of(Path(storage.name_of(url)))
        if kind is None:
            raise UserError(f"input {url}: unknown format (expected {FORMATS})")
        return [InputPiece(url, kind, storage.name_of(url))]
    prefix = url.rstrip("/") + "/"
    files = [(found_url, _kind_of(Path(storage.name_of(found_url)))) for found_url in found]
    pieces = [
        InputPiece(found_url, kind, f"{storage.name_of(url)}/{found_url.removeprefix(prefix)}")
        for found_url, kind in files
        if kind
    ]
    if not pieces:
        raise UserError(
            f"input {url} holds no object of a known format ({FORMATS})" if found else f"input {url} does not exist"
        )
    return pieces


def _special_kind(path: Path) -> str | None:
    """ "FIFO", "socket", ... for a path that is neither a regular file nor a folder (None otherwise, or gone)."""
    try:
        mode = path.stat().st_mode
    except OSError:
        return None
    return next((name for test, name in SPECIAL_FILES if test(mode)), None)


def skipped_entries(inputs: Sequence[storage.Location]) -> list[str]:
    """Entries of input folders that `discover` neither follows nor opens, each as "path (what it is)"."""
    entries: list[str] = []
    for root in map(Path, inputs):
        if root.is_dir():
            for path in sorted(root.rglob("*"), key=str):
                kind = "symbolic link" if path.is_symlink() else _special_kind(path)
                entries += [f"{path} ({kind})"] if kind else []
    return entries


def plan_shards(inputs: Sequence[storage.Location], shard_bytes: int, source: str | None = None) -> list[InputShard]:
    """Split inputs into shards of about `shard_bytes`; only plain JSONL files are cut. `source` tags them."""
    pieces: list[tuple[InputPiece, int]] = []
    for piece in discover(inputs):
        size = storage.size(storage.as_location(piece.path))
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
            shards.append(InputShard(tuple(current), source))
            current, current_bytes = [], 0
    if current:
        shards.append(InputShard(tuple(current), source))
    return shards


def derive_id(origin: str, text: str) -> str:
    """A stable id from where a record sits and what it says (same input -> same id)."""
    digest = hashlib.blake2b(origin.encode() + b"\0", digest_size=8)
    digest.update(text.encode("utf-8", "surrogatepass"))
    return digest.hexdigest()


def _scrub_surrogates(text: str) -> tuple[str, int]:
    """JSON escapes can smuggle lone surrogates, which are not UTF-8; treat them as invalid bytes."""
    try:
        text.encode("utf-8")
        return text, 0
    except UnicodeEncodeError:
        surrogates = SURROGATE.findall(text)
        return SURROGATE.sub(REPLACEMENT, text), len(surrogates)


def check_id(value: Any) -> str | None:
    """A record's id as text (None: derive one), or ValueError saying why it cannot be an id."""
    if value is None or value == "":
        return None
    if isinstance(value, bytes):
        raise ValueError("id is not valid UTF-8")
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise ValueError(f"an id must be a string or an integer, not {type(value).__name__}")
    doc_id = str(value)
    if len(doc_id) > MAX_ID_CHARS:
        raise ValueError(f"id of {len(doc_id):,} characters (limit {MAX_ID_CHARS:,})")
    if SURROGATE.search(doc_id):
        raise ValueError("id holds a lone surrogate (not valid Unicode)")
    return doc_id


class InputFailure(Exception):
    """The rest of a file cannot be read; it becomes one quarantine record saying where and why."""

    def __init__(self, reason: str, offset: int, error: str, raw: bytes = b"", **detail: Any) -> None:
        super().__init__(error)
        self.reason, self.offset, self.error, self.raw, self.detail = reason, offset, error, raw, detail


def _metadata_value(value: Any) -> str | None:
    """Kept fields travel as strings: text as it is, other JSON values in their JSON form."""
    if value is None or isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, sort_keys=True)


class _Batcher:
    """Collects documents, quarantine and drop records and cuts them into ReadBatches.

    A shard with web archives (`web`) gives every document the WARC columns and the `_html` flag,
    empty for its documents of other files, so that its batches share one schema.
    """

    offset = 0  # where the reader is in its current file, for a read error; kept across flushes

    def __init__(self, batch_size: int, keep_fields: list[str], web: bool = False) -> None:
        self.batch_size = batch_size
        self.keep_fields = keep_fields
        self.web = web
        fields = [*keep_fields, *(f for f in WARC_FIELDS if web and f not in keep_fields)]
        self.metadata: dict[str, list[str | None]] = {name: [] for name in fields}
        self.ids: list[str] = []
        self.texts: list[str] = []
        self.origins: list[str] = []
        self.errors: list[int] = []
        self.html: list[bool] = []
        self.quarantined: list[dict[str, Any]] = []
        self.dropped: list[dict[str, Any]] = []

    def add(
        self,
        origin: str,
        raw_id: Any,
        text: str,
        utf8_errors: int,
        raw: bytes,
        metadata: dict[str, Any] | None = None,
        page: dict[str, Any] | None = None,
        html: bool = False,
    ) -> None:
        """One document; `metadata` is its record (kept fields are taken from it), `page` the WARC
        columns of a web archive record, `html` whether `text` is still HTML."""
        try:
            doc_id = check_id(raw_id)
        except ValueError as exc:
            self.quarantine(origin, "bad_id", raw, error=str(exc))
            return
        self.ids.append(doc_id if doc_id else derive_id(origin, text))
        self.texts.append(text)
        self.origins.append(origin)
        self.errors.append(utf8_errors)
        self.html.append(html)
        for name, values in self.metadata.items():
            if page is not None:
                value = page.get(name)
            else:
                value = (metadata or {}).get(name) if name in self.keep_fields else None
            values.append(_metadata_value(value))

    def quarantine(self, origin: str, reason: str, raw: bytes, **detail: Any) -> None:
        self.quarantined.append({"origin": origin, "id": None, "reason": reason, "detail": detail, "raw": raw})

    def drop(self, origin: str, doc_id: str, reason: str, **detail: Any) -> None:
        """An input record that is no document by design (a web archive's request record, an image)."""
        self.dropped.append({"origin": origin, "id": doc_id, "reason": reason, "detail": detail})

    def full(self) -> bool:
        return len(self.ids) + len(self.quarantined) + len(self.dropped) >= self.batch_size

    def flush(self) -> ReadBatch:
        table = pa.table(
            {
                ID: pa.array(self.ids, pa.string()),
                TEXT: pa.array(self.texts, pa.string()),
                ORIGIN: pa.array(self.origins, pa.string()),
                UTF8_ERRORS: pa.array(self.errors, pa.int32()),
            }
            | ({HTML: pa.array(self.html, pa.bool_())} if self.web else {})
            | {name: pa.array(values, pa.string()) for name, values in self.metadata.items()}
        )
        batch = ReadBatch(table, self.quarantined, self.dropped)
        self.__init__(self.batch_size, self.keep_fields, self.web)  # type: ignore[misc]
        return batch


class _Decompressed(io.RawIOBase):
    """A .gz or .zst file as one stream across all its members or frames.

    A corrupt or truncated stream is not raised at once but kept in `failure`, and the stream
    ends there, so the lines before the damage are read and the damage is reported with them.
    Python's own readers would raise mid-line (losing the line) or, for zstd, stop silently at
    the end of a truncated frame. Deflate can decode damage into garbage without noticing; the
    member's CRC then catches it at the member's end, after the garbage lines (mostly quarantined
    as malformed JSON) have been read.
    """

    def __init__(self, path: str, new_decoder: Callable[[], Any]) -> None:
        self._file = storage.open_binary(storage.as_location(path))
        self._new_decoder = new_decoder
        self._decoder: Any = None
        self._input = b""
        self._output = memoryview(b"")
        self.failure: tuple[str, str] | None = None  # (reason, error)

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        self._file.close()
        super().close()

    @property
    def compressed_offset(self) -> int:
        return self._file.tell() - len(self._input)

    def readinto(self, buffer: Any) -> int:
        while not self._output and self.failure is None and self._decode_more():
            pass
        n = min(len(buffer), len(self._output))
        buffer[:n] = self._output[:n]
        self._output = self._output[n:]
        return n

    def _decode_more(self) -> bool:
        """Decode the next stretch of the file into `_output`; False at its end (or damage)."""
        if not self._input:
            self._input = self._file.read(CHUNK)
            if not self._input:
                if self._decoder is not None and not self._decoder.eof:
                    self.failure = ("truncated_input", "the file ends inside a compressed stream")
                return False
        if self._decoder is None or self._decoder.eof:
            if self._decoder is not None:
                self._input = self._input.lstrip(b"\0")  # padding between gzip members
                if not self._input:
                    return True
            self._decoder = self._new_decoder()
        try:
            self._output = memoryview(self._decoder.decompress(self._input))
        except (zlib.error, zstandard.ZstdError) as exc:
            self.failure = ("corrupt_frame", f"{exc} (compressed stream read to byte {self.compressed_offset:,})")
            return False
        self._input = self._decoder.unused_data if self._decoder.eof else b""
        return True


def _open_stream(path: str) -> IO[bytes]:
    if path.endswith(".gz"):
        return io.BufferedReader(_Decompressed(path, lambda: zlib.decompressobj(16 + zlib.MAX_WBITS)))
    if path.endswith(".zst"):
        return io.BufferedReader(_Decompressed(path, lambda: zstandard.ZstdDecompressor().decompressobj()))
    return storage.open_binary(storage.as_location(path))


def _check_stream(stream: IO[bytes], offset: int, partial: bytes) -> None:
    """At the end of a stream: raise if it ended in damage, with the cut-off line as the raw bytes."""
    failure = getattr(stream.raw, "failure", None)  # type: ignore[attr-defined]
    if failure is not None:
        raise InputFailure(failure[0], offset, failure[1], partial[:RAW_KEEP])


def _lines(piece: InputPiece, max_bytes: int, out: _Batcher) -> Iterator[tuple[int, bytes, bool]]:
    """Yield (offset, line, too_large) for lines that start inside the piece's range."""
    with _open_stream(piece.path) as stream:
        offset = 0
        if piece.start > 0:
            stream.seek(piece.start - 1)
            offset = piece.start - 1 + len(stream.readline())  # skip the line owned by the previous range
        while piece.end is None or offset < piece.end:
            out.offset = offset
            line = stream.readline(max_bytes + 1)
            start = offset
            offset += len(line)
            if start == 0 and line.startswith(BOM):
                line = line[len(BOM) :]
            if len(line) > max_bytes and not line.endswith(b"\n"):
                head = line[:RAW_KEEP]
                while line and not line.endswith(b"\n"):
                    line = stream.readline(max_bytes)
                    offset += len(line)
                _check_stream(stream, start, head)
                yield start, head, True
                continue
            if not line.endswith(b"\n"):
                _check_stream(stream, start, line)
            if not line:
                return
            yield start, line, False


def _read_jsonl(piece: InputPiece, cfg: ReadConfig, out: _Batcher) -> Iterator[ReadBatch]:
    max_bytes = int(cfg.max_record_mb * 2**20)
    for offset, line, too_large in _lines(piece, max_bytes, out):
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
    except RecursionError:
        out.quarantine(origin, "nesting_too_deep", line[:RAW_KEEP], size=len(line))
        return
    except ValueError as exc:  # JSONDecodeError, or an integer too long to convert
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
    out.add(origin, record.get(cfg.id_field), text, bad_bytes + bad_escapes, line, record)


def _read_txt(piece: InputPiece, cfg: ReadConfig, out: _Batcher) -> Iterator[ReadBatch]:
    max_bytes = int(cfg.max_record_mb * 2**20)
    with storage.open_binary(storage.as_location(piece.path)) as handle:
        raw = handle.read(max_bytes + 1)
    if len(raw) > max_bytes:
        out.quarantine(piece.label, "record_too_large", raw[:RAW_KEEP], limit_mb=cfg.max_record_mb)
    else:
        text, bad_bytes = decode_utf8(raw.removeprefix(BOM))
        out.add(piece.label, None, text, bad_bytes, raw)
    if out.full():
        yield out.flush()


def _textual(kind: pa.DataType) -> bool:
    if pa.types.is_dictionary(kind):
        kind = kind.value_type
    return (
        pa.types.is_string(kind)
        or pa.types.is_large_string(kind)
        or pa.types.is_binary(kind)
        or pa.types.is_large_binary(kind)
    )


def _parquet_damage(exc: Exception) -> bool:
    """Arrow reports a damaged file as ArrowException or as an OSError without an errno."""
    return (
        isinstance(exc, pa.ArrowException)
        and not isinstance(exc, OSError)
        or isinstance(exc, OSError)
        and exc.errno is None
    )


def _read_parquet(piece: InputPiece, cfg: ReadConfig, out: _Batcher) -> Iterator[ReadBatch]:
    try:
        parquet = pq.ParquetFile(storage.open_binary(piece.path) if storage.is_remote(piece.path) else piece.path)
    except (pa.ArrowException, OSError) as exc:
        if not _parquet_damage(exc):
            raise
        raise InputFailure("bad_parquet", 0, str(exc)[:300]) from None
    names = parquet.schema_arrow.names
    if cfg.text_field not in names:  # one file of another shape (a prep output's dropped/) must not stop the run
        raise InputFailure(
            "no_text_column",
            0,
            f"no column {cfg.text_field!r} (set prep.read.text_field)",
            rows=parquet.metadata.num_rows,
            columns=names[:50],
        )
    textual = _textual(parquet.schema_arrow.field(cfg.text_field).type)
    kept = [name for name in cfg.keep_fields if name in names]
    columns = [cfg.text_field] + ([cfg.id_field] if cfg.id_field in names else []) + kept
    row = 0
    for group in range(parquet.num_row_groups):
        group_end = row + parquet.metadata.row_group(group).num_rows
        try:
            for batch in parquet.iter_batches(batch_size=out.batch_size, row_groups=[group], columns=columns):
                yield from _parquet_rows(piece, cfg, batch, textual, row, kept, out)
                row += batch.num_rows
        except (pa.ArrowException, OSError) as exc:
            if not _parquet_damage(exc):
                raise
            out.quarantine(
                f"{piece.label}:{row}",
                "bad_parquet",
                b"",
                file=piece.label,
                row_group=group,
                rows=group_end - row,
                error=str(exc)[:300],
            )
            row = group_end


def _values(column: pa.Array, errors: str = "strict") -> list[Any]:
    """A column's values; damaged UTF-8 in a string column stays bytes (strict: an id that cannot be
    one) or is replaced (a metadata field), instead of failing the whole batch."""
    if not _textual(column.type) or pa.types.is_binary(column.type) or pa.types.is_large_binary(column.type):
        return column.to_pylist()
    values: list[Any] = []
    for raw in column.cast(pa.binary()).to_pylist():
        try:
            values.append(None if raw is None else raw.decode())
        except UnicodeDecodeError:
            values.append(raw if errors == "strict" else raw.decode(errors=errors))
    return values


def _parquet_rows(
    piece: InputPiece, cfg: ReadConfig, batch: pa.RecordBatch, textual: bool, first: int, kept: list[str], out: _Batcher
) -> Iterator[ReadBatch]:
    column = batch.column(cfg.text_field)
    texts = column.cast(pa.binary()).to_pylist() if textual else column.to_pylist()
    ids = _values(batch.column(cfg.id_field)) if cfg.id_field in batch.schema.names else [None] * len(texts)
    fields_by_name = {name: _values(batch.column(name), errors="replace") for name in kept}
    metadata = (
        [dict(zip(fields_by_name, values)) for values in zip(*fields_by_name.values())] if kept else [None] * len(texts)
    )
    for row, (raw, doc_id, fields) in enumerate(zip(texts, ids, metadata), first):
        origin = f"{piece.label}:{row}"
        if raw is None:
            out.quarantine(origin, "missing_text", b"", field=cfg.text_field)
        elif not textual:
            shown = json.dumps(raw, default=str, ensure_ascii=False)[:RAW_KEEP].encode()
            out.quarantine(origin, "text_not_string", shown, type=str(column.type))
        else:
            text, bad_bytes = decode_utf8(raw)
            out.add(origin, doc_id, text, bad_bytes, raw, fields)
        if out.full():
            yield out.flush()


def _read_web(piece: InputPiece, cfg: ReadConfig, out: _Batcher) -> Iterator[ReadBatch]:
    """A WARC or WET file: pages and texts become documents, other records drops, damage quarantine."""
    with storage.open_binary(storage.as_location(piece.path)) as handle:
        for item in warc_records(handle, int(cfg.max_record_mb * 2**20)):
            if isinstance(item, Damage):
                offset = int(item.offset) if item.offset.isdigit() else item.offset
                out.quarantine(
                    f"{piece.label}:{item.offset}",
                    item.reason,
                    item.raw,
                    file=piece.label,
                    offset=offset,
                    error=item.error,
                    **item.detail,
                )
                continue
            outcome = record_outcome(*item)
            origin = f"{piece.label}:{outcome.offset}"
            known = {name: value for name, value in outcome.fields.items() if value is not None}
            if outcome.text is not None:
                doc_id = derive_id(outcome.record_id, "") if outcome.record_id else None
                out.add(origin, doc_id, outcome.text, outcome.utf8_errors, b"", page=outcome.fields, html=outcome.html)
            elif outcome.quarantine:
                out.quarantine(origin, outcome.reason, outcome.raw, **known, **outcome.detail)  # type: ignore[arg-type]
            else:
                out.drop(
                    origin,
                    derive_id(outcome.record_id or origin, ""),
                    outcome.reason,  # type: ignore[arg-type]
                    **known,
                    **outcome.detail,
                )
            if out.full():
                yield out.flush()


READERS = {"jsonl": _read_jsonl, "txt": _read_txt, "parquet": _read_parquet, "warc": _read_web, "wet": _read_web}


def read_shard(shard: InputShard, cfg: ReadConfig, batch_size: int) -> Iterator[ReadBatch]:
    """Stream one shard as ReadBatches of at most `batch_size` records."""
    out = _Batcher(batch_size, cfg.keep_fields, web=any(piece.kind in WEB_KINDS for piece in shard.pieces))
    for piece in shard.pieces:
        out.offset = 0
        try:
            yield from READERS[piece.kind](piece, cfg, out)
        except InputFailure as exc:
            out.quarantine(
                f"{piece.label}:{exc.offset}",
                exc.reason,
                exc.raw,
                file=piece.label,
                offset=exc.offset,
                error=exc.error,
                **exc.detail,
            )
        except OSError as exc:
            out.quarantine(
                f"{piece.label}:{out.offset}",
                "unreadable_file",
                b"",
                file=piece.label,
                offset=out.offset,
                error=exc.strerror or str(exc),
            )
    if out.ids or out.quarantined or out.dropped:
        yield out.flush()


def run_read(ctx: TaskContext) -> dict[str, Any]:
    """The first step: read input shard `ctx.task` into documents, quarantining what cannot be one."""
    from data_prep.books import DocBooks

    books = DocBooks(ctx.stage, ctx.settings.keep_fields)
    source = ctx.shards[ctx.task].source
    for batch in read_shard(ctx.shards[ctx.task], ctx.settings, ctx.config.batch_size):
        table = batch.table
        if source is not None:
            table = table.append_column(SOURCE, pa.array([source] * table.num_rows, pa.string()))
            for record in batch.quarantined + batch.dropped:
                record["detail"] = record["detail"] | {SOURCE: source}
        books.quarantine_raw(batch.quarantined)
        books.drop_raw(batch.dropped)
        books.apply(table, Decision(table))
        ctx.report(batch.table.num_rows + len(batch.quarantined) + len(batch.dropped))
    return books.write(ctx.work, ctx.step, ctx.task, None)


STAGE = StageSpec("read", ReadConfig, (StepSpec("", run_read, makes_docs=True),))
