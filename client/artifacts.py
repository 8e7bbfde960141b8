"""Run artifacts for ``steppe.Client``: files to and from a server's artifact API (query/API.md,
"Artifacts") over plain HTTP, streamed in chunks both ways (a large file never sits in memory).

Standard library only (urllib); imported on first use, not by ``import steppe``.
"""

from __future__ import annotations

import json
import mimetypes
import os
import posixpath
import shutil
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from steppe import config, errors, http
from steppe.entities import FileInfo

ARTIFACTS_PATH = "/api/steppe/v1/artifacts"
_CHUNK_BYTES = 1 << 20
#: Per socket operation, not for the whole transfer: large files may take longer.
_TRANSFER_TIMEOUT_S = 300.0


def _url(http_url: str, route: str, **query: str) -> str:
    return f"{http_url.rstrip('/')}{route}?{urllib.parse.urlencode(query)}"


def _open(request: urllib.request.Request, timeout_s: float) -> Any:
    return http.open_checked(request, timeout_s)


def artifact_path_for(artifact_path: str | None, name: str) -> str:
    """The run-relative path of a file called ``name`` logged under ``artifact_path``."""
    folder = (artifact_path or "").strip("/")
    return posixpath.join(folder, name) if folder else name


def upload(http_url: str, run_id: str, path: str, source: IO[bytes] | bytes, size: int) -> None:
    """PUT ``size`` bytes from ``source`` as the run's artifact ``path`` (replacing it)."""
    content_type = mimetypes.guess_type(path)[0] or "application/octet-stream"
    request = urllib.request.Request(
        _url(http_url, f"{ARTIFACTS_PATH}/raw", run_id=run_id, path=path),
        data=source,
        method="PUT",
        headers={"Content-Type": content_type, "Content-Length": str(size)},
    )
    with _open(request, _TRANSFER_TIMEOUT_S) as response:
        response.read()


def upload_file(http_url: str, run_id: str, local_path: Path, path: str) -> None:
    with open(local_path, "rb") as source:
        upload(http_url, run_id, path, source, os.fstat(source.fileno()).st_size)


def list_files(http_url: str, run_id: str, path: str | None = None) -> list[FileInfo]:
    """The entries directly inside the run's artifact folder ``path`` (the root when None)."""
    request = urllib.request.Request(
        _url(http_url, ARTIFACTS_PATH, run_id=run_id, path=(path or "").strip("/"))
    )
    with _open(request, config.connect_timeout_s()) as response:
        body = json.loads(response.read())
    files = [FileInfo(f["path"], bool(f["is_dir"]), f.get("file_size")) for f in body["files"]]
    for item in files:
        # These become local paths on download: never outside the destination folder.
        if item.path.startswith("/") or ".." in item.path.split("/") or "\\" in item.path:
            raise errors.SteppeError(f"the server listed an unsafe artifact path {item.path!r}")
    return files


def _walk(http_url: str, run_id: str, path: str) -> Iterator[FileInfo]:
    for entry in list_files(http_url, run_id, path):
        if entry.is_dir:
            yield from _walk(http_url, run_id, entry.path)
        else:
            yield entry


def _download_file(http_url: str, run_id: str, path: str, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    request = urllib.request.Request(
        _url(http_url, f"{ARTIFACTS_PATH}/raw", run_id=run_id, path=path)
    )
    partial = target.with_name(f".{target.name}.part")
    with _open(request, _TRANSFER_TIMEOUT_S) as response, open(partial, "wb") as out:
        shutil.copyfileobj(response, out, _CHUNK_BYTES)
    os.replace(partial, target)


def download(http_url: str, run_id: str, path: str, dst_path: str | os.PathLike[str] | None) -> str:
    """Download the run's artifact ``path`` (a file, a folder, or "" for everything) into
    ``dst_path`` (a new temporary folder when None); the local path of what was downloaded."""
    path = path.strip("/")
    root = Path(dst_path) if dst_path is not None else Path(tempfile.mkdtemp(prefix="steppe-"))
    root.mkdir(parents=True, exist_ok=True)
    parent = posixpath.dirname(path)
    siblings = list_files(http_url, run_id, parent) if path else []
    entry = next((e for e in siblings if e.path == path), None)
    if path and entry is None:
        raise errors.ResourceDoesNotExist(f"No artifact at {path!r} in run {run_id}")
    if entry is not None and not entry.is_dir:
        target = root / path
        _download_file(http_url, run_id, path, target)
        return str(target)
    for item in _walk(http_url, run_id, path):
        _download_file(http_url, run_id, item.path, root / item.path)
    folder = root / path if path else root
    folder.mkdir(parents=True, exist_ok=True)
    return str(folder)


# -- by artifact URI (MLflow's artifact proxy): LoggedModels and registry sources ------------

PROXY_PATH = "/api/2.0/mlflow-artifacts/artifacts"
_PROXY_SCHEME = "mlflow-artifacts:"


def proxy_path(artifact_uri: str) -> str:
    """The store path of an ``mlflow-artifacts:`` URI (``mlflow-artifacts://host:port/x``
    names this server), checked to stay inside the store."""
    if not artifact_uri.startswith(_PROXY_SCHEME):
        raise errors.SteppeError(
            f"artifact URI {artifact_uri!r} is not served by steppe (only mlflow-artifacts: URIs)"
        )
    rest = artifact_uri[len(_PROXY_SCHEME) :]
    if rest.startswith("//"):
        rest = rest[2:].partition("/")[2]
    path = rest.strip("/")
    if ".." in path.split("/") or "\\" in path:
        raise errors.SteppeError(f"unsafe artifact URI {artifact_uri!r}")
    return path


class Progress:
    """Byte counts of a long transfer on stderr: silent for the first 2 s (small models),
    then one line about every 2 s, and a last line when it is done."""

    def __init__(self, verb: str, what: str, total_bytes: int) -> None:
        import time

        self._clock = time.monotonic
        self._verb, self._what, self._total = verb, what, total_bytes
        self._done = 0
        self._started = self._clock()
        self._next = self._started + 2.0
        self._shown = False

    def add(self, n: int) -> None:
        self._done += n
        now = self._clock()
        if now >= self._next:
            self._next = now + 2.0
            self._show(now)

    def _show(self, now: float) -> None:
        import sys

        self._shown = True
        mb = 1024 * 1024
        share = f" ({100 * self._done // self._total}%)" if self._total else ""
        rate = self._done / mb / max(now - self._started, 1e-6)
        print(
            f"steppe: {self._verb} {self._what}: {self._done / mb:,.1f} of "
            f"{self._total / mb:,.1f} MiB{share}, {rate:,.1f} MiB/s",
            file=sys.stderr,
            flush=True,
        )

    def close(self) -> None:
        if self._shown:
            self._show(self._clock())


class _Counted:
    """A file whose reads are counted into a Progress (urllib streams it in blocks)."""

    def __init__(self, source: IO[bytes], progress: Progress) -> None:
        self._source, self._progress = source, progress

    def read(self, n: int = -1) -> bytes:
        data = self._source.read(n)
        self._progress.add(len(data))
        return data


def upload_folder(http_url: str, artifact_uri: str, local_dir: Path, what: str) -> None:
    """PUT every file below ``local_dir`` under ``artifact_uri``, streamed, with progress."""
    root = proxy_path(artifact_uri)
    files = sorted(p for p in local_dir.rglob("*") if p.is_file())
    progress = Progress("uploading", what, sum(p.stat().st_size for p in files))
    for file in files:
        target = posixpath.join(root, file.relative_to(local_dir).as_posix())
        with open(file, "rb") as source:
            size = os.fstat(source.fileno()).st_size
            request = urllib.request.Request(
                f"{http_url.rstrip('/')}{PROXY_PATH}/{urllib.parse.quote(target)}",
                data=_Counted(source, progress),  # file-like: urllib streams it
                method="PUT",
                headers={"Content-Type": "application/octet-stream", "Content-Length": str(size)},
            )
            with _open(request, _TRANSFER_TIMEOUT_S) as response:
                response.read()
    progress.close()


def _proxy_entries(http_url: str, path: str) -> list[tuple[str, bool, int]]:
    request = urllib.request.Request(
        f"{http_url.rstrip('/')}{PROXY_PATH}?{urllib.parse.urlencode({'path': path})}"
    )
    with _open(request, config.connect_timeout_s()) as response:
        body = json.loads(response.read())
    out = []
    for item in body.get("files", []):
        name = str(item["path"]).rsplit("/", 1)[-1]
        if name in ("", ".", "..") or "\\" in name:
            raise errors.SteppeError(f"the server listed an unsafe artifact name {name!r}")
        out.append((name, bool(item.get("is_dir")), int(item.get("file_size") or 0)))
    return out


def download_folder(http_url: str, artifact_uri: str, dst: Path, what: str) -> Path:
    """Download everything under ``artifact_uri`` into ``dst`` (created), with progress."""
    root = proxy_path(artifact_uri)
    files: list[tuple[str, int]] = []
    pending = [""]
    while pending:
        relative = pending.pop()
        for name, is_dir, size in _proxy_entries(http_url, posixpath.join(root, relative)):
            child = posixpath.join(relative, name) if relative else name
            (pending.append(child) if is_dir else files.append((child, size)))
    if not files:
        raise errors.ResourceDoesNotExist(f"No artifacts at {artifact_uri}")
    progress = Progress("downloading", what, sum(size for _, size in files))
    dst.mkdir(parents=True, exist_ok=True)
    for relative, _ in files:
        target = dst / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        quoted = urllib.parse.quote(posixpath.join(root, relative))
        request = urllib.request.Request(f"{http_url.rstrip('/')}{PROXY_PATH}/{quoted}")
        partial = target.with_name(f".{target.name}.part")
        with _open(request, _TRANSFER_TIMEOUT_S) as response, open(partial, "wb") as out:
            while chunk := response.read(_CHUNK_BYTES):
                out.write(chunk)
                progress.add(len(chunk))
        os.replace(partial, target)
    progress.close()
    return dst
