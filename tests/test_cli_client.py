"""The `steppe ui` and `steppe sync` commands against real servers and real spools."""

from __future__ import annotations

import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import steppe
from tests.conftest import ServerProcess, clean_env, start_server, wait_until

OFFLINE_RUN = textwrap.dedent(
    """
    import steppe

    with steppe.start_run() as run:
        steppe.log_param("p", 1)
        for step in range(500):
            steppe.log_metric("loss", 1.0 / (step + 1), step=step)
    print(run.info.run_id)
    """
)


def _steppe(*args: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "steppe", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=90,
    )


def test_ui_port_out_of_range_is_refused_before_anything_is_created(tmp_path: Path) -> None:
    done = _steppe("ui", "--port", "99999", cwd=tmp_path, env=clean_env())
    assert done.returncode == 2
    assert "99999 is not a port: must be 0-65535" in done.stderr
    assert "Traceback" not in done.stderr
    assert list(tmp_path.iterdir()) == []


def test_ui_busy_port_says_so(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        done = _steppe(
            "ui",
            "--port",
            str(port),
            "--data-dir",
            str(tmp_path / "d"),
            cwd=tmp_path,
            env=clean_env(),
        )
    assert done.returncode == 1
    assert f"port {port} is in use; pick another with --port" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


def test_ui_shows_the_server_the_tracking_uri_names(
    steppe_server: ServerProcess, tmp_path: Path
) -> None:
    done = _steppe("ui", cwd=tmp_path, env=clean_env(STEPPE_TRACKING_URI=steppe_server.http_url))
    assert done.returncode == 0, done.stderr
    assert f"steppe UI: {steppe_server.http_url}" in done.stdout
    assert list(tmp_path.iterdir()) == [], "no new server, no new data dir"


def test_server_says_once_ready_where_to_open_it_its_data_dir_and_how_to_stop(
    steppe_server: ServerProcess,
) -> None:
    url = steppe_server.http_url

    def said() -> str:
        return "".join(steppe_server.output)

    wait_until(lambda: "to stop" in said(), timeout_s=10)
    assert f"open {url}/ in a browser" in said()
    assert f"data dir {steppe_server.data_dir}" in said()
    assert "Ctrl+C (or SIGTERM) to stop" in said()


def test_ui_starting_its_own_server_says_where_to_open_it(tmp_path: Path) -> None:
    data = tmp_path / "d"
    with subprocess.Popen(
        [sys.executable, "-m", "steppe", "ui", "--port", "0", "--data-dir", str(data)],
        env=clean_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    ) as ui:
        try:
            assert ui.stdout is not None
            line = ui.stdout.readline()
            assert line.startswith("steppe UI: http://127.0.0.1:"), line
            assert f"/  (data dir {data}; Ctrl+C to stop)" in line, line
        finally:
            ui.terminate()
            assert ui.wait(timeout=30) == 0


def test_sync_to_another_uri_and_discard(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        wrong = f"http://127.0.0.1:{s.getsockname()[1]}"  # nothing listens there
    env = clean_env(STEPPE_MODE="offline", STEPPE_TRACKING_URI=wrong, STEPPE_SPOOL_DIR=str(spool))
    kept = subprocess.run(
        [sys.executable, "-c", OFFLINE_RUN], env=env, capture_output=True, text=True, timeout=60
    )
    assert kept.returncode == 0, kept.stderr
    dropped = subprocess.run(
        [sys.executable, "-c", OFFLINE_RUN], env=env, capture_output=True, text=True, timeout=60
    )
    assert dropped.returncode == 0, dropped.stderr
    kept_id, dropped_id = kept.stdout.strip(), dropped.stdout.strip()
    del env["STEPPE_MODE"]

    gone = _steppe("sync", "--discard", dropped_id, cwd=tmp_path, env=env)
    assert gone.returncode == 0, gone.stderr
    assert f"discarded 500 points and 3 journaled calls of run(s) {dropped_id}" in gone.stdout

    server = start_server(tmp_path / "data")
    try:
        sent = _steppe("sync", "--tracking-uri", server.http_url, cwd=tmp_path, env=env)
        assert sent.returncode == 0, sent.stderr
        assert f"sent 500 points (1 batches) to {server.http_url}" in sent.stdout, sent.stdout
        assert list(spool.iterdir()) == []
        client = steppe.Client(server.http_url)
        assert client.get_run(kept_id).info.status == "FINISHED"
        assert len(client.get_metric_history(kept_id, "loss")) == 500
        with pytest.raises(steppe.errors.ResourceDoesNotExist):
            client.get_run(dropped_id)  # discarded: never delivered
    finally:
        assert server.stop() == 0
