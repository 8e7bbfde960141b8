"""Browser-facing hardening of the HTTP server, against a real token-less server: DNS
rebinding (Host), cross-site writes (Origin, content type) and idle connections."""

from __future__ import annotations

import http.client
import json
import logging
import socket
import stat
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.conftest import ServerProcess, start_server

IDLE_TIMEOUT_S = 1.0


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    server = start_server(
        tmp_path_factory.mktemp("harden") / "data",
        "--http-idle-timeout-s",
        str(IDLE_TIMEOUT_S),
        "--allowed-origins",
        "http://trusted.example",
    )
    yield server
    assert server.stop() == 0


def _request(
    server: ServerProcess,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, object]]:
    url = urlsplit(server.http_url)
    conn = http.client.HTTPConnection(url.hostname or "", url.port, timeout=10)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        data = response.read()
        return response.status, json.loads(data) if data else {}
    finally:
        conn.close()


def _experiment_names(server: ServerProcess) -> list[str]:
    status, body = _request(server, "GET", "/api/2.0/mlflow/experiments/search?max_results=100")
    assert status == 200
    return [e["name"] for e in body.get("experiments", [])]  # type: ignore[attr-defined]


CREATE = "/api/2.0/mlflow/experiments/create"


def test_a_foreign_host_header_is_refused(server: ServerProcess) -> None:
    status, body = _request(
        server, "GET", "/api/steppe/v1/experiments", headers={"Host": "attacker.example"}
    )
    assert status == 403 and body["error_code"] == "PERMISSION_DENIED"
    assert "Host" in str(body["message"])
    for host in ("localhost:1234", "127.0.0.1", "[::1]:80"):
        assert (
            _request(server, "GET", "/api/steppe/v1/experiments", headers={"Host": host})[0] == 200
        )


def test_a_cross_site_write_is_refused_and_changes_nothing(server: ServerProcess) -> None:
    body = json.dumps({"name": "csrf"}).encode()
    json_type = {"Content-Type": "application/json"}
    for headers in (
        {"Content-Type": "text/plain"},  # what a <form> or no-preflight fetch can send
        {"Content-Type": "application/x-www-form-urlencoded"},
        {**json_type, "Origin": "http://attacker.example"},
        {**json_type, "Origin": "null"},
    ):
        status, answer = _request(server, "POST", CREATE, body, headers)
        assert status in (403, 415), (headers, answer)
        assert "message" in answer
    assert "csrf" not in _experiment_names(server)
    # SQL from another origin: refused as well.
    sql = json.dumps({"query": "SELECT 1"}).encode()
    status, _ = _request(
        server, "POST", "/api/steppe/v1/sql", sql, {**json_type, "Origin": "http://evil.test"}
    )
    assert status == 403


def test_same_origin_and_listed_origins_and_plain_clients_may_write(
    server: ServerProcess,
) -> None:
    own = server.http_url.rstrip("/")
    json_type = {"Content-Type": "application/json"}
    for i, extra in enumerate(({}, {"Origin": own}, {"Origin": "http://trusted.example"})):
        name = f"ok-{i}"
        body = json.dumps({"name": name}).encode()
        status, answer = _request(server, "POST", CREATE, body, {**json_type, **extra})
        assert status == 200, answer
        assert name in _experiment_names(server)


def _closed_within(sock: socket.socket, deadline: float) -> bool:
    sock.settimeout(max(0.01, deadline - time.monotonic()))
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def test_idle_and_half_sent_connections_are_closed_and_the_server_answers(
    server: ServerProcess,
) -> None:
    url = urlsplit(server.http_url)
    address = (url.hostname or "", url.port or 0)
    idle = [socket.create_connection(address, timeout=5) for _ in range(50)]
    half = [socket.create_connection(address, timeout=5) for _ in range(10)]
    try:
        for sock in half:
            sock.sendall(b"GET /api/steppe/v1/experiments HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        assert _request(server, "GET", "/api/steppe/v1/experiments")[0] == 200
        deadline = time.monotonic() + IDLE_TIMEOUT_S + 10.0
        assert all(_closed_within(sock, deadline) for sock in idle + half)
    finally:
        for sock in idle + half:
            sock.close()
    assert _request(server, "GET", "/api/steppe/v1/experiments")[0] == 200


def test_token_file_private_data_dir_and_a_true_login_hint(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("from-a-file-token\n")
    server = start_server(tmp_path / "data", "--token-file", str(token_file))
    try:
        status, body = _request(server, "GET", "/api/steppe/v1/experiments")
        assert status == 401 and "/?token=<your token>" in str(body["message"])
        auth = {"Authorization": "Bearer from-a-file-token"}
        assert _request(server, "GET", "/api/steppe/v1/experiments", headers=auth)[0] == 200
        data_dir = tmp_path / "data"
        assert stat.S_IMODE(data_dir.stat().st_mode) == 0o700
        files = [p for p in data_dir.rglob("*") if p.is_file()]
        assert files and all(stat.S_IMODE(p.stat().st_mode) & 0o077 == 0 for p in files), [
            (p, oct(p.stat().st_mode)) for p in files
        ]
    finally:
        assert server.stop() == 0
    assert "from-a-file-token" not in "".join(server.output)


def test_temp_files_of_interrupted_uploads_are_removed_at_startup(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    first = start_server(data_dir)
    assert first.stop() == 0
    folder = data_dir / "artifacts" / "0" / "run" / "artifacts"
    folder.mkdir(parents=True)
    # Named as ArtifactStore.begin_write names them; a kill -9 mid-upload leaves one.
    stale = folder / f".model.pkl.{uuid.uuid4().hex}.part"
    stale.write_bytes(b"half an upload")
    kept = folder / "model.pkl"
    kept.write_bytes(b"a committed artifact")
    second = start_server(data_dir)
    try:
        assert not stale.exists()
        assert kept.read_bytes() == b"a committed artifact"
    finally:
        assert second.stop() == 0


def test_accept_errors_are_logged_once_per_window_with_a_count() -> None:
    from steppe.query.server import _ACCEPT_ERROR, _OncePerWindow

    records = []
    logger = logging.getLogger("test-accept-flood")
    logger.propagate = False
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    logger.addHandler(handler)
    logger.addFilter(_OncePerWindow(_ACCEPT_ERROR, window_s=3600))
    for _ in range(1000):
        logger.error(_ACCEPT_ERROR + "\nsocket: <socket>")
    logger.error("something else")
    assert [r.getMessage().splitlines()[0] for r in records] == [_ACCEPT_ERROR, "something else"]
