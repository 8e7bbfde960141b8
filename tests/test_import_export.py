"""`steppe export`: runs out as Parquet + JSON and back in through `steppe import steppe`
into another server, exactly; and into a real MLflow server with mlflow's client, where
mlflow reads back every point, param, tag and file; a second export sends nothing."""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

import steppe
from tests.conftest import ServerProcess, start_server
from tests.importing import (
    MlflowServer,
    dump_mlflow,
    dump_steppe,
    mlflow_env,
    start_mlflow_server,
    steppe_import,
    write_history,
)


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    server = start_mlflow_server(tmp_path_factory.mktemp("mlflow-target"))
    yield server
    server.stop()


def _export(*args: str, uri: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "steppe", "export", *args, "--tracking-uri", uri],
        capture_output=True,
        text=True,
        timeout=180,
        env=mlflow_env(),
    )


def _without_import_tags(dump: dict[str, Any]) -> dict[str, Any]:
    for run in dump["runs"].values():
        run["tags"] = {k: v for k, v in run["tags"].items() if not k.startswith("steppe.")}
    return dump


def _history_in_steppe(server: ServerProcess, tmp_path: Path) -> tuple[str, list[str]]:
    """MLflow's own history (written to sqlite by mlflow) imported into ``server``."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    prefix = f"ex-{uuid.uuid4().hex[:8]}"
    ids = write_history(uri, prefix, tmp_path)
    done = steppe_import("mlflow", uri, "--no-progress", uri=server.http_url)
    assert done.returncode == 0, done.stderr[-3000:]
    return prefix, ids


def test_export_to_folder_and_back_is_exact(steppe_server: ServerProcess, tmp_path: Path) -> None:
    prefix, ids = _history_in_steppe(steppe_server, tmp_path)
    out = tmp_path / "export"
    for exp in ("-a", "-b"):
        done = _export(
            "--experiment", prefix + exp, "--output", str(out), uri=steppe_server.http_url
        )
        assert done.returncode == 0, done.stderr[-3000:]
    assert sorted(p.name for p in (out / "runs").iterdir()) == sorted(ids)
    table = pq.read_table(out / "runs" / ids[0] / "metrics.parquet")
    assert table.num_rows == 605 and table.schema.names == ["key", "step", "timestamp", "value"]
    original = dump_steppe(steppe.Client(steppe_server.http_url), ids, tmp_path / "a")

    other = start_server(tmp_path / "other-data")
    try:
        done = steppe_import("steppe", str(out), "--no-progress", uri=other.http_url)
        assert done.returncode == 0, done.stderr[-3000:]
        assert "no differences" in done.stderr
        copy = dump_steppe(steppe.Client(other.http_url), ids, tmp_path / "b")
    finally:
        other.stop()
    assert _without_import_tags(copy) == _without_import_tags(original)


@pytest.mark.timeout(300)
def test_export_to_a_real_mlflow_server(
    steppe_server: ServerProcess, mlflow_server: MlflowServer, tmp_path: Path
) -> None:
    prefix, ids = _history_in_steppe(steppe_server, tmp_path)
    for exp in ("-a", "-b"):
        done = _export(
            "--experiment",
            prefix + exp,
            "--to-mlflow",
            mlflow_server.url,
            uri=steppe_server.http_url,
        )
        assert done.returncode == 0, done.stderr[-3000:]
    theirs = dump_mlflow(mlflow_server.url, prefix, tmp_path)
    ours = dump_steppe(steppe.Client(steppe_server.http_url), ids, tmp_path / "s")
    by_steppe_id = {r["tags"]["steppe.export.run_id"]: r for r in theirs["runs"].values()}
    assert set(by_steppe_id) == set(ids)
    for run_id, want in ours["runs"].items():
        got = by_steppe_id[run_id]
        for field in (
            "experiment",
            "name",
            "status",
            "start_time",
            "end_time",
            "lifecycle_stage",
            "params",
            "history",
        ):
            assert got[field] == want[field], (run_id, field)
        mine = {k: v for k, v in want["tags"].items() if not k.startswith("steppe.")}
        assert {k: got["tags"].get(k) for k in mine} == mine
        if want["lifecycle_stage"] == "active":
            assert got["files"] == want["files"]

    again = _export(
        "--experiment", prefix + "-a", "--to-mlflow", mlflow_server.url, uri=steppe_server.http_url
    )
    assert again.returncode == 0, again.stderr[-3000:]
    assert "(2 complete before), 0 points sent" in again.stderr
