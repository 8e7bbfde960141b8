"""Offline mode and a server that is down when the run starts: the training loop goes on,
everything is spooled, and it all arrives once the server is reachable."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import steppe
from steppe.lock import live_owner
from tests.conftest import clean_env, run_sync, start_server

SCRIPT = textwrap.dedent(
    """
    import sys
    import steppe

    steppe.set_experiment("far-away")
    with steppe.start_run(run_name="offline-run") as run:
        steppe.log_params({"lr": 0.1, "layers": 3})
        steppe.set_tag("where", "plane")
        for step in range(20_000):
            steppe.log_metric("loss", 1.0 / (step + 1), step=step)
        print(run.info.run_id, flush=True)
        if len(sys.argv) > 1:
            sys.stdin.readline()  # the test brings the server up now
    print("done", flush=True)
    """
)


def _check(http_url: str, run_id: str) -> None:
    client = steppe.Client(http_url)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "offline-run"
    assert run.data.params == {"lr": "0.1", "layers": "3"}
    assert run.data.tags["where"] == "plane"
    assert client.get_experiment(run.info.experiment_id).name == "far-away"
    history = client.get_metric_history(run_id, "loss")
    assert [m.step for m in history] == list(range(20_000))


def test_offline_run_is_sent_by_sync(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    env = clean_env(
        STEPPE_MODE="offline",
        STEPPE_TRACKING_URI=str(data_dir),
        STEPPE_SPOOL_DIR=str(tmp_path / "spool"),
    )
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    run_id = done.stdout.split()[0]
    assert not (data_dir / "server.lock").exists(), "offline mode must not start a server"

    del env["STEPPE_MODE"]
    synced = run_sync(env, timeout_s=90)
    assert synced.returncode == 0, synced.stderr
    assert "sent 20000 points" in synced.stdout
    _, owner = live_owner(data_dir)  # sync started a server for the data dir
    assert owner is not None
    try:
        _check(owner.http_url, run_id)
    finally:
        os.kill(owner.pid, signal.SIGTERM)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_server_down_when_the_run_starts(tmp_path: Path) -> None:
    http_port, grpc_port = _free_port(), _free_port()
    env = clean_env(
        STEPPE_TRACKING_URI=f"http://127.0.0.1:{http_port}",
        STEPPE_SPOOL_DIR=str(tmp_path / "spool"),
        STEPPE_CONNECT_TIMEOUT_S="1",
    )
    child = subprocess.Popen(
        [sys.executable, "-c", SCRIPT, "wait"],
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert child.stdin and child.stdout
    run_id = child.stdout.readline().strip()  # logged everything with no server at all
    assert len(run_id) == 32, child.stderr.read() if child.stderr else ""
    # The server comes up at the address the client was told (flags given last win).
    server = start_server(
        tmp_path / "data", "--http-port", str(http_port), "--grpc-port", str(grpc_port)
    )
    try:
        child.stdin.write("go\n")
        child.stdin.flush()
        out, err = child.communicate(timeout=90)
        assert child.returncode == 0, err
        assert "done" in out
        _check(server.http_url, run_id)
    finally:
        assert server.stop() == 0


END_SCRIPT = textwrap.dedent(
    """
    import steppe

    with steppe.start_run(run_name="never-acked") as run:
        for step in range(1_000):
            steppe.log_metric("loss", 1.0 / (step + 1), step=step)
        print(run.info.run_id, flush=True)
    print("done", flush=True)
    """
)


def test_server_down_at_the_end_waits_once_then_sync_ends_the_run(tmp_path: Path) -> None:
    http_port, grpc_port = _free_port(), _free_port()
    env = clean_env(
        STEPPE_TRACKING_URI=f"http://127.0.0.1:{http_port}",
        STEPPE_SPOOL_DIR=str(tmp_path / "spool"),
        STEPPE_CONNECT_TIMEOUT_S="1",
        STEPPE_FLUSH_TIMEOUT_S="2",
    )
    done = subprocess.run(
        [sys.executable, "-c", END_SCRIPT], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    assert done.stderr.count("waiting for 1,000 points to be acked by") == 1, done.stderr
    assert "Ctrl-C to leave them in the spool for `steppe sync`" in done.stderr
    assert done.stderr.count("were not acked") == 1, done.stderr  # one wait, not two
    run_id = done.stdout.split()[0]
    assert "done" in done.stdout

    server = start_server(
        tmp_path / "data", "--http-port", str(http_port), "--grpc-port", str(grpc_port)
    )
    try:
        synced = run_sync(env, timeout_s=90)
        assert synced.returncode == 0, synced.stderr
        assert "sent 1000 points" in synced.stdout, synced.stdout
        client = steppe.Client(server.http_url)
        run = client.get_run(run_id)
        assert run.info.status == "FINISHED" and run.info.end_time is not None
        assert len(client.get_metric_history(run_id, "loss")) == 1_000
    finally:
        assert server.stop() == 0


LATE_SCRIPT = textwrap.dedent(
    """
    import sys
    import steppe

    steppe.set_experiment("named-while-down")  # no server: resolved by name later
    print("set", flush=True)
    sys.stdin.readline()  # the test brings the server up now
    with steppe.start_run(run_name="after") as run:
        steppe.log_param("lr", 0.1)
    print(run.info.run_id, flush=True)
    """
)


def test_an_experiment_named_while_the_server_was_down_is_resolved_when_it_is_up(
    tmp_path: Path,
) -> None:
    """set_experiment answers locally ("name:<name>") while the server is down; a run
    created directly once it is up must land in that experiment, not be refused."""
    http_port, grpc_port = _free_port(), _free_port()
    env = clean_env(
        STEPPE_TRACKING_URI=f"http://127.0.0.1:{http_port}",
        STEPPE_SPOOL_DIR=str(tmp_path / "spool"),
        STEPPE_CONNECT_TIMEOUT_S="1",
    )
    child = subprocess.Popen(
        [sys.executable, "-c", LATE_SCRIPT],
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert child.stdin and child.stdout
    assert child.stdout.readline().strip() == "set", child.stderr.read() if child.stderr else ""
    server = start_server(
        tmp_path / "data", "--http-port", str(http_port), "--grpc-port", str(grpc_port)
    )
    try:
        out, err = child.communicate("go\n", timeout=90)
        assert child.returncode == 0, err
        run = steppe.Client(server.http_url).get_run(out.split()[-1])
        assert steppe.Client(server.http_url).get_experiment(run.info.experiment_id).name == (
            "named-while-down"
        )
        assert run.data.params == {"lr": "0.1"}
    finally:
        assert server.stop() == 0
