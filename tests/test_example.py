"""The user's own example, as a user runs it: a script in an empty folder, no server
started by hand, then a second process and ``steppe ui`` in the same folder."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import clean_env, wait_until

EXAMPLE = textwrap.dedent(
    """
    import steppe as mlflow

    with mlflow.start_run():
        mlflow.log_param("learning_rate", 0.01)
        mlflow.log_param("n_estimators", 100)
        mlflow.log_metric("accuracy", 0.8)
        print(f"Run ID: {mlflow.active_run().info.run_id}")
    """
)

READ_BACK = textwrap.dedent(
    """
    import json, sys
    import steppe

    run = steppe.Client().get_run(sys.argv[1])
    history = steppe.Client().get_metric_history(sys.argv[1], "accuracy")
    print(json.dumps({"params": dict(run.data.params), "metrics": dict(run.data.metrics),
                      "status": run.info.status,
                      "history": [[m.step, m.value] for m in history]}))
    """
)


def _owner(folder: Path) -> dict[str, int] | None:
    lock = folder / "steppe-data" / "server.lock"
    try:
        text = lock.read_text()
    except FileNotFoundError:
        return None
    return json.loads(text) if text.strip() else None


def _stop_background_server(folder: Path) -> None:
    owner = _owner(folder)
    if owner is None:
        return
    try:
        os.kill(owner["pid"], signal.SIGTERM)
    except ProcessLookupError:
        return

    def gone() -> bool:
        try:
            os.kill(owner["pid"], 0)
        except ProcessLookupError:
            return True
        return False

    wait_until(gone, timeout_s=30)


def _run_name(base: str, run_id: str) -> str:
    with urllib.request.urlopen(f"{base}/api/steppe/v1/runs/{run_id}", timeout=10) as response:
        name: str = json.loads(response.read())["run"]["info"]["run_name"]
    return name


@pytest.fixture
def folder(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path
    _stop_background_server(tmp_path)


def _python(folder: Path, code: str, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        cwd=folder,
        env=clean_env(**env),
        capture_output=True,
        text=True,
        timeout=90,
    )


def test_example_runs_with_no_server_started_by_hand(folder: Path) -> None:
    done = _python(folder, EXAMPLE)
    assert done.returncode == 0, done.stderr
    match = re.search(r"Run ID: ([0-9a-f]{32})", done.stdout)
    assert match, done.stdout
    run_id = match.group(1)

    # The data lives in this folder, like MLflow's ./mlruns.
    assert (folder / "steppe-data" / "catalog.sqlite").exists()
    owner = _owner(folder)
    assert owner is not None and owner["pid"] != os.getpid()
    # As MLflow prints "View run ... at", once per run (on stderr): the page, where the data went.
    base = f"http://127.0.0.1:{owner['http_port']}"
    said = done.stderr.splitlines()
    assert [line for line in said if "View run" in line] == [
        f"steppe: View run {_run_name(base, run_id)} at: {base}/runs/{run_id}"
    ], done.stderr
    assert any(f"data in {folder / 'steppe-data'}" in line for line in said), done.stderr
    quiet = _python(folder, EXAMPLE, MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT="true")
    assert quiet.returncode == 0, quiet.stderr
    assert "View run" not in quiet.stderr and "data in" not in quiet.stderr

    # A second process reads it back with the client...
    read = _python(folder, READ_BACK, run_id)
    assert read.returncode == 0, read.stderr
    got = json.loads(read.stdout)
    assert got["params"] == {"learning_rate": "0.01", "n_estimators": "100"}
    assert got["metrics"] == {"accuracy": 0.8}
    assert got["status"] == "FINISHED"
    assert got["history"] == [[0, 0.8]]

    # ...and over HTTP.
    url = f"http://127.0.0.1:{owner['http_port']}/api/steppe/v1/runs/{run_id}"
    with urllib.request.urlopen(url, timeout=10) as response:
        run = json.loads(response.read())["run"]
    assert run["data"]["params"]["learning_rate"] == "0.01"
    assert run["data"]["metrics"]["accuracy"]["value"] == 0.8

    # Restart the server: everything is still there.
    _stop_background_server(folder)
    assert (folder / "steppe-data" / "metrics").is_dir()
    read = _python(folder, READ_BACK, run_id)
    assert read.returncode == 0, read.stderr
    assert json.loads(read.stdout) == got


def test_steppe_ui_serves_the_run_from_the_same_folder(folder: Path) -> None:
    done = _python(folder, EXAMPLE)
    assert done.returncode == 0, done.stderr
    run_id = re.search(r"Run ID: ([0-9a-f]{32})", done.stdout).group(1)  # type: ignore[union-attr]
    _stop_background_server(folder)  # `steppe ui` then starts its own server

    ui = subprocess.Popen(
        [sys.executable, "-m", "steppe", "ui", "--port", "0"],
        cwd=folder,
        env=clean_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert ui.stdout is not None
        line = ui.stdout.readline()
        match = re.search(r"(http://[\w.:\[\]]+)", line)
        assert match, line + (ui.stderr.read() if ui.poll() is not None and ui.stderr else "")
        base = match.group(1)
        with urllib.request.urlopen(f"{base}/runs/{run_id}", timeout=10) as response:
            assert response.status == 200
            assert "text/html" in response.headers["Content-Type"]
        with urllib.request.urlopen(f"{base}/api/steppe/v1/runs/{run_id}", timeout=10) as r:
            assert json.loads(r.read())["run"]["data"]["params"]["n_estimators"] == "100"

        # A second `steppe ui` uses the running server instead of starting another.
        second = subprocess.Popen(
            [sys.executable, "-m", "steppe", "ui"],
            cwd=folder,
            env=clean_env(),
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert second.stdout is not None
            assert base in second.stdout.readline()
        finally:
            second.terminate()
            second.wait(timeout=10)
            second.stdout.close()  # type: ignore[union-attr]
    finally:
        ui.send_signal(signal.SIGINT)
        assert ui.wait(timeout=30) == 0
        ui.stdout.close()  # type: ignore[union-attr]
        ui.stderr.close()  # type: ignore[union-attr]
