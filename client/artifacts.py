"""Artifacts over HTTP: a run's files through steppe's artifact API (query/API.md,
"Artifacts") and any ``mlflow-artifacts:`` location through MLflow's proxy, streamed in chunks
both ways (a large file never sits in memory); and ``mlflow.artifacts``' public functions
(``download_artifacts``, ``list_artifacts``, ``load_text``, ``load_dict``, ``load_image``).

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


# -- mlflow.artifacts' public functions -----------------------------------------------------------


def _split_runs_uri(artifact_uri: str) -> tuple[str, str]:
    run_id, _, path = artifact_uri[len("runs:/") :].partition("/")
    if not run_id:
        raise errors.InvalidParameterValue("artifact_uri", artifact_uri, "is runs:/<run_id>/<path>")
    return run_id, path.strip("/")


def download_artifacts(
    artifact_uri: str | None = None,
    run_id: str | None = None,
    artifact_path: str | None = None,
    dst_path: str | os.PathLike[str] | None = None,
    tracking_uri: str | None = None,
) -> str:
    """Download ``artifact_uri`` (``runs:/<run>/<path>``, ``models:/...``,
    ``mlflow-artifacts:/...``) or ``run_id`` + ``artifact_path``; returns the local path.

    Example::

        local = steppe.artifacts.download_artifacts("runs:/<run_id>/plots")
    """
    from steppe.tracking import Client

    if (artifact_uri is None) == (run_id is None):
        raise errors.InvalidParameterValue(
            "artifact_uri", artifact_uri, "give either artifact_uri or run_id (not both)"
        )
    if artifact_uri is not None and artifact_path is not None:
        raise errors.InvalidParameterValue(
            "artifact_path", artifact_path, "goes with run_id, not with artifact_uri"
        )
    client = Client(tracking_uri)
    if run_id is not None:
        return client.download_artifacts(run_id, artifact_path or "", dst_path)
    assert artifact_uri is not None
    if artifact_uri.startswith("runs:/"):
        run, path = _split_runs_uri(artifact_uri)
        return client.download_artifacts(run, path, dst_path)
    if artifact_uri.startswith("models:/"):
        from steppe.models.uris import resolve

        return str(resolve(artifact_uri, dst_path))
    root = Path(dst_path) if dst_path is not None else Path(tempfile.mkdtemp(prefix="steppe-"))
    path = proxy_path(artifact_uri)
    name = posixpath.basename(path)
    parent = posixpath.dirname(path)
    entries = {n: is_dir for n, is_dir, _ in _proxy_entries(client._http_url, parent)}
    if name in entries and not entries[name]:  # one file
        target = root / name
        request = urllib.request.Request(
            f"{client._http_url.rstrip('/')}{PROXY_PATH}/{urllib.parse.quote(path)}"
        )
        with _open(request, _TRANSFER_TIMEOUT_S) as response, open(target, "wb") as out:
            shutil.copyfileobj(response, out, _CHUNK_BYTES)
        return str(target)
    return str(download_folder(client._http_url, artifact_uri, root / name, artifact_uri))


def list_artifacts(
    artifact_uri: str | None = None,
    run_id: str | None = None,
    artifact_path: str | None = None,
    tracking_uri: str | None = None,
) -> list[FileInfo]:
    """The entries of a run's artifact folder, by ``runs:/`` URI or ``run_id``."""
    from steppe.tracking import Client

    if artifact_uri is not None:
        if not artifact_uri.startswith("runs:/"):
            raise errors.InvalidParameterValue(
                "artifact_uri", artifact_uri, "is runs:/<run_id>/<path> (or give run_id)"
            )
        run_id, artifact_path = _split_runs_uri(artifact_uri)
    if run_id is None:
        raise errors.InvalidParameterValue("run_id", None, "or artifact_uri is required")
    return Client(tracking_uri).list_artifacts(run_id, artifact_path or None)


def _read(artifact_uri: str) -> bytes:
    with tempfile.TemporaryDirectory(prefix="steppe-read-") as tmp:
        local = Path(download_artifacts(artifact_uri, dst_path=tmp))
        if not local.is_file():
            raise errors.InvalidParameterValue("artifact_uri", artifact_uri, "is not a file")
        return local.read_bytes()


def load_text(artifact_uri: str) -> str:
    """The artifact's text (UTF-8), e.g. ``load_text("runs:/<run_id>/notes.txt")``."""
    return _read(artifact_uri).decode()


def load_dict(artifact_uri: str) -> Any:
    """The artifact parsed as JSON (or YAML for .yaml/.yml, with PyYAML)."""
    data = _read(artifact_uri)
    if artifact_uri.lower().endswith((".yaml", ".yml")):
        import yaml

        return yaml.safe_load(data)
    try:
        return json.loads(data)
    except ValueError as exc:
        raise errors.InvalidParameterValue(
            "artifact_uri", artifact_uri, f"is not valid JSON: {exc}"
        ) from None


def load_image(artifact_uri: str) -> Any:
    """The artifact as a PIL image (needs Pillow)."""
    import io

    from PIL import Image

    image = Image.open(io.BytesIO(_read(artifact_uri)))
    image.load()
    return image
