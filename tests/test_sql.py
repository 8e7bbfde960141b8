"""User SQL (steppe.query.sql and POST /api/steppe/v1/sql): the public views over a real
SqliteCatalog and real Parquet files + an Arrow tail, every sandbox refusal (each layer on
its own), the time and row limits, and the JSON / Arrow IPC answers over real HTTP."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.ipc
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from steppe.errors import InvalidParameterValue
from steppe.ingest.layout import DataDir, Snapshot
from steppe.ingest.sqlite_catalog import SqliteCatalog
from steppe.query.app import make_app
from steppe.query.sql import MAX_MAX_ROWS, SqlSandbox
from steppe.query.views import CatalogTables, CatalogView, open_catalog_read_only
from tests.query_data import FixedSource, Point, latest_rows, snapshot_of

API = "/api/steppe/v1"
NAN, INF = math.nan, math.inf
RUN_A, RUN_B = "a" * 32, "b" * 32

FILE_POINTS: list[Point] = [(RUN_A, "loss", s, 1000 + s, 1.0 / (s + 1)) for s in range(100)]
TAIL_POINTS: list[Point] = [
    (RUN_A, "loss", 100, 1100, NAN),
    (RUN_B, "loss", 0, 2000, INF),
    (RUN_B, "eval/acc", 3, 2003, 0.5),
]


@dataclass
class World:
    catalog: SqliteCatalog
    snapshot: Snapshot
    tables: CatalogTables
    secret: Path

    @property
    def view(self) -> CatalogView:
        return self.tables.current()


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    data_dir = DataDir.at(tmp_path / "data")
    data_dir.root.mkdir(parents=True)
    catalog = SqliteCatalog(data_dir.catalog_file)
    exp = catalog.create_experiment("exp", tags={"team": "steppe"})
    catalog.create_run(RUN_A, exp.experiment_id, "alpha", start_time=1000, user_id="ann")
    catalog.update_run(RUN_A, status="FINISHED", end_time=5000)
    catalog.log_params(RUN_A, [("lr", "0.01")])
    catalog.create_run(RUN_B, "0", "beta", start_time=2000, tags={"team": "red"})
    snapshot = snapshot_of(data_dir, [FILE_POINTS[:50], FILE_POINTS[50:]], TAIL_POINTS)
    secret = tmp_path / "secret.csv"
    secret.write_text("password\nhunter2\n")
    yield World(catalog, snapshot, CatalogTables(catalog), secret)
    catalog.close()


@pytest.fixture
def sandbox() -> Iterator[SqlSandbox]:
    s = SqlSandbox(time_limit_s=5, threads=1)
    yield s
    s.close()


def rows(sandbox: SqlSandbox, world: World, query: str, max_rows: int = 1000) -> list[Any]:
    result: list[Any] = sandbox.run(world.snapshot, world.view, query, max_rows).to_pylist()
    return result


# --- the views ---------------------------------------------------------------------------------


def test_views_hold_the_catalog_and_every_point(sandbox: SqlSandbox, world: World) -> None:
    everything = FILE_POINTS + TAIL_POINTS
    metrics = rows(sandbox, world, "SELECT * FROM metrics ORDER BY run_id, key, step", 10_000)
    assert list(metrics[0]) == ["run_id", "key", "step", "value", "timestamp"]
    assert len(metrics) == len(everything)
    want = sorted(everything)
    for got, (run_id, key, step, ts, value) in zip(metrics, want, strict=True):
        assert (got["run_id"], got["key"], got["step"], got["timestamp"]) == (run_id, key, step, ts)
        assert got["value"] == value or (math.isnan(got["value"]) and math.isnan(value))
    latest = rows(sandbox, world, "SELECT * FROM latest_metrics ORDER BY run_id, key")
    assert list(latest[0]) == [
        "run_id", "key", "value", "step", "timestamp", "min", "max", "count",
    ]  # fmt: skip
    reference = latest_rows(everything)
    assert [(r["run_id"], r["key"]) for r in latest] == list(reference)
    a_loss = next(r for r in latest if r["run_id"] == RUN_A)
    assert a_loss["step"] == 100 and math.isnan(a_loss["value"]) and a_loss["count"] == 101
    assert a_loss["min"] == 1.0 / 100 and a_loss["max"] == 1.0

    runs = rows(sandbox, world, "SELECT * FROM runs ORDER BY run_id")
    assert [r["run_id"] for r in runs] == [RUN_A, RUN_B]
    assert runs[0]["status"] == "FINISHED" and runs[0]["end_time"] == 5000
    assert runs[0]["user_id"] == "ann" and runs[1]["end_time"] is None
    assert list(runs[0]) == [
        "run_id", "experiment_id", "run_name", "status", "start_time", "end_time",
        "lifecycle_stage", "artifact_uri", "user_id",
    ]  # fmt: skip
    assert rows(sandbox, world, "SELECT * FROM params") == [
        {"run_id": RUN_A, "key": "lr", "value": "0.01"}
    ]
    tags = rows(
        sandbox,
        world,
        f"SELECT key, value FROM tags WHERE run_id = '{RUN_B}' ORDER BY key",
    )
    assert tags == [{"key": "mlflow.runName", "value": "beta"}, {"key": "team", "value": "red"}]
    experiments = rows(sandbox, world, "SELECT experiment_id, name FROM experiments ORDER BY 1")
    assert experiments == [
        {"experiment_id": "0", "name": "Default"},
        {"experiment_id": "1", "name": "exp"},
    ]


def test_the_issue_questions_are_answerable(sandbox: SqlSandbox, world: World) -> None:
    # "which runs got below loss 0.1 fastest"
    fastest = rows(
        sandbox,
        world,
        "SELECT r.run_name, min(m.step) AS first_step FROM metrics m JOIN runs r USING (run_id) "
        "WHERE m.key = 'loss' AND m.value < 0.1 GROUP BY r.run_name ORDER BY first_step",
    )
    assert fastest == [{"run_name": "alpha", "first_step": 10}]
    described = rows(sandbox, world, "DESCRIBE metrics")
    assert [r["column_name"] for r in described] == ["run_id", "key", "step", "value", "timestamp"]
    assert rows(sandbox, world, "SELECT count(*) AS n FROM range(3)") == [{"n": 3}]
    assert rows(sandbox, world, "WITH t AS (SELECT 1 AS x) SELECT x FROM t") == [{"x": 1}]


def test_a_snapshot_without_files_still_has_a_metrics_view(sandbox: SqlSandbox, tmp_path: Path):
    snapshot = snapshot_of(DataDir.at(tmp_path), [], [("r", "m", 1, 1, 2.0)])
    table = sandbox.run(snapshot, CatalogView.empty(), "SELECT count(*) AS n FROM metrics", 10)
    assert table.to_pylist() == [{"n": 1}]
    assert sandbox.run(snapshot, CatalogView.empty(), "FROM runs", 10).num_rows == 0


# --- refusals --------------------------------------------------------------------------------

REFUSALS = [
    ("SELECT * FROM read_csv('/etc/passwd')", "table function read_csv() is not allowed"),
    ("SELECT * FROM read_csv_auto('/etc/passwd')", "read_csv_auto() is not allowed"),
    ("SELECT * FROM read_text('/etc/passwd')", "read_text() is not allowed"),
    ("SELECT * FROM '/etc/passwd'", "may only read the views"),
    ("SELECT * FROM read_parquet('{file}')", "read_parquet() is not allowed"),
    ("SELECT * FROM read_parquet('{dir}/*.parquet')", "read_parquet() is not allowed"),
    ("SELECT * FROM '{file}'", "may only read the views"),
    ("SELECT * FROM read_json('http://127.0.0.1:1/x.json')", "read_json() is not allowed"),
    ("SELECT * FROM glob('/*')", "glob() is not allowed"),
    ("COPY (SELECT 1) TO '/tmp/steppe-copy.csv'", "found a statement of type COPY"),
    ("COPY runs FROM '/etc/passwd'", "found a statement of type COPY"),
    ("ATTACH '/tmp/steppe-attach.db' AS x", "found a statement of type ATTACH"),
    ("DETACH x", "found a statement of type DETACH"),
    ("INSTALL httpfs", "found a statement of type LOAD"),
    ("LOAD httpfs", "found a statement of type LOAD"),
    ("SET enable_external_access = true", "found a statement of type SET"),
    ("SET threads = 64", "found a statement of type SET"),
    ("RESET memory_limit", "found a statement of type SET"),
    ("SET VARIABLE x = 1", "found a statement of type SET"),
    ("PRAGMA enable_profiling", "found a statement of type PRAGMA"),
    ("CALL pragma_version()", "found a statement of type CALL"),
    ("EXPLAIN SELECT 1", "found a statement of type EXPLAIN"),
    ("SELECT 1; SELECT 2", "exactly one SQL statement (found 2)"),
    ("SELECT 1; DROP VIEW metrics", "exactly one SQL statement (found 2)"),
    ("CREATE TABLE t AS SELECT 1", "found a statement of type CREATE"),
    ("CREATE MACRO m() AS 1", "found a statement of type CREATE"),
    ("INSERT INTO runs SELECT * FROM runs", "found a statement of type INSERT"),
    ("UPDATE runs SET status = 'X'", "found a statement of type UPDATE"),
    ("DELETE FROM runs", "found a statement of type DELETE"),
    ("DROP VIEW metrics", "found a statement of type DROP"),
    ("EXPORT DATABASE '/tmp/steppe-export'", "found a statement of type EXPORT"),
    ("PIVOT metrics ON key USING avg(value)", "found a statement of type MULTI"),
    ("SELECT * FROM duckdb_settings()", "duckdb_settings() is not allowed"),
    ("SELECT * FROM duckdb_extensions()", "duckdb_extensions() is not allowed"),
    ("SELECT * FROM query('SELECT 1')", "query() is not allowed"),
    ("SELECT * FROM duckdb_tables", "may only read the views"),
    ("SELECT * FROM information_schema.tables", "by their plain names"),
    ("SELECT * FROM main.metrics", "by their plain names"),
    ("SELECT * FROM system.main.duckdb_settings", "by their plain names"),
    ("SELECT * FROM __steppe_tail", "may only read the views"),
    ("SHOW TABLES", "may only read the views"),
    ("SELECT (SELECT count(*) FROM read_csv('/etc/passwd'))", "read_csv() is not allowed"),
    ("SELECT list_transform([1], x -> (SELECT 1 FROM glob('/*')))", "glob() is not allowed"),
    ("SELECT * FROM metrics WHERE run_id IN (SELECT * FROM read_text('/x'))", "read_text()"),
    ("SELECT * FROM (WITH x AS (SELECT 1) SELECT 1), x", "found 'x'"),  # CTE out of scope
    ("", "non-empty"),
    ("   ", "non-empty"),
    ("SELEC 1", "is not valid SQL"),
]


@pytest.mark.parametrize(("query", "needle"), REFUSALS)
def test_refusals_name_the_rule(sandbox: SqlSandbox, world: World, query: str, needle: str) -> None:
    query = query.format(file=world.snapshot.files[0], dir=world.snapshot.files[0].parent)
    with pytest.raises(InvalidParameterValue) as caught:
        sandbox.run(world.snapshot, world.view, query, 100)
    assert caught.value.field == "query"
    assert needle in caught.value.rule, caught.value.rule
    assert not Path("/tmp/steppe-copy.csv").exists() and not Path("/tmp/steppe-attach.db").exists()


def test_errors_from_duckdb_are_refusals_too(sandbox: SqlSandbox, world: World) -> None:
    for query, needle in [
        ("SELECT nope FROM metrics", "Referenced column"),
        ("SELECT 'x'::INTEGER", "Could not convert"),
        ("SELECT $1", "parameters"),
        ("SELECT * FROM nope", "may only read the views"),
    ]:
        with pytest.raises(InvalidParameterValue, match=needle):
            sandbox.run(world.snapshot, world.view, query, 100)


@pytest.mark.parametrize(
    "statement",
    [
        "SELECT * FROM read_csv('{secret}')",
        "SELECT * FROM read_text('/etc/passwd')",
        "SELECT * FROM read_parquet('{dir}/*.parquet')",
        "SELECT * FROM glob('/*')",
        "COPY (SELECT 1) TO '{out}'",
        "ATTACH '{out}' AS other",
        "INSTALL httpfs",
        "LOAD httpfs",
        "SET enable_external_access = true",
        "SET allowed_paths = ['/etc/passwd']",
        "SET lock_configuration = false",
        "RESET threads",
        "SELECT * FROM read_json('http://127.0.0.1:9/x.json')",
    ],
)
def test_the_database_refuses_on_its_own(
    sandbox: SqlSandbox, world: World, tmp_path: Path, statement: str
) -> None:
    """Layer 3 without layers 1 and 2: what a parser bypass would still meet."""
    out = tmp_path / "out"
    statement = statement.format(secret=world.secret, dir=world.snapshot.files[0].parent, out=out)
    with sandbox.database(world.snapshot, world.view) as db:
        with pytest.raises((duckdb.PermissionException, duckdb.InvalidInputException)):
            db.execute(statement)
        # Its own files stay readable: they are the metrics view.
        relation = db.sql("SELECT count(*) FROM metrics")
        assert relation is not None and relation.fetchall() == [(103,)]
    assert not out.exists()


def test_the_time_limit_interrupts(world: World) -> None:
    sandbox = SqlSandbox(time_limit_s=0.5, threads=1)
    try:
        started = time.monotonic()
        with pytest.raises(InvalidParameterValue, match=r"exceeded the time limit of 0\.5 s"):
            sandbox.run(world.snapshot, world.view, "SELECT count(*) FROM range(1e15::BIGINT)", 10)
        assert time.monotonic() - started < 10
        with pytest.raises(InvalidParameterValue, match="time limit"):
            sandbox.run(
                world.snapshot,
                world.view,
                "SELECT count(*) FROM metrics a, metrics b, metrics c, metrics d, metrics e",
                10,
            )
        # The sandbox is still usable afterwards.
        assert sandbox.run(world.snapshot, world.view, "SELECT 1 AS x", 10).num_rows == 1
    finally:
        sandbox.close()
    with pytest.raises(ValueError):
        SqlSandbox(time_limit_s=0)


def test_the_row_limit(sandbox: SqlSandbox, world: World) -> None:
    assert sandbox.run(world.snapshot, world.view, "SELECT * FROM range(10)", 10).num_rows == 10
    with pytest.raises(InvalidParameterValue, match=r"more than max_rows=9 rows"):
        sandbox.run(world.snapshot, world.view, "SELECT * FROM range(10)", 9)
    ordered = sandbox.run(
        world.snapshot, world.view, "SELECT step FROM metrics ORDER BY step DESC LIMIT 3", 3
    )
    assert ordered.column("step").to_pylist() == [100, 99, 98]
    for bad in (0, MAX_MAX_ROWS + 1):
        with pytest.raises(InvalidParameterValue, match="max_rows"):
            sandbox.run(world.snapshot, world.view, "SELECT 1", bad)


def test_read_only_catalog_open_writes_nothing(world: World, tmp_path: Path) -> None:
    path = Path(world.catalog._path)
    world.catalog.close()
    before = (path.stat().st_size, path.stat().st_mtime_ns, path.read_bytes())
    catalog = open_catalog_read_only(path)
    try:
        view = CatalogTables(catalog).current()
        assert sorted(view.records) == [RUN_A, RUN_B]
        with pytest.raises(Exception, match="readonly"):
            catalog.create_experiment("nope")
    finally:
        catalog.close()
    # The database file is untouched; SQLite may create its (empty) WAL index files for a
    # reader of a WAL-mode database, which hold no data.
    assert (path.stat().st_size, path.stat().st_mtime_ns, path.read_bytes()) == before
    wal = path.with_name(path.name + "-wal")
    assert not wal.exists() or wal.stat().st_size == 0
    world.catalog = SqliteCatalog(path)  # for the fixture's close


# --- HTTP ----------------------------------------------------------------------------------------

Client = TestClient[web.Request, web.Application]


@pytest.fixture
async def client(world: World) -> AsyncIterator[Client]:
    info = {"version": "0.1.0", "grpc_port": 1, "http_port": 0, "pid": os.getpid()}
    app = make_app(world.catalog, FixedSource(world.snapshot), info, sql_time_limit_s=2)
    async with TestClient(TestServer(app, host="127.0.0.1")) as test_client:
        yield test_client


async def post_sql(client: Client, body: object) -> Any:
    return await client.post(f"{API}/sql", json=body)


async def test_sql_json_answer(client: Client) -> None:
    response = await post_sql(
        client,
        {"query": "SELECT run_id, key, value, step FROM latest_metrics ORDER BY run_id, key"},
    )
    assert response.status == 200 and response.content_type == "application/json"
    body = await response.json()
    assert body["columns"] == [
        {"name": "run_id", "type": "string"},
        {"name": "key", "type": "string"},
        {"name": "value", "type": "double"},
        {"name": "step", "type": "int64"},
    ]
    assert body["rows"] == [
        [RUN_A, "loss", "NaN", 100],
        [RUN_B, "eval/acc", 0.5, 3],
        [RUN_B, "loss", "Infinity", 0],
    ]
    typed = await (
        await post_sql(
            client,
            {
                "query": "SELECT 1 AS a, 1 AS a, sum(step) AS s, [1.5, 'NaN'::DOUBLE] AS l, "
                "{'k': 'v'} AS st, DATE '2024-01-02' AS d, NULL AS n FROM metrics"
            },
        )
    ).json()
    assert [c["name"] for c in typed["columns"]] == ["a", "a_1", "s", "l", "st", "d", "n"]
    assert typed["rows"] == [
        [1, 1, sum(range(100)) + 100 + 0 + 3, [1.5, "NaN"], {"k": "v"}, "2024-01-02", None]
    ]


async def test_sql_arrow_answer(client: Client) -> None:
    response = await post_sql(
        client,
        {
            "query": f"SELECT step, value FROM metrics WHERE run_id = '{RUN_A}' ORDER BY step",
            "format": "arrow",
            "max_rows": 101,
        },
    )
    assert response.status == 200
    assert response.content_type == "application/vnd.apache.arrow.stream"
    table = pa.ipc.open_stream(await response.read()).read_all()
    assert table.schema == pa.schema([("step", pa.int64()), ("value", pa.float64())])
    assert table.column("step").to_pylist() == list(range(101))


@pytest.mark.parametrize(
    ("body", "field", "needle"),
    [
        ({"query": "SELECT * FROM read_csv('/etc/passwd')"}, "query", "read_csv() is not allowed"),
        ({"query": "DROP VIEW metrics"}, "query", "only SELECT"),
        ({"query": "SELECT * FROM range(11)", "max_rows": 10}, "query", "more than max_rows=10"),
        ({"query": "SELECT count(*) FROM range(1e15::BIGINT)"}, "query", "time limit of 2 s"),
        ({"query": "SELECT 1", "format": "csv"}, "format", 'must be one of "json", "arrow"'),
        ({"query": "SELECT 1", "max_rows": 0}, "max_rows", "from 1 to"),
        ({"query": "SELECT 1", "max_rows": "5"}, "max_rows", "from 1 to"),
        ({"query": ""}, "query", "non-empty"),
        ({}, "query", "non-empty"),
        ({"query": "SELECT 1", "sql": "x"}, "sql", "unknown field"),
        ([1], "body", "JSON object"),
    ],
)
async def test_sql_refusals_are_400(client: Client, body: object, field: str, needle: str) -> None:
    response = await post_sql(client, body)
    assert response.status == 400, await response.text()
    error = await response.json()
    assert error["error_code"] == "INVALID_PARAMETER_VALUE"
    assert f"'{field}'" in error["message"] and needle in error["message"], error["message"]


async def test_sql_sees_catalog_writes(client: Client, world: World) -> None:
    query = {"query": "SELECT count(*) AS n FROM runs"}
    assert (await (await post_sql(client, query)).json())["rows"] == [[2]]
    world.catalog.create_run("c" * 32, "0", "gamma", start_time=3000)
    assert (await (await post_sql(client, query)).json())["rows"] == [[3]]


def test_catalog_version_sees_writes_of_another_process(tmp_path: Path) -> None:
    """The version a reader caches on moves when another process commits to the file."""
    path = tmp_path / "catalog.db"
    SqliteCatalog(path).close()
    reader = open_catalog_read_only(path)
    try:
        before = reader.version
        assert reader.version == before  # no write, no change
        code = (
            "import sys; from steppe.ingest.sqlite_catalog import SqliteCatalog; "
            "c = SqliteCatalog(sys.argv[1]); c.create_experiment('from-elsewhere'); c.close()"
        )
        subprocess.run([sys.executable, "-c", code, str(path)], check=True, timeout=60)
        assert reader.version != before
        names = {e.name for e in reader.list_experiments()}
        assert "from-elsewhere" in names
    finally:
        reader.close()
