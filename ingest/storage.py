"""Where steppe's files live: the local data dir or an S3-compatible bucket, behind one seam.

``Storage`` is a root inside a ``pyarrow.fs`` filesystem plus the checks every key goes
through. ``open_storage(None, data_dir)`` is the embedded default (the data dir on local disk,
the same layout as always); ``open_storage("s3://bucket/prefix", data_dir)`` puts the files
below ``prefix`` in ``bucket``.

Why pyarrow's ``S3FileSystem`` rather than fsspec/s3fs: pyarrow is already a core dependency
(it writes and reads every Parquet file), its S3 client is the AWS C++ SDK with multipart
uploads and streamed reads, ``pyarrow.parquet`` reads and writes through it without a second
buffer layer, and ``query/artifacts.py`` already speaks ``pyarrow.fs``. s3fs would add aiobotocore,
botocore and an event loop of its own for no feature we need. The endpoint and credentials come
from the standard variables: ``AWS_ENDPOINT_URL`` (MinIO, moto, any S3-compatible store; unset
means AWS), ``AWS_REGION`` / ``AWS_DEFAULT_REGION``, and the AWS SDK's credential chain
(``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``, profiles, instance
roles). Nothing here logs a credential.

DuckDB reads the same objects through the same filesystem: ``register_duckdb`` wraps it with
fsspec's ``ArrowFSWrapper`` (a thin adapter, no second S3 client) and registers it on a
connection. DuckDB's own httpfs extension is downloaded at first use (``INSTALL httpfs``), which
an offline server cannot do, and it would need its own copy of the credentials.

Keys are POSIX paths relative to the root. ``key`` refuses absolute paths, ``..``, empty or
dot names, backslashes and control characters, so no key reaches outside the root, and on a
local disk no symlink inside the root may lead out of it either.
"""

from __future__ import annotations

import os
import re
import threading
import urllib.parse
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import pyarrow.fs as pafs

__all__ = [
    "CHUNK_BYTES",
    "Storage",
    "StorageError",
    "open_storage",
    "s3_filesystem",
]

#: Streaming granularity of uploads and downloads: at most one chunk is in memory.
CHUNK_BYTES = 1 << 20
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")
_BUCKET_RE = re.compile(r"[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]")


class StorageError(ValueError):
    """A storage URI or a key that breaks a rule; the message names the value and the rule."""


def s3_filesystem(environ: dict[str, str] | None = None) -> pafs.S3FileSystem:
    """An S3 filesystem configured from the standard AWS_* variables (see the module doc)."""
    env = os.environ if environ is None else environ
    options: dict[str, Any] = {}
    endpoint = env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL")
    if endpoint:
        parsed = urllib.parse.urlsplit(endpoint)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise StorageError(f"AWS_ENDPOINT_URL={endpoint!r}: must be an http:// or https:// URL")
        options["endpoint_override"] = parsed.netloc + parsed.path.rstrip("/")
        options["scheme"] = parsed.scheme
    region = env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION")
    if region:
        options["region"] = region
    if env.get("AWS_ACCESS_KEY_ID") and env.get("AWS_SECRET_ACCESS_KEY"):
        options["access_key"] = env["AWS_ACCESS_KEY_ID"]
        options["secret_key"] = env["AWS_SECRET_ACCESS_KEY"]
        if env.get("AWS_SESSION_TOKEN"):
            options["session_token"] = env["AWS_SESSION_TOKEN"]
    return pafs.S3FileSystem(**options)


@dataclass(frozen=True)
class Storage:
    """Files below ``root`` of ``fs``. ``local_root`` is set for the local disk (it enables the
    symlink check and fsync on commit). Blocking: call from worker threads, not the loop."""

    fs: pafs.FileSystem
    root: str
    uri: str
    local_root: Path | None = None

    @property
    def is_local(self) -> bool:
        return self.local_root is not None

    def check(self) -> None:
        """Fail fast, naming the storage, when its bucket (or folder) is missing or the
        endpoint cannot be reached: better at startup than at the first upload."""
        bucket = self.root.split("/", 1)[0]
        try:
            info = self.fs.get_file_info(self.root if self.is_local else bucket)
        except OSError as exc:
            raise StorageError(f"storage {self.uri}: cannot be reached: {exc}") from exc
        if info.type != pafs.FileType.Directory:
            raise StorageError(f"storage {self.uri}: bucket {bucket!r} does not exist")

    def key(self, relative: str) -> str:
        """The filesystem path of ``relative`` (POSIX, relative to the root), checked."""
        if not isinstance(relative, str) or not relative:
            raise StorageError(f"storage key {relative!r}: must be a non-empty relative path")
        if _CONTROL_RE.search(relative) or "\\" in relative:
            raise StorageError(
                f"storage key {relative!r}: must not contain backslashes or control characters"
            )
        if relative.startswith("/"):
            raise StorageError(f"storage key {relative!r}: must be relative, not absolute")
        parts = relative.split("/")
        if any(part in ("", ".", "..") for part in parts):
            raise StorageError(
                f"storage key {relative!r}: no empty, '.' or '..' components allowed"
            )
        path = f"{self.root}/{relative}" if self.root else relative
        if self.local_root is not None:
            real = Path(os.path.realpath(path))
            if real != self.local_root and self.local_root not in real.parents:
                raise StorageError(f"storage key {relative!r}: resolves outside the storage root")
        return path

    def sub(self, relative: str) -> pafs.SubTreeFileSystem:
        """A filesystem rooted at folder ``relative`` (for ``query/artifacts.py``)."""
        path = self.key(relative)
        if self.local_root is not None:
            Path(path).mkdir(parents=True, exist_ok=True)
        return pafs.SubTreeFileSystem(path, self.fs)

    def put_file(self, local: Path, relative: str) -> int:
        """Copy local file ``local`` to ``relative``, streamed; returns the bytes copied. On S3
        the object appears whole or not at all (a PUT or a completed multipart upload); on a
        local disk it is written to a temp name, fsynced and renamed."""
        target = self.key(relative)
        if self.local_root is not None:
            Path(target).parent.mkdir(parents=True, exist_ok=True)
            temp = Path(target).with_name(f".{Path(target).name}.tmp")
            copied = self._copy(local, str(temp))
            with open(temp, "rb") as handle:
                os.fsync(handle.fileno())
            os.replace(temp, target)
            return copied
        return self._copy(local, target)

    def _copy(self, local: Path, target: str) -> int:
        copied = 0
        with open(local, "rb") as source, self.fs.open_output_stream(target) as sink:
            while chunk := source.read(CHUNK_BYTES):
                sink.write(chunk)
                copied += len(chunk)
        return copied

    def write_stream(self, relative: str, chunks: Iterator[bytes]) -> int:
        """Write ``relative`` from an iterator of chunks (never the whole object in memory)."""
        target = self.key(relative)
        if self.local_root is not None:
            Path(target).parent.mkdir(parents=True, exist_ok=True)
        written = 0
        with self.fs.open_output_stream(target) as sink:
            for chunk in chunks:
                sink.write(chunk)
                written += len(chunk)
        return written

    def read_chunks(self, relative: str) -> Iterator[bytes]:
        """The bytes of ``relative``, CHUNK_BYTES at a time."""
        with self.fs.open_input_stream(self.key(relative)) as source:
            while chunk := source.read(CHUNK_BYTES):
                yield chunk

    def open_input(self, relative: str) -> BinaryIO:
        """A random-access file (Parquet footers are read from the end)."""
        handle: BinaryIO = self.fs.open_input_file(self.key(relative))
        return handle

    def list(self, folder: str) -> list[tuple[str, int]]:
        """(name, size) of the files directly in ``folder``, sorted; [] if it does not exist."""
        selector = pafs.FileSelector(self.key(folder), allow_not_found=True, recursive=False)
        found = [
            (info.base_name, int(info.size or 0))
            for info in self.fs.get_file_info(selector)
            if info.type == pafs.FileType.File
        ]
        return sorted(found)

    def exists(self, relative: str) -> bool:
        return bool(self.fs.get_file_info(self.key(relative)).type == pafs.FileType.File)

    def delete(self, relative: str) -> None:
        """Delete file ``relative``; a missing file is not an error."""
        path = self.key(relative)
        if self.fs.get_file_info(path).type == pafs.FileType.File:
            self.fs.delete_file(path)

    def url(self, relative: str) -> str:
        """What DuckDB's ``read_parquet`` takes for ``relative`` (after ``register_duckdb``)."""
        path = self.key(relative)
        return path if self.local_root is not None else f"s3://{path}"

    def register_duckdb(self, con: Any) -> None:
        """Let ``con`` (a DuckDB connection) read ``s3://`` URLs through this filesystem. A
        no-op on a local disk (DuckDB reads local files itself, as fast as ever)."""
        if self.local_root is not None:
            return
        # The wrapper's protocol is the Arrow filesystem's type name, "s3": DuckDB routes
        # every s3:// URL through it.
        con.register_filesystem(_duckdb_wrapper(self.fs))


#: Object infos the DuckDB adapter remembers (a few hundred bytes each).
_INFO_CACHE_ENTRIES = 16_384


def _duckdb_wrapper(fs: pafs.FileSystem) -> Any:
    """fsspec's ArrowFSWrapper over ``fs``, remembering the info (size, mtime) of files it
    has seen. DuckDB asks for it up to four times per file and query (glob, exists, size,
    modified: one HEAD each on S3); the files it reads (metrics, tiers) are immutable once
    written, so one HEAD per file is enough. A deleted file is then found missing on open."""
    from fsspec.implementations.arrow import ArrowFSWrapper

    class ImmutableFiles(ArrowFSWrapper):  # type: ignore[misc]
        def __init__(self, wrapped: pafs.FileSystem) -> None:
            super().__init__(wrapped)
            self._infos: OrderedDict[str, dict[str, Any]] = OrderedDict()
            self._infos_lock = threading.Lock()

        def info(self, path: str, **kwargs: Any) -> dict[str, Any]:
            key = self._strip_protocol(path)
            with self._infos_lock:
                hit = self._infos.get(key)
            if hit is not None:
                return dict(hit)
            found: dict[str, Any] = super().info(path, **kwargs)
            if found.get("type") == "file":
                with self._infos_lock:
                    self._infos[key] = dict(found)
                    while len(self._infos) > _INFO_CACHE_ENTRIES:
                        self._infos.popitem(last=False)
            return found

    return ImmutableFiles(fs)


def open_storage(uri: str | None, data_dir: Path, environ: dict[str, str] | None = None) -> Storage:
    """The storage ``uri`` names: None or ``""`` is the data dir itself (the default);
    ``s3://bucket/prefix`` a prefix in a bucket; ``file:///path`` another local folder."""
    if not uri:
        root = Path(data_dir).expanduser().resolve()
        root.mkdir(parents=True, exist_ok=True)
        return Storage(pafs.LocalFileSystem(), str(root), root.as_uri(), root)
    parsed = urllib.parse.urlsplit(uri)
    if parsed.scheme == "file":
        root = Path(urllib.parse.unquote(parsed.path)).expanduser().resolve()
        root.mkdir(parents=True, exist_ok=True)
        return Storage(pafs.LocalFileSystem(), str(root), root.as_uri(), root)
    if parsed.scheme not in ("s3", "s3a"):
        raise StorageError(f"--storage {uri!r}: must be s3://bucket/prefix or file:///path")
    bucket = parsed.netloc
    if not _BUCKET_RE.fullmatch(bucket):
        raise StorageError(
            f"--storage {uri!r}: bucket {bucket!r} must be 3-63 lowercase letters, digits, "
            "dots or hyphens"
        )
    if parsed.query or parsed.fragment or "@" in uri:
        raise StorageError(
            f"--storage {uri!r}: no credentials, query or fragment (use the AWS_* variables)"
        )
    prefix = parsed.path.strip("/")
    if prefix and any(part in ("", ".", "..") for part in prefix.split("/")):
        raise StorageError(f"--storage {uri!r}: prefix must not hold empty, '.' or '..' parts")
    key_root = f"{bucket}/{prefix}" if prefix else bucket
    return Storage(s3_filesystem(environ), key_root, f"s3://{key_root}")
