"""The client's spool: what a killed process logged reaches the server via `steppe sync`,
exactly once, and memory stays bounded while the server is down."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import steppe
from tests.conftest import clean_env, run_sync, start_server, wait_until

CHILD = textwrap.dedent(
    """
    import os, signal, sys
    import steppe

    run = steppe.start_run()
    steppe.log_param("p", 1)
    steppe.log_metric("before", 1.0)
    steppe.flush()
    print(run.info.run_id, flush=True)
    sys.stdin.readline()              # the test stops the server now
    for step in range(50_000):
        steppe.log_metric("loss", step * 0.5, step=step)
    from steppe.connection import connect
    sender = connect(steppe.get_tracking_uri()).sender
    sender.encode_pending()           # what the sender thread does every 0.1 s
    print(sender.unacked_points(), flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
    """
)


def _stop_owner(data_dir: Path) -> None:
    owner = json.loads((data_dir / "server.lock").read_text())
    os.kill(owner["pid"], signal.SIGTERM)

    def released() -> bool:
        return (data_dir / "server.lock").read_text().strip() == ""

    wait_until(released, timeout_s=30)


def test_killed_client_points_are_delivered_by_sync(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    spool_dir = tmp_path / "spool"
    env = clean_env(STEPPE_TRACKING_URI=str(data_dir), STEPPE_SPOOL_DIR=str(spool_dir))
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD],
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdin and child.stdout
    run_id = child.stdout.readline().strip()
    _stop_owner(data_dir)
    child.stdin.write("go\n")
    child.stdin.flush()
    unacked = int(child.stdout.readline())
    assert child.wait(timeout=60) == -signal.SIGKILL
    child.stdin.close()
    child.stdout.close()
    assert unacked == 50_000
    assert list(spool_dir.iterdir()), "the spool should hold the unacked batches"

    synced = run_sync(env, timeout_s=120)
    assert synced.returncode == 0, synced.stderr
    # The spool holds every batch not yet released, acked ones included; resending those is
    # harmless because the server drops batches it already has.
    assert re.search(r"sent 5000[01] points", synced.stdout), synced.stdout
    assert list(spool_dir.iterdir()) == []

    # Idempotent: a second sync has nothing left to send.
    again = run_sync(env, timeout_s=60)
    assert "nothing to send" in again.stdout

    server = None
    try:
        _stop_owner(data_dir)
        server = start_server(data_dir)
        client = steppe.Client(server.http_url)
        history = client.get_metric_history(run_id, "loss")
        assert [m.step for m in history] == list(range(50_000))
        assert client.get_run(run_id).data.params == {"p": "1"}
        assert len(client.get_metric_history(run_id, "before")) == 1  # no duplicate
    finally:
        if server is not None:
            assert server.stop() == 0


def test_server_down_mid_run_memory_stays_bounded_and_nothing_is_lost(
    tmp_path: Path, monkeypatch: object
) -> None:
    import pytest

    mp: pytest.MonkeyPatch = monkeypatch  # type: ignore[assignment]
    mp.setenv("STEPPE_SPOOL_DIR", str(tmp_path / "spool"))
    mp.setenv("STEPPE_MAX_INFLIGHT_BYTES", str(256 << 10))
    mp.setenv("STEPPE_BUFFER_POINTS", "10000")
    data_dir = tmp_path / "data"
    server = start_server(data_dir)
    client = steppe.Client(str(data_dir))  # a local data dir: found through its lock file
    run = client.create_run()
    run_id = run.info.run_id
    client.log_metric(run_id, "loss", 0.0, step=0)
    client.flush()
    assert server.stop() == 0

    from steppe.connection import connect

    sender = connect(str(data_dir)).sender
    for step in range(1, 300_001):
        client.log_metric(run_id, "loss", float(step), step=step)
    sender.encode_pending()
    assert sender.unacked_points() == 300_000
    assert sender._memory_bytes <= 256 << 10  # the rest waits in the spool on disk
    assert len(sender.buffer) == 0

    server = start_server(data_dir)  # back, on other ports
    try:
        client.flush(timeout_s=60)
        history = client.get_metric_history(run_id, "loss")
        assert [m.step for m in history] == list(range(300_001))
    finally:
        assert server.stop() == 0
