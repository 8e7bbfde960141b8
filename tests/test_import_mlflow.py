"""`steppe import mlflow`: file stores, sqlite and PostgreSQL databases and a live MLflow
server, written by mlflow itself, arrive in a real steppe server exactly (every point,
param, tag, artifact byte, registry alias); a re-run sends nothing; an interrupted import
resumes without a duplicate."""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import steppe
from steppe.importers import sources
from steppe.importers.mlflow_sql import SqlSource
from steppe.importers.records import DONE_TAG, Piece
from tests.conftest import ServerProcess
from tests.importing import (
    MlflowServer,
    assert_same_runs,
    dump_mlflow,
    dump_steppe,
    start_mlflow_server,
    start_postgres,
    steppe_import,
    write_history,
)


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    server = start_mlflow_server(tmp_path_factory.mktemp("mlflow-server"))
    yield server
    server.stop()


def _check_registry(client: steppe.Client, source: dict[str, object], prefix: str) -> None:
    models = source["models"]
    assert isinstance(models, dict)
    want = models[f"{prefix}-model"]
    name = f"{prefix}-model"
    model = client.get_registered_model(name)
    assert model.description == want["description"]
    assert {k: v for k, v in model.tags.items() if not k.startswith("steppe.")} == want["tags"]
    versions = client.search_model_versions(f"name = '{name}'")
    assert sorted(int(v.version) for v in versions) == want["versions"]
    for alias, version in want["aliases"].items():
        got = client.get_model_version_by_alias(name, alias)
        assert int(got.version) == version
        assert got.source.startswith(f"runs:/{got.run_id}/model")


def _import_and_compare(
    source_uri: str, prefix: str, server: ServerProcess, tmp_path: Path
) -> list[str]:
    ids = write_history(source_uri, prefix, tmp_path)
    report_file = tmp_path / "report.json"
    done = steppe_import("mlflow", source_uri, "--report", str(report_file), uri=server.http_url)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "points/s" in done.stderr and "ETA" in done.stderr  # the progress line
    if source_uri.startswith("http"):
        assert "ETA by runs" in done.stderr  # a server cannot count points up front
    report = json.loads(report_file.read_text())
    assert report["ok"], report["differences"]
    assert report["runs"] == {"source": 4, "in_steppe": 4, "imported_now": 4, "complete_before": 0}
    assert report["points"]["source"] == report["points"]["in_steppe"] == 300 * 2 + 5 + 2 > 0
    assert report["params"] == {"source": 4, "matching": 4}
    source = dump_mlflow(source_uri, prefix, tmp_path)
    client = steppe.Client(server.http_url)
    assert_same_runs(source, dump_steppe(client, ids, tmp_path / "steppe-files"))
    _check_registry(client, source, prefix)

    again = steppe_import("mlflow", source_uri, "--report", str(report_file), uri=server.http_url)
    assert again.returncode == 0, again.stderr[-3000:]
    second = json.loads(report_file.read_text())
    assert second["ok"], second["differences"]
    assert second["runs"]["imported_now"] == 0 and second["runs"]["complete_before"] == 4
    assert second["points"]["sent_now"] == 0
    assert second["points"]["in_steppe"] == report["points"]["in_steppe"]
    assert second["models"]["versions_in_steppe"] == 2  # not registered again
    return ids


@pytest.mark.timeout(300)  # several mlflow processes: slow on a loaded machine
def test_file_store_round_trip(steppe_server: ServerProcess, tmp_path: Path) -> None:
    store = tmp_path / "mlruns"
    _import_and_compare(store.as_uri(), f"fs-{uuid.uuid4().hex[:8]}", steppe_server, tmp_path)


@pytest.mark.timeout(300)  # several mlflow processes: slow on a loaded machine
def test_sqlite_store_round_trip(steppe_server: ServerProcess, tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    _import_and_compare(uri, f"db-{uuid.uuid4().hex[:8]}", steppe_server, tmp_path)


@pytest.mark.timeout(300)  # several mlflow processes: slow on a loaded machine
def test_postgresql_store_round_trip(steppe_server: ServerProcess, tmp_path: Path) -> None:
    pg = start_postgres()
    if pg is None:
        reason = "PostgreSQL binaries (Debian's postgresql) or psycopg not installed"
        if os.environ.get("CI"):
            pytest.fail(reason + ": .ci/run installs them", pytrace=False)
        pytest.skip(reason)
    try:
        _import_and_compare(pg.uri, f"pg-{uuid.uuid4().hex[:8]}", steppe_server, tmp_path)
    finally:
        pg.stop()


@pytest.mark.timeout(300)  # several mlflow processes: slow on a loaded machine
def test_mlflow_server_round_trip(
    steppe_server: ServerProcess, mlflow_server: MlflowServer, tmp_path: Path
) -> None:
    _import_and_compare(mlflow_server.url, f"rest-{uuid.uuid4().hex[:8]}", steppe_server, tmp_path)


class _Interrupted(Exception):
    pass


class _StopsAfter:
    """A source that breaks off after ``pieces`` pieces (a crash mid-import), once the
    server has stored some of them (``stored`` polled, with a deadline)."""

    def __init__(self, inner: SqlSource, pieces: int, stored: Callable[[], int]) -> None:
        self._inner = inner
        self._left = pieces
        self._stored = stored
        self.kind, self.location = inner.kind, inner.location

    def __getattr__(self, name: str) -> object:
        return getattr(self._inner, name)

    def points(self, run_ids: set[str]) -> Iterator[Piece]:
        for piece in self._inner.points(run_ids):
            if self._left == 0:
                deadline = time.monotonic() + 60
                while self._stored() == 0 and time.monotonic() < deadline:
                    time.sleep(0.05)  # polling the server for the first acked batch
                raise _Interrupted
            self._left -= 1
            yield piece


def test_interrupted_import_resumes_exactly_once(
    steppe_server: ServerProcess, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Small pieces and batches, broken off mid-run: the second attempt resends the first
    one's batches under the same stream ids and seqs, the server drops them, and every
    point is stored once."""
    import steppe.importers.mlflow_sql as mlflow_sql
    from steppe.importers.target import Importer

    monkeypatch.setattr(mlflow_sql, "_CHUNK_ROWS", 50)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    prefix = f"cut-{uuid.uuid4().hex[:8]}"
    ids = write_history(uri, prefix, tmp_path)
    client = steppe.Client(steppe_server.http_url)

    def stored() -> int:
        got = client.sql(f"SELECT count(*) AS n FROM metrics WHERE run_id = '{ids[0]}'")
        n: int = got.column("n")[0].as_py()
        return n

    cut = _StopsAfter(SqlSource(uri), 7, stored)
    with pytest.raises(_Interrupted):
        Importer(client, cut, progress=False, batch_points=64).run()
    assert 0 < stored() < 605  # part of the first run got in
    tags = client.get_run(ids[0]).data.tags
    assert DONE_TAG not in tags  # not marked complete

    report = sources.run(client, SqlSource(uri), progress=False, batch_points=64)
    assert report["ok"], report["differences"]
    assert report["points"]["in_steppe"] == report["points"]["source"] == 607
    dupes = client.sql(
        f"SELECT key, step, timestamp, count(*) AS n FROM metrics WHERE run_id = '{ids[0]}' "
        "GROUP BY ALL HAVING count(*) > 1"
    )
    assert dupes.num_rows == 0
    # every point of an unfinished run goes again; the server kept each batch once
    assert report["points"]["sent_now"] == 607


def test_run_already_in_steppe_is_left_alone(steppe_server: ServerProcess, tmp_path: Path) -> None:
    """A run id that steppe holds but did not import (logged natively) is not written to."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    ids = write_history(uri, f"own-{uuid.uuid4().hex[:8]}", tmp_path)
    client = steppe.Client(steppe_server.http_url)
    client.create_run(run_id=ids[1])
    report = sources.run(client, SqlSource(uri), progress=False)
    assert any(ids[1] in d and "not imported" in d for d in report["differences"])
    assert not report["ok"]
    got = client.sql(f"SELECT count(*) AS n FROM metrics WHERE run_id = '{ids[1]}'")
    assert got.column("n")[0].as_py() == 0


def test_database_order_is_total_across_chunks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Points sharing a run, key and step (ties the SQL order leaves open) come out in the
    same full order whatever the chunk size: the order a resumed import relies on."""
    import steppe.importers.mlflow_sql as mlflow_sql

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    write_history(uri, "ties", tmp_path)
    source = SqlSource(uri)
    ids = {r.run_id for r in source.runs()}

    def read(chunk: int) -> list[tuple[str, str, int, int, str]]:
        monkeypatch.setattr(mlflow_sql, "_CHUNK_ROWS", chunk)
        return [
            (p.run_id, k, s, t, repr(v))
            for p in SqlSource(uri).points(ids)
            for k, s, t, v in zip(p.keys, p.steps, p.timestamps_ms, p.values, strict=True)
        ]

    full = read(65536)
    assert len(full) == 607
    by_run = sorted(full, key=lambda r: (r[0], r[1], r[2], r[3], r[4]))
    assert [r[:4] for r in full] == [r[:4] for r in by_run]  # ties in (t, v) order
    for chunk in (1, 2, 3, 7, 50):
        assert read(chunk) == full, chunk
