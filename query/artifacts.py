"""Run artifacts: a store over ``pyarrow.fs`` rooted at ``<data dir>/artifacts`` and its HTTP
routes (MLflow's artifact proxy, MLflow's ``artifacts/list`` and steppe's own JSON API).

Every path from a request is checked before it reaches the filesystem: relative, no ``..``,
no backslashes or control characters, and (on a local disk) no symlink leading out of the
root. Files stream through in chunks both ways; nothing here holds a whole artifact in memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import mimetypes
import os
import posixpath
import re
import urllib.parse
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import pyarrow.fs as pafs
from aiohttp import web

from steppe.errors import InvalidParameterValue, ResourceDoesNotExist
from steppe.ingest.catalog import Catalog, RunRecord
from steppe.query.jsonenc import dumps

#: begin_write's temporary names: ``.<name>.<uuid4 hex>.part``.
_TEMP_NAME = re.compile(r"\..+\.[0-9a-f]{32}\.part", re.DOTALL)

__all__ = [
    "ARTIFACT_PROXY_PREFIXES",
    "CHUNK_BYTES",
    "ArtifactEntry",
    "ArtifactStore",
    "add_artifact_routes",
    "clean_path",
    "run_artifact_root",
]

T = TypeVar("T")

#: Read and write granularity: an upload or download holds at most one chunk in memory.
CHUNK_BYTES = 1 << 20
#: Where MLflow's client finds the artifact proxy (``mlflow-artifacts:/...`` URIs).
ARTIFACT_PROXY_PREFIXES = (
    "/api/2.0/mlflow-artifacts/artifacts",
    "/ajax-api/2.0/mlflow-artifacts/artifacts",
)
_TRACKING_PREFIXES = ("/api/2.0/mlflow", "/ajax-api/2.0/mlflow")
_STEPPE_PREFIX = "/api/steppe/v1"
_SCHEME = "mlflow-artifacts:"
_DRIVE_RE = re.compile(r"^[A-Za-z]:")
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")
#: One name in an artifact path (the OS allows 255 bytes; an upload's temporary name adds
#: 39), and a whole path (well inside the OS's PATH_MAX with the store's own root).
MAX_NAME_BYTES = 200
MAX_PATH_BYTES = 1024
#: Types a browser may show inline. Anything else (HTML, SVG, JS, ...) is sent as an opaque
#: download, so an uploaded file can never run script on this origin. Audio and video are
#: played by media elements only (the UI's previews), never parsed as a document.
_INLINE_TYPES = frozenset(
    {
        "text/plain",
        "text/csv",
        "application/json",
        "image/png",
        "image/jpeg",
        "image/gif",
        "image/webp",
        "image/bmp",
        "audio/x-wav",
        "audio/wav",
        "audio/mpeg",
        "audio/ogg",
        "audio/flac",
        "audio/mp4",
        "video/mp4",
        "video/webm",
        "video/ogg",
    }
)
_TEXT_SUFFIXES = (".txt", ".log", ".md", ".yaml", ".yml", ".py", ".cfg", ".ini", ".toml")


def clean_path(path: object, field: str = "path", *, allow_root: bool = False) -> str:
    """``path`` as a normalised relative POSIX path ("" is the root, if allowed).

    Refused with InvalidParameterValue: non-strings, absolute paths (``/x``, ``C:x``), ``..``
    segments (also percent-encoded), backslashes, ``#`` and control characters.
    """
    if not isinstance(path, str):
        raise InvalidParameterValue(field, path, "must be a string")
    decoded = path
    for _ in range(3):  # a path decoded once more by some layer must still be safe
        decoded = urllib.parse.unquote(decoded)
    for candidate in (path, decoded):
        if "\\" in candidate or "#" in candidate or _CONTROL_RE.search(candidate):
            raise InvalidParameterValue(
                field, path, "artifact paths may not contain backslashes, '#' or control characters"
            )
        if candidate.startswith("/") or _DRIVE_RE.match(candidate) or candidate.startswith("~"):
            raise InvalidParameterValue(field, path, "artifact paths must be relative")
        if ".." in candidate.split("/"):
            raise InvalidParameterValue(field, path, "artifact paths may not contain '..'")
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidParameterValue(field, path, "must be valid Unicode text") from None
    parts = [part for part in path.split("/") if part not in ("", ".")]
    for part in parts:
        if len(part.encode()) > MAX_NAME_BYTES:
            raise InvalidParameterValue(
                field, path, f"each file or folder name may be at most {MAX_NAME_BYTES} bytes"
            )
    clean = "/".join(parts)
    if len(clean.encode()) > MAX_PATH_BYTES:
        raise InvalidParameterValue(
            field, path, f"artifact paths may be at most {MAX_PATH_BYTES} bytes"
        )
    if not clean and not allow_root:
        raise InvalidParameterValue(field, path, "must name a file, not the artifact root")
    return clean


def run_artifact_root(run: RunRecord) -> str:
    """The folder (relative to the artifact store's root) that holds ``run``'s artifacts.

    Only ``mlflow-artifacts:`` URIs are served by steppe; a run whose experiment put its
    artifacts elsewhere (``s3://...``) is an InvalidParameterValue naming the URI.
    """
    uri = run.artifact_uri
    if not uri.startswith(_SCHEME):
        raise InvalidParameterValue(
            "run_id",
            run.run_id,
            f"this run's artifacts live at {uri!r}, which this steppe server does not serve "
            "(only mlflow-artifacts: URIs)",
        )
    rest = uri[len(_SCHEME) :]
    if rest.startswith("//"):  # mlflow-artifacts://host:port/path: the host is this server
        rest = "/" + rest[2:].partition("/")[2]
    return clean_path(rest.lstrip("/"), "artifact_uri", allow_root=True)


@dataclass(frozen=True)
class ArtifactEntry:
    """One directory entry: ``name`` is its base name, ``size`` None for directories."""

    name: str
    is_dir: bool
    size: int | None


class ArtifactStore:
    """Files under one root of a ``pyarrow.fs.FileSystem``. Blocking: call from threads
    (the HTTP handlers do). Paths are ``clean_path`` results.

        store = ArtifactStore.local(Path("steppe-data/artifacts"))
        store.list("0/<run_id>/artifacts")
    """

    def __init__(self, fs: pafs.FileSystem, local_root: Path | None = None) -> None:
        self._fs = fs
        #: Set when the files are on the local disk: enables the symlink check and fsync.
        self._local_root = None if local_root is None else local_root.resolve()

    @classmethod
    def local(cls, root: Path) -> ArtifactStore:
        """A store on the local disk at ``root`` (created if missing)."""
        root = Path(root)
        root.mkdir(parents=True, exist_ok=True)
        root = root.resolve()
        return cls(pafs.SubTreeFileSystem(str(root), pafs.LocalFileSystem()), root)

    def remove_stale_uploads(self) -> int:
        """Delete the temporary files of uploads a killed server left behind (the owner of
        the data dir calls this before serving: no upload can be in flight then). Local
        stores only; returns how many were removed."""
        if self._local_root is None:
            return 0
        removed = 0
        for folder, _, names in os.walk(self._local_root):
            for name in names:
                if _TEMP_NAME.fullmatch(name):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(os.path.join(folder, name))
                        removed += 1
        return removed

    def _check_inside(self, path: str) -> None:
        """On a local disk, refuse a path whose real location (symlinks followed) is outside
        the root: an artifact folder must not become a window onto the rest of the disk."""
        if self._local_root is None:
            return
        real = Path(os.path.realpath(self._local_root / path)) if path else self._local_root
        if real != self._local_root and self._local_root not in real.parents:
            raise InvalidParameterValue("path", path, "resolves outside the artifact store")

    def list(self, path: str) -> list[ArtifactEntry]:
        """Entries directly inside folder ``path`` sorted by name; [] when it is a file or
        does not exist (as MLflow's stores answer)."""
        self._check_inside(path)
        if path:
            info = self._fs.get_file_info(path)
            if info.type != pafs.FileType.Directory:
                return []
        selector = pafs.FileSelector(path, allow_not_found=True, recursive=False)
        entries = []
        for item in self._fs.get_file_info(selector):
            name = posixpath.basename(item.path.rstrip("/"))
            if name.startswith(".") and name.endswith(".part"):
                continue  # an upload in progress
            if item.type == pafs.FileType.Directory:
                entries.append(ArtifactEntry(name, True, None))
            elif item.type == pafs.FileType.File:
                entries.append(ArtifactEntry(name, False, int(item.size)))
        return sorted(entries, key=lambda e: e.name)

    def size(self, path: str) -> int:
        """The size of file ``path``; ResourceDoesNotExist when it is not a file."""
        self._check_inside(path)
        info = self._fs.get_file_info(path)
        if info.type != pafs.FileType.File:
            raise ResourceDoesNotExist(f"No artifact at path {path!r}")
        return int(info.size)

    def open_read(self, path: str) -> pafs.NativeFile:
        self._check_inside(path)
        return self._fs.open_input_stream(path)

    def begin_write(self, path: str) -> _Upload:
        """A temporary file beside ``path``; ``commit`` renames it into place."""
        self._check_inside(path)
        parent, name = posixpath.split(path)
        if parent:
            parts = parent.split("/")
            for depth in range(1, len(parts) + 1):  # a file anywhere up the path is refused
                folder = "/".join(parts[:depth])
                if self._fs.get_file_info(folder).type == pafs.FileType.File:
                    raise InvalidParameterValue("path", path, f"{folder!r} is a file, not a folder")
            self._fs.create_dir(parent, recursive=True)
            self._check_inside(parent)
        if self._fs.get_file_info(path).type == pafs.FileType.Directory:
            raise InvalidParameterValue("path", path, "is a folder; upload a file path instead")
        temp = posixpath.join(parent, f".{name}.{uuid.uuid4().hex}.part")
        return _Upload(self, path, temp, self._fs.open_output_stream(temp))

    def _commit(self, upload: _Upload) -> None:
        if self._local_root is not None:
            # Durable before it is visible: the bytes, then the rename, then the folder entry.
            fd = os.open(self._local_root / upload.temp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        self._fs.move(upload.temp, upload.path)
        if self._local_root is not None:
            fd = os.open(self._local_root / posixpath.dirname(upload.path), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def _discard(self, upload: _Upload) -> None:
        with contextlib.suppress(FileNotFoundError):  # never created, or already gone
            self._fs.delete_file(upload.temp)

    def delete(self, path: str) -> None:
        """Delete a file or a folder with everything in it; nothing there is fine (MLflow)."""
        self._check_inside(path)
        info = self._fs.get_file_info(path)
        if info.type == pafs.FileType.Directory:
            self._fs.delete_dir(path)
        elif info.type == pafs.FileType.File:
            self._fs.delete_file(path)


class _Upload:
    """A file being written (at a temporary name) to an ArtifactStore."""

    def __init__(self, store: ArtifactStore, path: str, temp: str, out: pafs.NativeFile) -> None:
        self.store = store
        self.path = path
        self.temp = temp
        self.out = out
        self.size = 0

    def write(self, chunk: bytes) -> None:
        self.out.write(chunk)
        self.size += len(chunk)

    def commit(self) -> None:
        self.out.close()
        self.store._commit(self)

    def abort(self) -> None:
        if not self.out.closed:
            self.out.close()
        self.store._discard(self)


# -- HTTP ---------------------------------------------------------------------------------

ARTIFACT_STORE = web.AppKey("artifact_store", ArtifactStore)
ARTIFACT_CATALOG = web.AppKey("artifact_catalog", Catalog)


def add_artifact_routes(app: web.Application, store: ArtifactStore, catalog: Catalog) -> None:
    """Register the artifact routes on ``app`` (see query/API.md, "Artifacts"):

    MLflow's artifact proxy under ``/api/2.0/mlflow-artifacts/artifacts`` (and ``/ajax-api``):
    ``GET ?path=`` lists, ``GET|PUT|DELETE /<path>`` downloads, uploads, deletes; MLflow's
    ``GET /api/2.0/mlflow/artifacts/list?run_id=&path=``; steppe's ``GET
    /api/steppe/v1/artifacts?run_id=&path=`` and ``GET|PUT /api/steppe/v1/artifacts/raw``.
    """
    app[ARTIFACT_STORE] = store
    app[ARTIFACT_CATALOG] = catalog
    for prefix in ARTIFACT_PROXY_PREFIXES:
        app.router.add_get(prefix, _proxy_list)
        app.router.add_get(prefix + "/{path:.+}", _proxy_download)
        app.router.add_put(prefix + "/{path:.+}", _proxy_upload)
        app.router.add_delete(prefix + "/{path:.+}", _proxy_delete)
    for prefix in _TRACKING_PREFIXES:
        app.router.add_get(prefix + "/artifacts/list", _tracking_list)
    app.router.add_get(f"{_STEPPE_PREFIX}/artifacts", _steppe_list)
    app.router.add_get(f"{_STEPPE_PREFIX}/artifacts/raw", _steppe_download)
    app.router.add_put(f"{_STEPPE_PREFIX}/artifacts/raw", _steppe_upload)


def _json(document: object) -> web.Response:
    return web.Response(body=dumps(document), content_type="application/json")


async def _run(fn: Callable[..., T], *args: object) -> T:
    return await asyncio.to_thread(fn, *args)


def _one(request: web.Request, name: str, *, required: bool) -> str | None:
    values = request.query.getall(name, [])
    if len(values) > 1:
        raise InvalidParameterValue(name, values, "must be given at most once")
    if not values:
        if required:
            raise InvalidParameterValue(name, None, "query parameter is required")
        return None
    return values[0]


def _file_json(path: str, entry: ArtifactEntry) -> dict[str, object]:
    out: dict[str, object] = {"path": path, "is_dir": entry.is_dir}
    if entry.size is not None:
        out["file_size"] = entry.size
    return out


async def _run_folder(request: web.Request) -> tuple[RunRecord, str, str]:
    """(run, its artifact folder, the requested path relative to the run) from run_id
    (or MLflow's run_uuid) and path query parameters."""
    run_id = _one(request, "run_id", required=False) or _one(request, "run_uuid", required=False)
    if not run_id:
        raise InvalidParameterValue("run_id", run_id, "query parameter is required")
    relative = clean_path(_one(request, "path", required=False) or "", allow_root=True)
    run = await _run(request.app[ARTIFACT_CATALOG].get_run, run_id)
    return run, run_artifact_root(run), relative


async def _proxy_list(request: web.Request) -> web.Response:
    path = clean_path(_one(request, "path", required=False) or "", allow_root=True)
    entries = await _run(request.app[ARTIFACT_STORE].list, path)
    # MLflow's proxy answers base names; the client joins them to the path it asked for.
    return _json({"files": [_file_json(entry.name, entry) for entry in entries]})


async def _run_files(request: web.Request) -> tuple[RunRecord, str, list[dict[str, object]]]:
    """(run, requested run-relative folder, its entries with run-relative paths)."""
    run, root, relative = await _run_folder(request)
    entries = await _run(request.app[ARTIFACT_STORE].list, posixpath.join(root, relative))
    files = [_file_json(posixpath.join(relative, e.name), e) for e in entries]
    return run, relative, files


async def _tracking_list(request: web.Request) -> web.Response:
    run, _, files = await _run_files(request)
    return _json({"root_uri": run.artifact_uri, "files": files})


async def _steppe_list(request: web.Request) -> web.Response:
    run, relative, files = await _run_files(request)
    return _json(
        {"run_id": run.run_id, "root_uri": run.artifact_uri, "path": relative, "files": files}
    )


def _content_type(path: str) -> str:
    guessed, _ = mimetypes.guess_type(path, strict=False)
    if guessed is None and path.lower().endswith(_TEXT_SUFFIXES):
        guessed = "text/plain"
    return guessed if guessed in _INLINE_TYPES else "application/octet-stream"


async def _send(request: web.Request, path: str, *, attachment: bool) -> web.StreamResponse:
    store: ArtifactStore = request.app[ARTIFACT_STORE]
    size = await _run(store.size, path)
    source = await _run(store.open_read, path)
    try:
        response = web.StreamResponse(
            headers={
                "Content-Type": _content_type(path),
                "X-Content-Type-Options": "nosniff",
                "Content-Security-Policy": "default-src 'none'; sandbox",
                "Cache-Control": "no-cache",
            }
        )
        if attachment:
            name = urllib.parse.quote(posixpath.basename(path))
            response.headers["Content-Disposition"] = f"attachment; filename*=UTF-8''{name}"
        response.content_length = size
        await response.prepare(request)
        while chunk := await _run(source.read, CHUNK_BYTES):
            await response.write(chunk)
        await response.write_eof()
        return response
    finally:
        source.close()


async def _proxy_download(request: web.Request) -> web.StreamResponse:
    path = clean_path(request.match_info["path"])
    return await _send(request, path, attachment=True)


async def _steppe_download(request: web.Request) -> web.StreamResponse:
    _, root, relative = await _run_folder(request)
    if not relative:
        raise InvalidParameterValue("path", "", "must name a file of the run")
    return await _send(request, posixpath.join(root, relative), attachment=False)


async def _receive(request: web.Request, path: str) -> int:
    """Stream the request body into ``path``; the bytes written."""
    store: ArtifactStore = request.app[ARTIFACT_STORE]
    upload = await _run(store.begin_write, path)
    try:
        async for chunk in _chunks(request):
            await _run(upload.write, chunk)
        await _run(upload.commit)
    except BaseException:
        await asyncio.shield(_run(upload.abort))
        raise
    return upload.size


async def _chunks(request: web.Request) -> AsyncIterator[bytes]:
    buffered: list[bytes] = []
    held = 0
    async for data in request.content.iter_chunked(256 << 10):
        buffered.append(data)
        held += len(data)
        if held >= CHUNK_BYTES:
            yield b"".join(buffered)
            buffered, held = [], 0
    if buffered:
        yield b"".join(buffered)


async def _proxy_upload(request: web.Request) -> web.Response:
    await _receive(request, clean_path(request.match_info["path"]))
    return _json({})


async def _steppe_upload(request: web.Request) -> web.Response:
    run, root, relative = await _run_folder(request)
    if run.lifecycle_stage != "active":
        raise InvalidParameterValue("run_id", run.run_id, "the run is deleted")
    if not relative:
        raise InvalidParameterValue("path", "", "must name a file of the run")
    size = await _receive(request, posixpath.join(root, relative))
    return _json({"run_id": run.run_id, "path": relative, "file_size": size})


async def _proxy_delete(request: web.Request) -> web.Response:
    path = clean_path(request.match_info["path"])
    await _run(request.app[ARTIFACT_STORE].delete, path)
    return _json({})
