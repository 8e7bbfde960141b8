"""steppe.query.app over HTTP: a real aiohttp server on 127.0.0.1, a real SqliteCatalog and
real Parquet files + an Arrow tail, every endpoint of query/API.md and its error shapes."""

from __future__ import annotations

import asyncio
import logging
import math
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from steppe.ingest.catalog import Catalog, open_catalog
from steppe.ingest.layout import DataDir, Snapshot
from steppe.query.app import make_app
from tests.query_data import FixedSource, Point, snapshot_of

API = "/api/steppe/v1"
NAN, INF = math.nan, math.inf
RUN_OLD, RUN_NEW, RUN_DEFAULT = "a" * 32, "b" * 32, "c" * 32

EXPERIMENT_KEYS = {
    "experiment_id", "name", "artifact_location", "lifecycle_stage", "creation_time",
    "last_update_time", "tags", "run_count", "last_activity",
}  # fmt: skip
RUN_INFO_KEYS = {
    "run_id", "run_name", "experiment_id", "status", "start_time", "end_time",
    "lifecycle_stage", "artifact_uri", "user_id",
}  # fmt: skip
METRIC_KEYS = {"value", "step", "timestamp", "min", "max", "count"}

FILE_POINTS: list[Point] = [
    (RUN_NEW, "loss", 0, 1000, 1.0),
    (RUN_NEW, "loss", 2, 1002, INF),
    (RUN_NEW, "eval/acc", 0, 1000, 0.5),
    (RUN_NEW, "all-nan", 0, 1000, NAN),
    (RUN_OLD, "loss", 0, 900, 3.0),
]
TAIL_POINTS: list[Point] = [
    (RUN_NEW, "loss", 1, 1001, -INF),
    (RUN_NEW, "loss", 3, 1003, NAN),  # the latest value is NaN
    (RUN_NEW, "loss", 1, 999, 0.25),  # same step, older: before -inf in the history
    (RUN_NEW, "long", 0, 0, 0.0),
] + [(RUN_NEW, "long", s, s, float(s % 10)) for s in range(1, 5000)]


@dataclass
class World:
    catalog: Catalog
    source: FixedSource
    static_dir: Path
    outside: Path
    server_info: dict[str, object]
    experiment_id: str
    empty_experiment_id: str
    activity: list[int] = field(default_factory=list)


@pytest.fixture
def world(tmp_path: Path, catalog_dsn: str | None) -> Iterator[World]:
    """The app's world on each catalog backend (tests/conftest.py's catalog_dsn)."""
    data_dir = DataDir.at(tmp_path / "data")
    data_dir.root.mkdir(parents=True)
    catalog = open_catalog(catalog_dsn, data_dir.catalog_file)
    exp = catalog.create_experiment("exp-a", tags={"team": "steppe"})
    empty = catalog.create_experiment("empty")
    catalog.create_run(RUN_OLD, exp.experiment_id, "old", start_time=1000, user_id="ann")
    catalog.update_run(RUN_OLD, status="FINISHED", end_time=5000)
    catalog.create_run(RUN_NEW, exp.experiment_id, "new", start_time=2000, tags={"k": "v"})
    catalog.log_params(RUN_NEW, [("lr", "0.01"), ("layers", "4")])
    catalog.create_run(RUN_DEFAULT, "0", "default-run", start_time=1500)
    snapshot = snapshot_of(data_dir, [FILE_POINTS[:3], FILE_POINTS[3:]], TAIL_POINTS)

    static_dir = tmp_path / "static"
    (static_dir / "sub").mkdir(parents=True)
    (static_dir / "index.html").write_text("<!doctype html><title>steppe ui</title>")
    (static_dir / "app.js").write_text("console.log('ui')")
    outside = tmp_path / "secret.txt"
    outside.write_text("top secret")
    yield World(
        catalog=catalog,
        source=FixedSource(snapshot),
        static_dir=static_dir,
        outside=outside,
        server_info={"version": "0.1.0", "grpc_port": 5001, "http_port": 0, "pid": 1234},
        experiment_id=exp.experiment_id,
        empty_experiment_id=empty.experiment_id,
    )
    catalog.close()


@pytest.fixture
async def client(world: World) -> AsyncIterator[TestClient[web.Request, web.Application]]:
    app = make_app(
        world.catalog,
        world.source,
        world.server_info,
        static_dir=world.static_dir,
        on_activity=lambda: world.activity.append(1),
    )
    async with TestClient(TestServer(app, host="127.0.0.1")) as test_client:
        yield test_client


Client = TestClient[web.Request, web.Application]


async def get_json(client: Client, path: str, status: int = 200, **params: str) -> Any:
    response = await client.get(path, params=params or None)
    assert response.status == status, await response.text()
    assert response.content_type == "application/json"
    return await response.json()


async def assert_error(response: Any, status: int, error_code: str, *needles: str) -> str:
    assert response.status == status, await response.text()
    assert response.content_type == "application/json"
    body = await response.json()
    assert set(body) == {"error_code", "message"}
    assert body["error_code"] == error_code
    for needle in needles:
        assert needle in body["message"], body["message"]
    return str(body["message"])


async def raw_get(client: Client, target: str) -> tuple[int, bytes]:
    """GET exactly this request target, bypassing the client's URL normalisation."""
    reader, writer = await asyncio.open_connection(client.host, client.port)
    request = f"GET {target} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    writer.write(request.encode())
    await writer.drain()
    data = await reader.read()
    writer.close()
    await writer.wait_closed()
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


# --- server info and experiments ----------------------------------------------------------------


async def test_server_info_is_served_live(client: Client, world: World):
    assert await get_json(client, f"{API}/server-info") == world.server_info
    world.server_info["http_port"] = 5000  # the composer fills it in after binding
    assert (await get_json(client, f"{API}/server-info"))["http_port"] == 5000


async def test_experiments_list(client: Client, world: World):
    body = await get_json(client, f"{API}/experiments")
    assert set(body) == {"experiments"}
    experiments = body["experiments"]
    assert [e["experiment_id"] for e in experiments] == [
        "0", world.experiment_id, world.empty_experiment_id,
    ]  # fmt: skip
    for experiment in experiments:
        assert set(experiment) == EXPERIMENT_KEYS
    default, exp_a, empty = experiments
    assert default["name"] == "Default" and default["lifecycle_stage"] == "active"
    assert (default["run_count"], default["last_activity"]) == (1, 1500)
    assert exp_a["name"] == "exp-a" and exp_a["tags"] == {"team": "steppe"}
    assert (exp_a["run_count"], exp_a["last_activity"]) == (2, 5000)  # max of starts and ends
    assert (empty["run_count"], empty["last_activity"]) == (0, None)
    assert isinstance(exp_a["creation_time"], int) and isinstance(exp_a["artifact_location"], str)


async def test_get_experiment(client: Client, world: World):
    body = await get_json(client, f"{API}/experiments/{world.experiment_id}")
    assert set(body) == {"experiment"}
    assert set(body["experiment"]) == EXPERIMENT_KEYS
    assert body["experiment"]["name"] == "exp-a" and body["experiment"]["run_count"] == 2
    response = await client.get(f"{API}/experiments/999")
    await assert_error(response, 404, "RESOURCE_DOES_NOT_EXIST", "999")


# --- runs -----------------------------------------------------------------------------------------


def check_run_shape(run: dict[str, Any]) -> None:
    assert set(run) == {"info", "data"}
    assert set(run["info"]) == RUN_INFO_KEYS
    assert set(run["data"]) == {"params", "tags", "metrics"}
    for metric in run["data"]["metrics"].values():
        assert set(metric) == METRIC_KEYS


async def test_experiment_runs_newest_first_with_latest_metrics(client: Client, world: World):
    body = await get_json(client, f"{API}/experiments/{world.experiment_id}/runs")
    assert set(body) == {"runs"}
    runs = body["runs"]
    assert [r["info"]["run_id"] for r in runs] == [RUN_NEW, RUN_OLD]
    for run in runs:
        check_run_shape(run)
    new, old = runs
    assert new["info"] == {
        "run_id": RUN_NEW, "run_name": "new", "experiment_id": world.experiment_id,
        "status": "RUNNING", "start_time": 2000, "end_time": None, "lifecycle_stage": "active",
        "artifact_uri": new["info"]["artifact_uri"], "user_id": "",
    }  # fmt: skip
    assert new["data"]["params"] == {"lr": "0.01", "layers": "4"}
    assert new["data"]["tags"]["k"] == "v" and new["data"]["tags"]["mlflow.runName"] == "new"
    metrics = new["data"]["metrics"]
    assert sorted(metrics) == ["all-nan", "eval/acc", "long", "loss"]
    assert metrics["loss"] == {
        "value": "NaN", "step": 3, "timestamp": 1003,
        "min": "-Infinity", "max": "Infinity", "count": 5,
    }  # fmt: skip
    assert metrics["all-nan"] == {
        "value": "NaN", "step": 0, "timestamp": 1000, "min": "NaN", "max": "NaN", "count": 1,
    }  # fmt: skip
    assert metrics["eval/acc"]["value"] == 0.5
    assert old["info"]["status"] == "FINISHED" and old["info"]["end_time"] == 5000
    assert old["info"]["user_id"] == "ann"
    assert old["data"]["metrics"]["loss"]["value"] == 3.0

    empty = await get_json(client, f"{API}/experiments/{world.empty_experiment_id}/runs")
    assert empty == {"runs": []}
    response = await client.get(f"{API}/experiments/nope/runs")
    await assert_error(response, 404, "RESOURCE_DOES_NOT_EXIST", "nope")


async def test_search_runs(client: Client, world: World):
    async def search(body: object) -> list[str]:
        response = await client.post(f"{API}/runs/search", json=body)
        assert response.status == 200, await response.text()
        document = await response.json()
        assert set(document) == {"runs"}
        for run in document["runs"]:
            check_run_shape(run)
        return [r["info"]["run_id"] for r in document["runs"]]

    everything = [RUN_NEW, RUN_DEFAULT, RUN_OLD]  # newest start first
    assert await search({"experiment_ids": None, "max_results": 1000}) == everything
    assert await search({}) == everything
    assert await search({"experiment_ids": [world.experiment_id]}) == [RUN_NEW, RUN_OLD]
    assert await search({"experiment_ids": ["0", world.experiment_id], "max_results": 1}) == [
        RUN_NEW
    ]
    assert await search({"experiment_ids": []}) == []
    assert await search({"experiment_ids": ["12345"]}) == []
    response = await client.post(f"{API}/runs/search")  # no body at all: the defaults
    assert response.status == 200 and len((await response.json())["runs"]) == 3


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (b"{not json", "body"),
        (b"[1, 2]", "body"),
        (b'{"experiment_ids": "0"}', "experiment_ids"),
        (b'{"experiment_ids": [0]}', "experiment_ids"),
        (b'{"max_results": 0}', "max_results"),
        (b'{"max_results": 50001}', "max_results"),
        (b'{"max_results": "10"}', "max_results"),
        (b'{"max_results": true}', "max_results"),
        (b'{"max_results": 1.5}', "max_results"),
        (b'{"filter": "metrics.loss < 1"}', "filter"),
    ],
)
async def test_search_runs_rejects_bad_bodies(client: Client, body: bytes, field: str):
    response = await client.post(
        f"{API}/runs/search", data=body, headers={"Content-Type": "application/json"}
    )
    await assert_error(response, 400, "INVALID_PARAMETER_VALUE", f"'{field}'")


async def test_get_run(client: Client):
    body = await get_json(client, f"{API}/runs/{RUN_DEFAULT}")
    assert set(body) == {"run"}
    check_run_shape(body["run"])
    assert body["run"]["info"]["run_name"] == "default-run"
    assert body["run"]["data"]["metrics"] == {}
    response = await client.get(f"{API}/runs/{'f' * 32}")
    await assert_error(response, 404, "RESOURCE_DOES_NOT_EXIST", "f" * 32)


# --- metric history and series --------------------------------------------------------------------


async def test_metric_history_every_point_in_order(client: Client):
    body = await get_json(client, f"{API}/metric-history", run_id=RUN_NEW, key="loss")
    assert body == {
        "run_id": RUN_NEW,
        "key": "loss",
        "step": [0, 1, 1, 2, 3],
        "value": [1.0, 0.25, "-Infinity", "Infinity", "NaN"],
        "timestamp": [1000, 999, 1001, 1002, 1003],
    }
    slashed = await get_json(client, f"{API}/metric-history", run_id=RUN_NEW, key="eval/acc")
    assert (slashed["step"], slashed["value"]) == ([0], [0.5])
    long = await get_json(client, f"{API}/metric-history", run_id=RUN_NEW, key="long")
    assert long["step"] == list(range(5000))
    assert long["value"] == [float(s % 10) for s in range(5000)]
    missing = await get_json(client, f"{API}/metric-history", run_id=RUN_OLD, key="nope")
    assert missing == {"run_id": RUN_OLD, "key": "nope", "step": [], "value": [], "timestamp": []}


async def test_metric_history_as_arrow(client: Client):
    import pyarrow as pa

    params = {"run_id": RUN_NEW, "key": "loss", "format": "arrow"}
    response = await client.get(f"{API}/metric-history", params=params)
    assert response.status == 200
    assert response.content_type == "application/vnd.apache.arrow.stream"
    table = pa.ipc.open_stream(await response.read()).read_all()
    assert table.schema.names == ["step", "value", "timestamp"]
    assert table.column("step").to_pylist() == [0, 1, 1, 2, 3]
    assert table.column("timestamp").to_pylist() == [1000, 999, 1001, 1002, 1003]
    values = table.column("value").to_pylist()
    assert values[:4] == [1.0, 0.25, -math.inf, math.inf] and math.isnan(values[4])
    params["key"] = "nope"
    response = await client.get(f"{API}/metric-history", params=params)
    assert pa.ipc.open_stream(await response.read()).read_all().num_rows == 0
    params["format"] = "csv"
    response = await client.get(f"{API}/metric-history", params=params)
    await assert_error(response, 400, "INVALID_PARAMETER_VALUE", "'format'")


@pytest.mark.parametrize("path", ["metric-history", "series"])
@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("key=loss", "run_id"),
        (f"run_id={RUN_NEW}", "key"),
        ("run_id=&key=loss", "run_id"),
        (f"run_id={RUN_NEW}&key=", "key"),
        (f"run_id={RUN_NEW}&run_id={RUN_OLD}&key=loss", "run_id"),
    ],
)
async def test_metric_queries_reject_bad_params(client: Client, path: str, query: str, field: str):
    response = await client.get(f"{API}/{path}?{query}")
    await assert_error(response, 400, "INVALID_PARAMETER_VALUE", f"'{field}'")


@pytest.mark.parametrize("path", ["metric-history", "series"])
async def test_metric_queries_of_an_unknown_run_are_404(client: Client, path: str):
    response = await client.get(f"{API}/{path}", params={"run_id": "e" * 32, "key": "loss"})
    await assert_error(response, 404, "RESOURCE_DOES_NOT_EXIST", "e" * 32)


async def test_series_exact(client: Client):
    body = await get_json(client, f"{API}/series", run_id=RUN_NEW, key="loss")
    assert body == {
        "run_id": RUN_NEW,
        "key": "loss",
        "bucketed": False,
        "step": [0, 1, 1, 2, 3],
        "value": [1.0, 0.25, "-Infinity", "Infinity", "NaN"],
    }
    window = await get_json(
        client, f"{API}/series", run_id=RUN_NEW, key="long", x_min="10", x_max="20"
    )
    assert window["bucketed"] is False
    assert window["step"] == list(range(10, 21))
    # Fractional bounds (a zoomed chart) round inwards to whole steps.
    fractional = await get_json(
        client, f"{API}/series", run_id=RUN_NEW, key="long", x_min="9.5", x_max="2.1e1"
    )
    assert fractional["step"] == list(range(10, 22))


async def test_series_bucketed(client: Client):
    body = await get_json(client, f"{API}/series", run_id=RUN_NEW, key="long", buckets="100")
    assert set(body) == {
        "run_id", "key", "bucketed", "step", "min", "max", "first", "last", "mean", "count",
    }  # fmt: skip
    assert body["bucketed"] is True
    assert body["step"] == list(range(0, 5000, 50))
    assert body["count"] == [50] * 100
    assert body["min"] == [0.0] * 100 and body["max"] == [9.0] * 100
    assert body["first"] == [0.0] * 100 and body["last"] == [9.0] * 100
    assert body["mean"] == [4.5] * 100
    # The default is 1000 buckets, so 5000 points (> 2000) are bucketed.
    default = await get_json(client, f"{API}/series", run_id=RUN_NEW, key="long")
    assert default["bucketed"] is True and len(default["step"]) == 1000
    assert sum(default["count"]) == 5000
    # 2 * 10000 >= 5000: exact at the largest bucket count.
    most = await get_json(client, f"{API}/series", run_id=RUN_NEW, key="long", buckets="10000")
    assert most["bucketed"] is False and len(most["value"]) == 5000


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ("buckets=0", "buckets"),
        ("buckets=10001", "buckets"),
        ("buckets=ten", "buckets"),
        ("buckets=1.5", "buckets"),
        ("buckets=", "buckets"),
        ("x_min=abc", "x_min"),
        ("x_min=nan", "x_min"),
        ("x_max=inf", "x_max"),
        ("x_max=1e999", "x_max"),
        ("x_min=20&x_max=10", "x_min"),
    ],
)
async def test_series_rejects_bad_params(client: Client, extra: str, field: str):
    response = await client.get(f"{API}/series?run_id={RUN_NEW}&key=long&{extra}")
    await assert_error(response, 400, "INVALID_PARAMETER_VALUE", f"'{field}'")


async def test_series_huge_bounds_are_clamped_to_int64(client: Client):
    body = await get_json(
        client, f"{API}/series", run_id=RUN_NEW, key="loss",
        x_min=str(-(2**70)), x_max="1e30",
    )  # fmt: skip
    assert body["step"] == [0, 1, 1, 2, 3]


# --- errors, hooks and threads ------------------------------------------------------------------


async def test_unknown_route_and_wrong_method_have_the_error_shape(client: Client):
    await assert_error(await client.get(f"{API}/nope"), 404, "ENDPOINT_NOT_FOUND", f"{API}/nope")
    response = await client.post(f"{API}/experiments")
    await assert_error(response, 405, "METHOD_NOT_ALLOWED", "POST")
    assert "GET" in response.headers["Allow"]
    response = await client.get(f"{API}/runs/search")  # matches runs/{run_id}: an unknown run
    await assert_error(response, 404, "RESOURCE_DOES_NOT_EXIST", "search")


class BrokenSource:
    def snapshot(self) -> Snapshot:
        raise RuntimeError("secret internal detail")


async def test_unexpected_errors_are_500_without_a_trace(
    world: World, caplog: pytest.LogCaptureFixture
):
    app = make_app(world.catalog, BrokenSource(), world.server_info)
    async with TestClient(TestServer(app, host="127.0.0.1")) as broken:
        with caplog.at_level(logging.ERROR, logger="steppe.query"):
            response = await broken.get(f"{API}/runs/{RUN_NEW}")
            message = await assert_error(response, 500, "INTERNAL_ERROR")
    assert "secret" not in message and "Traceback" not in message
    assert any("secret internal detail" in r.getMessage() or r.exc_info for r in caplog.records)


async def test_on_activity_is_called_for_every_request(client: Client, world: World):
    before = len(world.activity)
    await client.get(f"{API}/server-info")
    await client.get("/no/such/page")
    await client.get("/")
    assert len(world.activity) == before + 3


async def test_snapshots_are_taken_on_the_loop_thread(client: Client, world: World):
    await get_json(client, f"{API}/metric-history", run_id=RUN_NEW, key="loss")
    await get_json(client, f"{API}/series", run_id=RUN_NEW, key="loss")
    await get_json(client, f"{API}/runs/{RUN_NEW}")
    assert len(world.source.threads) == 3
    assert all(t is threading.current_thread() for t in world.source.threads)


class CompactedSource:
    """The first snapshot names a file that compaction already removed; later ones do not."""

    def __init__(self, stale: Snapshot, fresh: Snapshot) -> None:
        self.snapshots = [stale, fresh]

    def snapshot(self) -> Snapshot:
        return self.snapshots.pop(0) if len(self.snapshots) > 1 else self.snapshots[0]


async def test_a_snapshot_whose_file_vanished_is_retried_once(world: World, tmp_path: Path):
    fresh = world.source.current
    gone = tmp_path / "data" / "metrics" / "part-000000000009-000000000009.parquet"
    stale = Snapshot(files=(*fresh.files, gone), tail=fresh.tail, latest=fresh.latest)
    app = make_app(world.catalog, CompactedSource(stale, fresh), world.server_info)
    async with TestClient(TestServer(app, host="127.0.0.1")) as test_client:
        body = await get_json(test_client, f"{API}/metric-history", run_id=RUN_NEW, key="loss")
    assert body["step"] == [0, 1, 1, 2, 3]


# --- web UI routes and static files --------------------------------------------------------------


@pytest.mark.parametrize("path", ["/", "/experiments/1", f"/runs/{RUN_NEW}"])
async def test_ui_routes_serve_index_html(client: Client, path: str):
    response = await client.get(path)
    assert response.status == 200
    assert response.content_type == "text/html"
    assert await response.text() == "<!doctype html><title>steppe ui</title>"


async def test_static_files_and_refusals(client: Client, world: World):
    response = await client.get("/static/app.js")
    assert response.status == 200 and await response.text() == "console.log('ui')"
    await assert_error(await client.get("/static/missing.js"), 404, "ENDPOINT_NOT_FOUND")
    listing = await client.get("/static/sub/")
    assert listing.status in (403, 404) and "app.js" not in await listing.text()
    for target in (
        "/static/../secret.txt",
        "/static/%2e%2e/secret.txt",
        "/static/..%2fsecret.txt",
        "/static/sub/../../secret.txt",
        f"/static/{world.outside}",
        "/static//etc/passwd",
    ):
        status, body = await raw_get(client, target)
        assert status in (400, 403, 404), (target, status)
        assert b"top secret" not in body and b"root:" not in body, target


async def test_ui_without_an_index_serves_a_placeholder(world: World, tmp_path: Path):
    bare = tmp_path / "bare-static"
    bare.mkdir()
    app = make_app(world.catalog, world.source, world.server_info, static_dir=bare)
    async with TestClient(TestServer(app, host="127.0.0.1")) as test_client:
        response = await test_client.get("/")
        assert response.status == 200 and response.content_type == "text/html"
        assert "/api/steppe/v1" in await response.text()
    missing = make_app(world.catalog, world.source, world.server_info, static_dir=tmp_path / "x")
    async with TestClient(TestServer(missing, host="127.0.0.1")) as test_client:
        assert (await test_client.get("/runs/abc")).status == 200
        await assert_error(await test_client.get("/static/app.js"), 404, "ENDPOINT_NOT_FOUND")


async def test_default_static_dir_serves_html(world: World):
    app = make_app(world.catalog, world.source, world.server_info)
    async with TestClient(TestServer(app, host="127.0.0.1")) as test_client:
        response = await test_client.get("/")
        assert response.status == 200 and response.content_type == "text/html"
