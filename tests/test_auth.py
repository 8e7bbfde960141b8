"""Token auth (gRPC and HTTP, constant-time) and TLS, against real servers."""

from __future__ import annotations

import json
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

import steppe
from tests.conftest import ServerProcess, start_server

TOKEN = "s3cret-token-for-tests"


@pytest.fixture(scope="module")
def locked_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    server = start_server(tmp_path_factory.mktemp("auth") / "data", "--token", TOKEN)
    yield server
    assert server.stop() == 0
    assert TOKEN not in "".join(server.output)  # never in the server's log


def _status(url: str, headers: dict[str, str] | None = None) -> int:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        with exc:
            body = json.loads(exc.read())
        assert body["error_code"] == "UNAUTHENTICATED" and "token" in body["message"]
        return exc.code


def test_http_needs_the_token(locked_server: ServerProcess) -> None:
    base = locked_server.http_url
    assert _status(f"{base}/api/steppe/v1/server-info") == 200  # how clients find gRPC
    assert _status(f"{base}/api/steppe/v1/experiments") == 401
    assert _status(f"{base}/api/steppe/v1/experiments", {"Authorization": "Bearer nope"}) == 401
    assert _status(f"{base}/api/2.0/mlflow/experiments/search?max_results=5") == 401
    ok = {"Authorization": f"Bearer {TOKEN}"}
    assert _status(f"{base}/api/steppe/v1/experiments", ok) == 200


def test_browser_login_by_url_sets_a_cookie(locked_server: ServerProcess) -> None:
    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args: object, **kwargs: object) -> None:
            return None

    opener = urllib.request.build_opener(NoRedirect)
    with pytest.raises(urllib.error.HTTPError) as caught:
        opener.open(f"{locked_server.http_url}/runs/abc?token={TOKEN}", timeout=10)
    assert caught.value.code == 302
    assert caught.value.headers["Location"].endswith("/runs/abc")
    cookie = caught.value.headers["Set-Cookie"]
    caught.value.close()
    assert "steppe_token=" in cookie and "HttpOnly" in cookie
    assert _status(f"{locked_server.http_url}/", {"Cookie": cookie.split(";")[0]}) == 200


def test_client_without_the_token_gets_a_clear_error(
    locked_server: ServerProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("STEPPE_TOKEN", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_TOKEN", raising=False)
    with pytest.raises(steppe.SteppeError, match="token"):
        steppe.Client(locked_server.http_url).create_run()


def test_client_with_the_token_logs_and_reads(
    locked_server: ServerProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STEPPE_TOKEN", TOKEN)
    uri = locked_server.http_url + "/"  # another URI string: a fresh connection
    client = steppe.Client(uri)
    run = client.create_run()
    for step in range(1000):
        client.log_metric(run.info.run_id, "m", float(step), step=step)
    client.log_param(run.info.run_id, "p", "v")
    assert len(client.get_metric_history(run.info.run_id, "m")) == 1000
    assert client.get_run(run.info.run_id).data.params == {"p": "v"}


def _self_signed(folder: Path) -> tuple[Path, Path]:
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


def test_tls_for_grpc_and_http(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cert, key = _self_signed(tmp_path)
    server = start_server(
        tmp_path / "data", "--tls-cert", str(cert), "--tls-key", str(key), "--token", TOKEN
    )
    try:
        assert server.http_url.startswith("https://")
        monkeypatch.setenv("STEPPE_TLS_CA", str(cert))
        monkeypatch.setenv("STEPPE_TOKEN", TOKEN)
        client = steppe.Client(server.http_url)
        run = client.create_run()
        for step in range(500):
            client.log_metric(run.info.run_id, "m", float(step), step=step)
        assert len(client.get_metric_history(run.info.run_id, "m")) == 500
        # Plain HTTP to the TLS port gets nowhere.
        with pytest.raises(OSError):
            urllib.request.urlopen(server.http_url.replace("https", "http"), timeout=5)
    finally:
        assert server.stop() == 0
