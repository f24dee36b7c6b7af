"""Object storage beside local paths: one layer on fsspec, so an input, a shards folder or a checkpoint
location may be `s3://bucket/prefix` (or `gs://` with gcsfs installed).

A location is a `Path` for a local file and a `str` for a URL: `Path("s3://b/k")` would fold the
`//` into one slash, so URLs never become paths. Local paths go through the standard library as
before; fsspec and s3fs are imported only when a URL is used, and a missing s3fs is one line
naming the extra to install. Credentials come from where the cloud's own tools look (AWS_*
variables, ~/.aws/config and credentials, an instance role); the endpoint from `storage.endpoint_url`
or AWS_ENDPOINT_URL. Neither is ever printed: errors name the bucket and the kind of refusal only.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Annotated, Any, TypeGuard

from pydantic import BeforeValidator, Field

from pipeline.ground.atomic import atomic_path
from pipeline.ground.errors import UserError
from pipeline.ground.schema import Section

SCHEMES = {"s3": "s3fs", "gs": "gcsfs", "gcs": "gcsfs"}  # scheme -> the fsspec package that serves it
Location = str | Path
# A config value that is a location: URLs kept as strings (a Path would fold their `//`), the rest paths.
LocationValue = Annotated[
    Path | str, BeforeValidator(lambda value: as_location(value) if isinstance(value, str) else value)
]
READ_BLOCK = 8 << 20  # bytes fetched per ranged GET when a file is read piece by piece


class StorageConfig(Section):
    """How to reach object storage; credentials are never config: they come from the standard places."""

    endpoint_url: str | None = Field(
        None, description="S3-compatible endpoint (MinIO, Ceph, R2...); default AWS_ENDPOINT_URL, else AWS itself."
    )
    options: dict[str, Any] = Field(
        default_factory=dict,
        description="Further keyword arguments of the fsspec "
        "filesystem (s3fs.S3FileSystem: e.g. {requester_pays: true}).",
    )
    upload_retries: int = Field(
        5,
        ge=0,
        description="Retries of a failed checkpoint upload (backoff 2, 4, 8... s) before it is reported as failed.",
    )


_config = StorageConfig()


def configure(config: StorageConfig) -> None:
    """Set the process's storage settings (the CLI does, from the loaded config): fsspec keeps one client
    per process and settings, so these are process-wide too."""
    global _config
    _config = config


def settings() -> StorageConfig:
    return _config


def is_remote(location: Location | None) -> TypeGuard[str]:
    return isinstance(location, str) and location.partition("://")[0] in SCHEMES and "://" in location


def as_location(text: str | Path) -> Location:
    """A command-line or config value as a location: URLs stay strings, the rest become paths."""
    return text if is_remote(text) else Path(text)


def absolute(location: Location) -> Location:
    """A location that means the same from any folder: a URL as it is, a path resolved."""
    return location if is_remote(location) else Path(location).resolve()


def join(base: Location, *parts: str) -> Location:
    if is_remote(base):
        return join_url(base, *parts)
    return Path(base).joinpath(*parts)


def join_url(url: str, *parts: str) -> str:
    """`join` where `base` is known to be a URL: typed as the string a URL joined is."""
    return "/".join([url.rstrip("/"), *parts])


def name_of(location: Location) -> str:
    return str(location).rstrip("/").rsplit("/", 1)[-1]


def bucket_of(url: str) -> str:
    return url.partition("://")[2].split("/", 1)[0]


def _filesystem(url: str) -> tuple[Any, str]:
    """The fsspec filesystem of `url`'s scheme (imported now: local paths never need it) and the path in it."""
    scheme = url.partition("://")[0]
    options = dict(_config.options)
    if scheme == "s3":
        endpoint = _config.endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        options = {"use_listings_cache": False, **({"endpoint_url": endpoint} if endpoint else {}), **options}
    try:
        import fsspec

        fs = fsspec.filesystem(scheme, **options)
    except ImportError:
        raise UserError(
            f"{url}: object storage needs {SCHEMES[scheme]}: pip install 'crucible[cloud]'"
            + ("" if scheme == "s3" else " gcsfs")
        ) from None
    return fs, url.partition("://")[2]


@contextmanager
def _refusals(url: str) -> Iterator[None]:
    """A refused or unreachable store as one line naming the bucket; a missing object stays FileNotFoundError."""
    try:
        yield
    except (FileNotFoundError, UserError):
        raise
    except PermissionError as exc:
        reason = (str(exc).splitlines() or ["access denied"])[0][:120]
        raise UserError(
            f"access to bucket {bucket_of(url)} refused ({reason}): check the credentials "
            f"(AWS_ACCESS_KEY_ID/AWS_PROFILE, ~/.aws/credentials) and storage.endpoint_url"
        ) from None
    except Exception as exc:
        kind = type(exc).__name__
        if kind == "NoCredentialsError":
            raise UserError(
                f"no credentials for bucket {bucket_of(url)}: set AWS_ACCESS_KEY_ID and "
                f"AWS_SECRET_ACCESS_KEY, or AWS_PROFILE"
            ) from None
        if "Connect" in kind or isinstance(exc, (ConnectionError, TimeoutError)):
            raise StorageUnavailable(
                f"cannot reach the store of bucket {bucket_of(url)} ({kind}); "
                f"check the network and storage.endpoint_url, then rerun"
            ) from None
        raise


class StorageUnavailable(UserError):
    """The store did not answer (after the client's own retries)."""


def exists(location: Location) -> bool:
    if not is_remote(location):
        return Path(location).exists()
    fs, path = _filesystem(location)
    with _refusals(location):
        return fs.exists(path)


def listing(location: Location) -> dict[str, int]:
    """The names directly under a folder or prefix, with their sizes (0 for a folder); {} when there is none."""
    if not is_remote(location):
        folder = Path(location)
        entries = sorted(folder.iterdir()) if folder.is_dir() else []
        return {p.name: 0 if p.is_dir() else p.stat().st_size for p in entries}
    fs, path = _filesystem(location)
    with _refusals(location):
        try:
            entries = fs.ls(path, detail=True)
        except FileNotFoundError:
            return {}
    return {
        name_of(e["name"]): 0 if e["type"] == "directory" else e["size"]
        for e in entries
        if e["name"].rstrip("/") != path.rstrip("/")
    }


def identity(location: Location) -> tuple[Any, ...]:
    """What changes when the content does: (size, mtime) of a file; (size, ETag or version) of an object."""
    if not is_remote(location):
        stat = Path(location).stat()
        return stat.st_size, stat.st_mtime_ns
    fs, path = _filesystem(location)
    with _refusals(location):
        info = fs.info(path)
    return info["size"], str(info.get("VersionId") or info.get("ETag") or info.get("etag") or info.get("md5Hash"))


def size(location: Location) -> int:
    return identity(location)[0]


def objects_under(url: str) -> list[str] | None:
    """Every object under a prefix (a folder of object storage), as sorted URLs; None when `url` is one object,
    [] when nothing is there."""
    fs, path = _filesystem(url)
    scheme = url.partition("://")[0]
    with _refusals(url):
        if fs.isfile(path):
            return None
        return sorted(f"{scheme}://{found}" for found in fs.find(path))


def open_binary(location: Location) -> IO[bytes]:
    """A seekable reader; on object storage each read fetches only the bytes asked for (ranged GETs of
    READ_BLOCK), so a task that reads its piece of a large file never downloads the rest."""
    if not is_remote(location):
        return open(location, "rb")
    fs, path = _filesystem(location)
    with _refusals(location):
        return io.BufferedReader(fs.open(path, "rb", block_size=READ_BLOCK, cache_type="readahead"), 1 << 20)


def download(url: str, local: Path) -> Path:
    """Copy an object to `local`, published by one rename: a cut-off download leaves no file."""
    fs, path = _filesystem(url)
    with _refusals(url), atomic_path(local) as tmp:
        fs.get_file(path, str(tmp))
    return local


def upload(local: Path, url: str) -> None:
    fs, path = _filesystem(url)
    with _refusals(url):
        fs.put_file(str(local), path)


def remove(url: str) -> None:
    """Remove an object, or a prefix and all under it; nothing there is no error."""
    fs, path = _filesystem(url)
    with _refusals(url):
        try:
            fs.rm(path, recursive=True)
        except FileNotFoundError:
            pass
