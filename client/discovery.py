"""Finds the server for a tracking URI, starting a local one in the background if needed.

No tracking URI (or a local path / ``file:`` URI) means a data dir on this machine: use the
server that owns it, or start ``steppe server --background`` on it. An ``http(s)://`` URI is
a remote server; its gRPC port comes from ``/api/steppe/v1/server-info``.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from steppe import config, errors, http
from steppe.lock import live_owner

SERVER_INFO_PATH = "/api/steppe/v1/server-info"


@dataclass(frozen=True)
class Endpoint:
    http_url: str  # e.g. http://127.0.0.1:5000 (no trailing slash)
    grpc_target: str  # e.g. 127.0.0.1:5001
    data_dir: Path | None = None  # set for a local server


def local_data_dir(uri: str | None) -> Path | None:
    """The data dir a tracking URI names, or None for a remote (http) URI."""
    if uri is None or uri == "":
        return _not_mlflow_store(uri, config.data_dir())
    if _HOST_PORT.match(uri):
        raise errors.InvalidParameterValue(
            "tracking_uri",
            uri,
            f"a server address needs its scheme: did you mean http://{uri.rstrip('/')}?",
        )
    parsed = urllib.parse.urlparse(uri)
    if parsed.scheme in ("http", "https"):
        return None
    if parsed.scheme == "file":
        return _not_mlflow_store(uri, Path(urllib.parse.unquote(parsed.path)).resolve())
    if parsed.scheme == "" or len(parsed.scheme) == 1:  # a path (or a Windows drive)
        return _not_mlflow_store(uri, Path(uri).expanduser().resolve())
    raise errors.InvalidParameterValue(
        "tracking_uri", uri, "must be http(s)://host:port, file:///path or a local path"
    )


#: host:port without a scheme (a forgotten http://), e.g. 127.0.0.1:6220 or [::1]:5000.
_HOST_PORT = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+):[0-9]{1,5}/?$")


def _not_mlflow_store(uri: str | None, path: Path) -> Path:
    """Refuse an MLflow file store (``mlruns``): steppe's files do not belong inside it."""
    if path.name == "mlruns" or (path / "0" / "meta.yaml").is_file():
        raise errors.InvalidParameterValue(
            "tracking_uri",
            uri if uri else str(path),
            f"{path} is an MLflow file store (mlruns), not a steppe data dir; point steppe "
            "at its own folder, e.g. STEPPE_TRACKING_URI=./steppe-data (it takes precedence "
            "over MLFLOW_TRACKING_URI), or a server's http://host:port",
        )
    return path


def resolve(uri: str | None, *, start: bool = True) -> Endpoint:
    """Where the server for ``uri`` listens; ``start=False`` never starts a local one."""
    data_dir = local_data_dir(uri)
    if data_dir is None:
        assert uri is not None
        return remote(uri)
    if not start:
        _, owner = live_owner(data_dir)
        if owner is None:
            raise errors.ServerUnavailable(f"no steppe server owns {data_dir} right now")
        return Endpoint(owner.http_url, f"127.0.0.1:{owner.grpc_port}", data_dir)
    return local(data_dir)


def remote(url: str) -> Endpoint:
    url = url.rstrip("/")
    info = fetch_json(url + SERVER_INFO_PATH, timeout_s=config.connect_timeout_s())
    host = urllib.parse.urlparse(url).hostname or "127.0.0.1"
    grpc_host = f"[{host}]" if ":" in host else host
    return Endpoint(url, f"{grpc_host}:{int(info['grpc_port'])}")


def fetch_json(url: str, timeout_s: float) -> dict[str, Any]:
    try:
        with http.urlopen(url, timeout_s) as response:
            data: dict[str, Any] = json.loads(response.read())
            return data
    except urllib.error.HTTPError as exc:
        raise errors.ServerUnavailable(
            f"{url} answered HTTP {exc.code}: is it a steppe server?"
        ) from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise errors.ServerUnavailable(f"cannot reach a steppe server at {url}: {exc}") from None


def local(data_dir: Path) -> Endpoint:
    """The live owner of data_dir, started in the background first if there is none."""
    deadline = time.monotonic() + config.server_start_timeout_s()
    launched = False
    while True:
        held, owner = live_owner(data_dir)
        if owner is not None:
            return Endpoint(owner.http_url, f"127.0.0.1:{owner.grpc_port}", data_dir)
        if not held and not launched:
            launched = True
            _launch(data_dir, deadline)
            continue
        if time.monotonic() > deadline:
            raise errors.ServerUnavailable(
                f"no steppe server became ready on {data_dir} within "
                f"{config.server_start_timeout_s():g} s; see {data_dir / 'server.log'}"
            )
        time.sleep(0.02)  # polling a lock file another process is about to publish


def _launch(data_dir: Path, deadline: float) -> None:
    """Start a detached server; returns once it is ready or lost a race to another one."""
    data_dir.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable,
        "-m",
        "steppe",
        "server",
        "--background",
        "--data-dir",
        str(data_dir),
        "--http-port",
        "0",
        "--grpc-port",
        "0",
        "--idle-timeout-s",
        f"{config.idle_timeout_s():g}",
    ]
    try:
        done = subprocess.run(
            cmd,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=max(1.0, deadline - time.monotonic()),
        )
    except subprocess.TimeoutExpired:
        raise errors.ServerUnavailable(
            f"starting a steppe server on {data_dir} took too long; see {data_dir / 'server.log'}"
        ) from None
    # Exit 3: another server took the data dir first; the caller will find it.
    if done.returncode not in (0, 3):
        raise errors.ServerUnavailable(
            f"could not start a steppe server on {data_dir}:\n{done.stderr.strip()}"
        )
