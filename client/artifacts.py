"""Run artifacts for ``steppe.Client``: files to and from a server's artifact API (query/API.md,
"Artifacts") over plain HTTP, streamed in chunks both ways (a large file never sits in memory).
Offline or while the server is away, they are copied into the spool and sent later (``put``).

Standard library only (urllib); imported on first use, not by ``import steppe``.
"""

from __future__ import annotations

import functools
import json
import logging
import mimetypes
import os
import posixpath
import shutil
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path, PurePosixPath
from typing import IO, TYPE_CHECKING, Any

from steppe import config, errors, http
from steppe.entities import FileInfo

if TYPE_CHECKING:
    from steppe.connection import Connection

log = logging.getLogger("steppe.artifacts")

ARTIFACTS_PATH = "/api/steppe/v1/artifacts"
_CHUNK_BYTES = 1 << 20
#: Per socket operation, not for the whole transfer: large files may take longer.
_TRANSFER_TIMEOUT_S = 300.0


def _url(http_url: str, route: str, **query: str) -> str:
    return f"{http_url.rstrip('/')}{route}?{urllib.parse.urlencode(query)}"


def _open(request: urllib.request.Request, timeout_s: float) -> Any:
    return http.open_checked(request, timeout_s)


def check_folder(field: str, artifact_path: str | None) -> str:
    """``artifact_path`` as a folder inside the run's artifacts ("" for their root)."""
    folder = (artifact_path or "").strip("/")
    if ".." in folder.split("/") or "\\" in folder or "\x00" in folder:
        raise errors.InvalidParameterValue(
            field, artifact_path, "must be a folder inside the run's artifacts, such as 'plots'"
        )
    return folder


def check_file_path(field: str, artifact_file: str) -> str:
    """``artifact_file`` as a file path inside the run's artifacts, e.g. "plots/a.png"."""
    path = PurePosixPath(artifact_file)
    if (
        not artifact_file
        or path.is_absolute()
        or ".." in path.parts
        or path.name in ("", ".")
        or "\\" in artifact_file
        or "\x00" in artifact_file
    ):
        raise errors.InvalidParameterValue(
            field, artifact_file, "must be a relative file path such as 'plots/a.png'"
        )
    return path.as_posix()


def artifact_path_for(artifact_path: str | None, name: str) -> str:
    """The run-relative path of a file called ``name`` logged under ``artifact_path``."""
    folder = check_folder("artifact_path", artifact_path)
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


#: An artifact to log: its run-relative path and its bytes, or the local file holding them.
Item = tuple[str, bytes | Path]


def put(conn: Connection, run_id: str, items: Sequence[Item]) -> None:
    """Upload ``items`` in order as the run's artifacts. In offline mode, while journaled
    calls wait for the server, or from the first upload that finds it unreachable, the rest
    are copied into the spool instead and sent in order with the journal (``steppe sync``,
    or this process once the server is back). Raises SteppeError only if the spool cannot
    take them (its STEPPE_SPOOL_MAX_BYTES cap, or the disk)."""
    from steppe import journal  # here: the HTTP half of this module stays standard library only

    sender = conn.sender
    done = 0
    if not sender.offline and not sender.ops_pending():
        try:
            url = conn.http_url()
            for path, source in items:
                _upload_item(url, run_id, path, source)
                done += 1
            return
        except errors.ServerUnavailable as exc:
            log.warning(
                "steppe: %s; artifacts are kept in the spool and sent when the server is back",
                exc,
            )
    rest = items[done:]
    _check_room(conn, run_id, rest)
    for path, source in rest:
        sender.journal_file(_writer(source), functools.partial(journal.artifact_op, run_id, path))


def _upload_item(url: str, run_id: str, path: str, source: bytes | Path) -> None:
    if isinstance(source, bytes):
        upload(url, run_id, path, source, len(source))
    else:
        upload_file(url, run_id, source, path)


def _writer(source: bytes | Path) -> Callable[[IO[bytes]], None]:
    def write(target: IO[bytes]) -> None:
        if isinstance(source, bytes):
            target.write(source)
        else:
            with open(source, "rb") as f:  # a copy: the caller may delete it once we return
                shutil.copyfileobj(f, target, _CHUNK_BYTES)

    return write


def _check_room(conn: Connection, run_id: str, items: Sequence[Item]) -> None:
    """Refuse (never drop) artifacts that would take the spool past its cap."""
    from steppe import spool

    size = sum(len(s) if isinstance(s, bytes) else s.stat().st_size for _, s in items)
    current = conn.sender.spool_dir
    root = current.parent if current is not None else config.spool_dir()
    limit = config.spool_max_bytes()
    used = spool.usage(root)
    if used + size > limit:
        raise errors.SteppeError(
            f"cannot keep {len(items)} artifact file(s) ({size:,} bytes) of run {run_id} until "
            f"the server is reachable: the spool in {root} holds {used:,} bytes and its limit "
            f"is {limit:,} bytes (STEPPE_SPOOL_MAX_BYTES); deliver it with `steppe sync` or "
            "raise the limit"
        )
