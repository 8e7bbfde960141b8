"""Artifacts logged offline or while the server is down: copied into the spool, delivered
by `steppe sync` or on reconnect, read back byte for byte through the real mlflow client."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import mlflow
import pytest

import steppe
from steppe import connection, errors
from steppe.lock import live_owner
from steppe.spool import artifact_file, orphans
from tests.conftest import clean_env, run_sync, start_server

OFFLINE_SCRIPT = textwrap.dedent(
    """
    import os, sys
    from pathlib import Path
    import steppe

    work = Path(sys.argv[1])
    with steppe.start_run(run_name="offline-artifacts") as run:
        steppe.log_metric("loss", 0.5, step=1)
        steppe.log_text("héllo wörld\\n", "notes/hello.txt")
        steppe.log_dict({"lr": 0.1, "layers": [1, 2]}, "config.json")
        source = work / "weights.bin"
        steppe.log_artifact(str(source), artifact_path="model")
        os.remove(source)  # the user may delete it once the call returned
        steppe.log_artifacts(str(work / "tree"), artifact_path="tree")
        try:
            steppe.Client().list_artifacts(run.info.run_id)
        except steppe.errors.ServerUnavailable as exc:
            print("list:", exc, file=sys.stderr)
        print(run.info.run_id, flush=True)
    """
)


def _tree(work: Path) -> dict[str, bytes]:
    """The files logged by the scripts, by their artifact path."""
    weights = os.urandom(3 << 20)  # several copy chunks: copied streaming
    (work / "weights.bin").write_bytes(weights)
    (work / "tree" / "sub").mkdir(parents=True)
    (work / "tree" / "a.txt").write_bytes(b"a\n")
    (work / "tree" / "sub" / "b.bin").write_bytes(bytes(range(256)))
    return {
        "notes/hello.txt": "héllo wörld\n".encode(),
        "config.json": json.dumps({"lr": 0.1, "layers": [1, 2]}, indent=2).encode(),
        "model/weights.bin": weights,
        "tree/a.txt": b"a\n",
        "tree/sub/b.bin": bytes(range(256)),
    }


def _check_with_mlflow(http_url: str, run_id: str, want: dict[str, bytes], dst: Path) -> None:
    client = mlflow.MlflowClient(tracking_uri=http_url)
    for path, data in want.items():
        local = client.download_artifacts(run_id, path, str(dst))
        assert Path(local).read_bytes() == data, path
    listed = sorted(f.path for f in client.list_artifacts(run_id))
    assert listed == sorted({p.split("/")[0] for p in want})


def _spooled_files(spool_dir: Path) -> list[Path]:
    return [p for p in spool_dir.rglob("*") if p.is_file() and p.parent.name == "artifacts"]


def test_offline_artifacts_are_sent_by_sync(tmp_path: Path) -> None:
    data_dir, spool_dir, work = tmp_path / "data", tmp_path / "spool", tmp_path / "work"
    work.mkdir()
    want = _tree(work)
    env = clean_env(
        STEPPE_MODE="offline",
        STEPPE_TRACKING_URI=str(data_dir),
        STEPPE_SPOOL_DIR=str(spool_dir),
    )
    done = subprocess.run(
        [sys.executable, "-c", OFFLINE_SCRIPT, str(work)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    assert "list: offline mode (STEPPE_MODE=offline): reads need a server" in done.stderr
    run_id = done.stdout.split()[0]
    assert not (work / "weights.bin").exists()
    assert len(_spooled_files(spool_dir)) == len(want)  # copies, each in the spool
    backup = tmp_path / "spool-backup"
    shutil.copytree(spool_dir, backup)

    del env["STEPPE_MODE"]
    nobody = subprocess.run(
        [
            sys.executable,
            "-m",
            "steppe",
            "sync",
            "--tracking-uri",
            f"http://127.0.0.1:{_free_port()}",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert nobody.returncode == 1 and "kept for the next try" in nobody.stderr, nobody.stderr
    assert len(_spooled_files(spool_dir)) == len(want)  # a failed delivery keeps them all
    synced = run_sync(env, timeout_s=90)
    assert synced.returncode == 0, synced.stderr
    assert f"sent 1 points (1 batches) and {len(want)} artifact(s)" in synced.stdout
    assert orphans(spool_dir) == [] and _spooled_files(spool_dir) == []
    _, owner = live_owner(data_dir)  # sync started a server for the data dir
    assert owner is not None
    try:
        _check_with_mlflow(owner.http_url, run_id, want, tmp_path / "dl1")
        run = steppe.Client(owner.http_url).get_run(run_id)
        assert run.info.status == "FINISHED" and run.info.run_name == "offline-artifacts"
        # A replay cut off before its spool was removed runs again: same paths, same bytes.
        # (Its calls and artifacts only: the server may still hold the first sync's stream.)
        shutil.rmtree(spool_dir)
        shutil.copytree(backup, spool_dir)
        for segment in spool_dir.rglob("*.spool"):
            segment.unlink()
        again = run_sync(env, timeout_s=90)
        assert again.returncode == 0, again.stderr
        assert f"sent 0 points (0 batches) and {len(want)} artifact(s)" in again.stdout
        _check_with_mlflow(owner.http_url, run_id, want, tmp_path / "dl2")
    finally:
        os.kill(owner.pid, signal.SIGTERM)


KILLED_SCRIPT = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    import steppe

    work = Path(sys.argv[1])
    with steppe.start_run(run_name="server-killed") as run:
        steppe.log_text("before\\n", "before.txt")
        print(run.info.run_id, flush=True)
        sys.stdin.readline()  # the test stops the server now
        steppe.log_text("during\\n", "during/notes.txt")
        steppe.log_artifact(str(work / "weights.bin"))
        steppe.log_artifacts(str(work / "tree"), artifact_path="tree")
        steppe.log_metric("loss", 0.25, step=2)
        print("spooled", flush=True)
        sys.stdin.readline()  # the test restarts the server now
    print("done", flush=True)
    """
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_artifacts_logged_while_the_server_is_down_arrive_on_reconnect(tmp_path: Path) -> None:
    http_port, grpc_port = _free_port(), _free_port()
    ports = ("--http-port", str(http_port), "--grpc-port", str(grpc_port))
    spool_dir, work = tmp_path / "spool", tmp_path / "work"
    work.mkdir()
    want = _tree(work)
    del want["notes/hello.txt"], want["config.json"], want["model/weights.bin"]
    want.update(
        {
            "before.txt": b"before\n",
            "during/notes.txt": b"during\n",
            "weights.bin": (work / "weights.bin").read_bytes(),
        }
    )
    server = start_server(tmp_path / "data", *ports)
    env = clean_env(
        STEPPE_TRACKING_URI=f"http://127.0.0.1:{http_port}",
        STEPPE_SPOOL_DIR=str(spool_dir),
        STEPPE_CONNECT_TIMEOUT_S="1",
    )
    child = subprocess.Popen(
        [sys.executable, "-c", KILLED_SCRIPT, str(work)],
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert child.stdin and child.stdout
    try:
        run_id = child.stdout.readline().strip()
        assert len(run_id) == 32, child.stderr.read() if child.stderr else ""
        assert server.stop() == 0
        child.stdin.write("go\n")
        child.stdin.flush()
        assert child.stdout.readline().strip() == "spooled"  # no error from the log calls
        assert len(_spooled_files(spool_dir)) == 4
        server = start_server(tmp_path / "data", *ports)
        out, err = child.communicate("go\n", timeout=90)
        assert child.returncode == 0, err
        assert "done" in out and "Traceback" not in err, err
        _check_with_mlflow(server.http_url, run_id, want, tmp_path / "dl")
        assert [m.value for m in steppe.Client(server.http_url).get_metric_history(run_id, "loss")]
        assert orphans(spool_dir) == [] and _spooled_files(spool_dir) == []
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        assert server.stop() == 0


@pytest.fixture
def offline_client(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[steppe.Client]:
    """A Client in offline mode on a data dir of its own, its spool in tmp_path/spool."""
    monkeypatch.setenv("STEPPE_MODE", "offline")
    monkeypatch.setenv("STEPPE_SPOOL_DIR", str(tmp_path / "spool"))
    uri = str(tmp_path / "data")
    yield steppe.Client(uri)
    conn = connection._connections.pop(uri, None)
    if conn is not None:
        conn.close(1.0)


def test_the_spool_cap_refuses_an_artifact_loudly(
    offline_client: steppe.Client, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STEPPE_SPOOL_MAX_BYTES", "1000000")
    run_id = offline_client.create_run(run_name="capped").info.run_id
    offline_client.log_text(run_id, "small", "small.txt")  # fits
    (tmp_path / "tree").mkdir()
    big = tmp_path / "tree" / "big.bin"
    big.write_bytes(bytes(1_000_000))
    with pytest.raises(errors.SteppeError) as raised:
        offline_client.log_artifact(run_id, big)
    message = str(raised.value)
    assert "STEPPE_SPOOL_MAX_BYTES" in message and "1,000,000 bytes" in message
    assert "steppe sync" in message
    spooled = _spooled_files(tmp_path / "spool")
    assert [p.read_bytes() for p in spooled] == [b"small"]  # refused whole, nothing half-kept
    with pytest.raises(errors.SteppeError, match="STEPPE_SPOOL_MAX_BYTES"):
        offline_client.log_artifacts(run_id, tmp_path / "tree", artifact_path="all")
    assert len(_spooled_files(tmp_path / "spool")) == 1


def test_traversal_in_artifact_paths_is_refused_offline(
    offline_client: steppe.Client, tmp_path: Path
) -> None:
    run_id = offline_client.create_run(run_name="traversal").info.run_id
    source = tmp_path / "x.txt"
    source.write_text("x")
    with pytest.raises(errors.InvalidParameterValue, match="'artifact_path'"):
        offline_client.log_artifact(run_id, source, artifact_path="../x")
    with pytest.raises(errors.InvalidParameterValue, match="'artifact_path'"):
        offline_client.log_artifacts(run_id, tmp_path, artifact_path="a/../../b")
    with pytest.raises(errors.InvalidParameterValue, match="'artifact_file'"):
        offline_client.log_text(run_id, "x", "../x.txt")
    with pytest.raises(errors.InvalidParameterValue, match="'artifact_file'"):
        offline_client.log_dict(run_id, {}, "/etc/x.json")
    assert _spooled_files(tmp_path / "spool") == []


def test_artifact_reads_offline_say_a_server_is_needed(offline_client: steppe.Client) -> None:
    run_id = offline_client.create_run(run_name="reads").info.run_id
    offline_client.log_text(run_id, "kept", "kept.txt")
    with pytest.raises(errors.ServerUnavailable, match=r"offline mode.*steppe sync"):
        offline_client.list_artifacts(run_id)
    with pytest.raises(errors.ServerUnavailable, match=r"offline mode.*steppe sync"):
        offline_client.download_artifacts(run_id, "kept.txt")


def test_a_journaled_artifact_name_never_leaves_the_spool(tmp_path: Path) -> None:
    """The name comes from ops.jsonl on disk: only the spool's own file names are read."""
    name = "artifacts/" + "0" * 32
    assert artifact_file(tmp_path, name) == tmp_path / "artifacts" / ("0" * 32)
    for bad in ("../../etc/passwd", "artifacts/../../x", "/etc/passwd", "artifacts/a/b", "x"):
        with pytest.raises(ValueError, match="not a spool file name"):
            artifact_file(tmp_path, bad)


def test_a_gateway_answering_for_an_absent_server_is_retried_not_a_rejection() -> None:
    """A proxy's plain 502/503/504 means the server is away: ServerUnavailable (the sender
    keeps the journaled call and retries), while other non-JSON errors stay errors."""
    import http.server
    import threading
    import urllib.request

    from steppe import http as steppe_http

    class Gateway(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            status = int(self.path.strip("/"))
            self.send_response(status)
            self.send_header("Content-Type", "text/html")
            self.end_headers()
            self.wfile.write(b"<html>Bad Gateway</html>")

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Gateway)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        for status in (502, 503, 504):
            with pytest.raises(errors.ServerUnavailable, match=f"HTTP {status}"):
                steppe_http.open_checked(urllib.request.Request(f"{base}/{status}"), 5)
        with pytest.raises(errors.SteppeError) as raised:
            steppe_http.open_checked(urllib.request.Request(f"{base}/500"), 5)
        assert not isinstance(raised.value, errors.ServerUnavailable)
    finally:
        server.shutdown()
        server.server_close()
