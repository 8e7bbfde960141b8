"""The read side's aiohttp app: ``make_app`` wires steppe's JSON API (query/API.md), the
MLflow REST API, the artifact routes and the web UI's files; the JSON API's handlers are here.

Handlers take snapshots on the loop thread and run every blocking read (catalog, DuckDB, JSON
encoding) in the query executor. Nothing here writes to the catalog or the data dir; the routes
of steppe.query.mlflow_api and steppe.query.artifacts, registered by make_app, do. The pieces
it is made of: the shared app keys and executors (steppe.query.context), middlewares
(steppe.query.middleware), request parsing (steppe.query.requests), documents
(steppe.query.documents) and static files (steppe.query.static_files).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import duckdb
from aiohttp import web

from steppe.errors import (
    InvalidParameterValue,
    ResourceDoesNotExist,
    SteppeError,
)
from steppe.ingest.catalog import Catalog, RunRecord
from steppe.ingest.layout import Snapshot, SnapshotSource
from steppe.query.aligned import aligned_series
from steppe.query.artifacts import ArtifactStore, add_artifact_routes
from steppe.query.context import (
    API_PREFIX,
    CATALOG,
    CATALOG_TABLES,
    EXECUTOR,
    ON_ACTIVITY,
    READER,
    SERVER_INFO,
    SNAPSHOT_SOURCE,
    SQL_ADMISSION,
    SQL_EXECUTOR,
    SQL_MAX_RESULT_BYTES,
    SQL_SANDBOX,
    SQL_TIME_LIMIT_S,
    STATIC_DIR,
    blocking,
    json_response,
    run_on,
    with_snapshot,
)
from steppe.query.documents import (
    ARROW_STREAM,
    arrow_buffer,
    arrow_stream,
    experiment_json,
    run_json,
    runs_document,
    runs_json,
    series_json,
)
from steppe.query.guard import LOOPBACK_HOSTS, guard_middleware
from steppe.query.jsonenc import dumps, float_list, table_rows
from steppe.query.middleware import auth_middleware, error_middleware
from steppe.query.mlflow_api import MetricWriter, add_mlflow_routes
from steppe.query.paging import page_token
from steppe.query.reader import Reader
from steppe.query.requests import (
    MetricRequest,
    MultiSeriesRequest,
    SearchRunsRequest,
    SeriesRequest,
    SqlRequest,
    metric_history_request,
    multi_series_request,
    param,
    search_runs_request,
    series_request,
    sql_request,
)
from steppe.query.search import (
    RunSearch,
)
from steppe.query.series import (
    MultiSeries,
    SeriesKey,
    multi_series,
)
from steppe.query.sql import (
    DEFAULT_MAX_RESULT_BYTES,
    DEFAULT_TIME_LIMIT_S,
    JSON_RESULT_FRACTION,
    SqlSandbox,
)
from steppe.query.static_files import DEFAULT_STATIC_DIR, serve_index, serve_static
from steppe.query.views import (
    CatalogTables,
    count_matching_runs,
    experiment_keys,
    group_matching_runs,
    matching_run_ids,
)

__all__ = ["make_app"]

log = logging.getLogger("steppe.query")

#: Concurrent blocking reads; each holds a DuckDB cursor and its result in memory.
QUERY_WORKERS = 4
#: User SQL runs on threads of its own, so heavy queries never take the UI's: this many at
#: once, and at most SQL_MAX_WAITING more queued; past that a query is answered 429.
SQL_WORKERS = 1
SQL_MAX_WAITING = 8


def make_app(
    catalog: Catalog,
    source: SnapshotSource,
    server_info: Mapping[str, object],
    *,
    static_dir: Path | None = None,
    on_activity: Callable[[], None] | None = None,
    sql_time_limit_s: float = DEFAULT_TIME_LIMIT_S,
    sql_max_result_bytes: int = DEFAULT_MAX_RESULT_BYTES,
    metric_writer: MetricWriter | None = None,
    artifacts: ArtifactStore | None = None,
    token: str | None = None,
    allowed_hosts: Sequence[str] | None = None,
    allowed_origins: Sequence[str] = (),
) -> web.Application:
    """The read side's HTTP app. ``server_info`` is read on every ``/server-info`` request
    (so ports may be filled in after binding); ``on_activity`` is called at the start of
    every request (an idle-shutdown hook). The DuckDB reader, the SQL sandbox and the worker
    threads live from app startup to cleanup; ``sql_time_limit_s`` and
    ``sql_max_result_bytes`` (Arrow bytes; a JSON result: an eighth) bound each user query.
    MLflow's REST API is read-only unless ``metric_writer`` (ingest) is given; artifacts are
    served from ``artifacts`` when given. With ``token``, every request but server-info must
    carry it (``Authorization: Bearer``, or the cookie a ``?token=`` page visit sets).
    Every request's Host must match ``allowed_hosts`` (default: loopback names, any port);
    writes from another Origin than ``allowed_origins`` and JSON bodies that are not
    ``application/json`` are refused (steppe.query.guard).

        app = make_app(catalog, store, {"version": "0.1.0", "grpc_port": 5001, ...})
        web.run_app(app, host="127.0.0.1", port=5000)
    """
    middlewares = [error_middleware]
    if token:
        middlewares.insert(0, auth_middleware(token))
    hosts = list(LOOPBACK_HOSTS) if allowed_hosts is None else list(allowed_hosts)
    middlewares.insert(0, guard_middleware(hosts, allowed_origins))
    app = web.Application(middlewares=middlewares)
    app[CATALOG] = catalog
    app[SNAPSHOT_SOURCE] = source
    app[SERVER_INFO] = server_info
    app[STATIC_DIR] = DEFAULT_STATIC_DIR if static_dir is None else Path(static_dir)
    app[ON_ACTIVITY] = on_activity
    app[CATALOG_TABLES] = CatalogTables(catalog)
    app[SQL_TIME_LIMIT_S] = sql_time_limit_s
    app[SQL_MAX_RESULT_BYTES] = sql_max_result_bytes
    app.cleanup_ctx.append(_query_resources)

    api = API_PREFIX
    app.router.add_get(f"{api}/server-info", _server_info)
    app.router.add_get("/health", _health)
    app.router.add_get(f"{api}/experiments", _list_experiments)
    app.router.add_get(f"{api}/experiments/{{experiment_id}}", _get_experiment)
    app.router.add_get(f"{api}/experiments/{{experiment_id}}/runs", _experiment_runs)
    app.router.add_get(f"{api}/experiments/{{experiment_id}}/keys", _experiment_keys)
    app.router.add_post(f"{api}/runs/search", _search_runs)
    app.router.add_get(f"{api}/runs/{{run_id}}", _get_run)
    app.router.add_get(f"{api}/metric-history", _metric_history)
    app.router.add_get(f"{api}/series", _series)
    app.router.add_post(f"{api}/series", _multi_series)
    app.router.add_post(f"{api}/sql", _sql)

    app.router.add_get("/", serve_index)
    app.router.add_get("/experiments/{experiment_id}", serve_index)
    app.router.add_get("/runs/{run_id}", serve_index)
    app.router.add_get("/compare", serve_index)
    app.router.add_get("/sql", serve_index)
    app.router.add_get("/models", serve_index)
    app.router.add_get("/models/{name}", serve_index)
    app.router.add_get("/logged-models/{model_id}", serve_index)
    app.router.add_get("/static/{path:.*}", serve_static)

    if artifacts is not None:
        add_artifact_routes(app, artifacts, catalog)
    add_mlflow_routes(app, metric_writer)
    return app


async def _query_resources(app: web.Application) -> AsyncIterator[None]:
    executor = ThreadPoolExecutor(max_workers=QUERY_WORKERS, thread_name_prefix="steppe-query")
    reader = Reader()
    sql_executor = ThreadPoolExecutor(max_workers=SQL_WORKERS, thread_name_prefix="steppe-sql")
    sandbox = SqlSandbox(
        time_limit_s=app[SQL_TIME_LIMIT_S], max_result_bytes=app[SQL_MAX_RESULT_BYTES]
    )
    app[EXECUTOR] = executor
    app[SQL_EXECUTOR] = sql_executor
    app[SQL_ADMISSION] = asyncio.Semaphore(SQL_WORKERS + SQL_MAX_WAITING)
    app[READER] = reader
    app[SQL_SANDBOX] = sandbox
    try:
        yield
    finally:
        # Let running queries finish before their database goes away.
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, executor.shutdown, True)
        await loop.run_in_executor(None, sql_executor.shutdown, True)
        reader.close()
        sandbox.close()


def _require_run(catalog: Catalog, run_id: str) -> None:
    if not catalog.run_exists(run_id):
        raise ResourceDoesNotExist(f"Run with id={run_id!r} not found")


# handlers (each builds its document in the executor) ----------------------------------


async def _server_info(request: web.Request) -> web.Response:
    info = {
        name: value if value is None or isinstance(value, (str, int, float, bool)) else str(value)
        for name, value in request.app[SERVER_INFO].items()
    }
    return json_response(dumps(info))


async def _health(request: web.Request) -> web.Response:
    """200 ``{"status": "ok"}``, or 503 with the reason when metric writes cannot be stored."""
    failure = getattr(request.app[SNAPSHOT_SOURCE], "failure", None)
    if failure:
        body = {"status": "unavailable", "reason": f"cannot write metrics: {failure}"}
        return web.Response(status=503, body=dumps(body), content_type="application/json")
    return json_response(dumps({"status": "ok"}))


async def _list_experiments(request: web.Request) -> web.Response:
    def document(catalog: Catalog, tables: CatalogTables) -> bytes:
        # The cached view's records (rebuilt only when the catalog changes), not a catalog
        # read of every run per request: an experiment of 10,000 runs stays cheap to list.
        runs_by_experiment: dict[str, list[RunRecord]] = {}
        for run in tables.current().records.values():
            runs_by_experiment.setdefault(run.experiment_id, []).append(run)
        experiments = [
            experiment_json(exp, runs_by_experiment.get(exp.experiment_id, []))
            for exp in catalog.list_experiments()
        ]
        return dumps({"experiments": experiments})

    app = request.app
    return json_response(await blocking(request, document, app[CATALOG], app[CATALOG_TABLES]))


async def _get_experiment(request: web.Request) -> web.Response:
    def document(catalog: Catalog, tables: CatalogTables, experiment_id: str) -> bytes:
        experiment = catalog.get_experiment(experiment_id)
        runs = [r for r in tables.current().records.values() if r.experiment_id == experiment_id]
        return dumps({"experiment": experiment_json(experiment, runs)})

    app = request.app
    experiment_id = request.match_info["experiment_id"]
    return json_response(
        await blocking(request, document, app[CATALOG], app[CATALOG_TABLES], experiment_id)
    )


async def _experiment_keys(request: web.Request) -> web.Response:
    def document(
        snapshot: Snapshot, catalog: Catalog, tables: CatalogTables, experiment_id: str
    ) -> bytes:
        catalog.get_experiment(experiment_id)  # 404 for an unknown id
        return dumps(experiment_keys(tables.current(), snapshot.latest, experiment_id))

    app = request.app
    experiment_id = request.match_info["experiment_id"]
    return json_response(
        await with_snapshot(request, document, app[CATALOG], app[CATALOG_TABLES], experiment_id)
    )


async def _experiment_runs(request: web.Request) -> web.Response:
    def document(snapshot: Snapshot, catalog: Catalog, reader: Reader, experiment_id: str) -> bytes:
        catalog.get_experiment(experiment_id)  # 404 for an unknown id
        return runs_document(reader, snapshot, catalog.list_runs([experiment_id]))

    app = request.app
    experiment_id = request.match_info["experiment_id"]
    return json_response(
        await with_snapshot(request, document, app[CATALOG], app[READER], experiment_id)
    )


async def _search_runs(request: web.Request) -> web.Response:
    def document(
        snapshot: Snapshot,
        tables: CatalogTables,
        reader: Reader,
        ask: SearchRunsRequest,
        time_limit_s: float,
    ) -> bytes:
        view = tables.current()
        search = RunSearch(
            experiment_ids=None if ask.experiment_ids is None else tuple(ask.experiment_ids),
            filters=ask.filters,
            order_by=ask.order_by,
            lifecycle_stages=ask.lifecycle_stages,
            limit=ask.max_results + 1,  # one more tells whether another page exists
            offset=ask.offset,
        )
        run_ids = matching_run_ids(reader, snapshot, view, search, time_limit_s=time_limit_s)
        runs = [view.records[run_id] for run_id in run_ids[: ask.max_results]]
        out: dict[str, object] = {"runs": runs_json(reader, snapshot, runs)}
        if ask.paged and len(run_ids) > ask.max_results:
            out["next_page_token"] = page_token(ask.offset + ask.max_results)
        if ask.count:
            out["total_count"] = count_matching_runs(
                reader, snapshot, view, search, time_limit_s=time_limit_s
            )
        if ask.grouping is not None:
            groups, more = group_matching_runs(
                reader, snapshot, view, search, ask.grouping, time_limit_s=time_limit_s
            )
            out["groups"] = groups
            out["groups_truncated"] = more
        return dumps(out)

    ask = search_runs_request(await request.read())
    app = request.app
    return json_response(
        await with_snapshot(
            request, document, app[CATALOG_TABLES], app[READER], ask, app[SQL_TIME_LIMIT_S]
        )
    )


async def _get_run(request: web.Request) -> web.Response:
    def document(snapshot: Snapshot, catalog: Catalog, reader: Reader, run_id: str) -> bytes:
        run = catalog.get_run(run_id)
        metrics = reader.latest_metrics(snapshot, [run_id]).get(run_id, {})
        return dumps({"run": run_json(run, metrics)})

    app = request.app
    run_id = request.match_info["run_id"]
    return json_response(await with_snapshot(request, document, app[CATALOG], app[READER], run_id))


async def _metric_history(request: web.Request) -> web.Response:
    def document(
        snapshot: Snapshot, catalog: Catalog, reader: Reader, metric: MetricRequest, fmt: str
    ) -> web.Response:
        _require_run(catalog, metric.run_id)
        table = reader.metric_history(snapshot, metric.run_id, metric.key)
        if fmt == "arrow":
            # The IPC stream's own buffers: no per-point Python work, no copy to bytes.
            return web.Response(body=memoryview(arrow_buffer(table)), content_type=ARROW_STREAM)
        return json_response(
            dumps(
                {
                    "run_id": metric.run_id,
                    "key": metric.key,
                    "step": table.column("step").to_pylist(),
                    "value": float_list(table.column("value")),
                    "timestamp": table.column("timestamp").to_pylist(),
                }
            )
        )

    metric = metric_history_request(request.query)
    fmt = param(request.query, "format", required=False) or "json"
    if fmt not in ("json", "arrow"):
        raise InvalidParameterValue("format", fmt, 'must be "json" or "arrow"')
    app = request.app
    return await with_snapshot(request, document, app[CATALOG], app[READER], metric, fmt)


async def _series(request: web.Request) -> web.Response:
    def document(snapshot: Snapshot, catalog: Catalog, reader: Reader, ask: SeriesRequest) -> bytes:
        _require_run(catalog, ask.run_id)
        key = SeriesKey(ask.run_id, ask.key)
        found = multi_series(reader, snapshot, [key], ask.buckets, x_min=ask.x_min, x_max=ask.x_max)
        series = found.series[0]
        table = series.table
        out: dict[str, object] = {
            "run_id": ask.run_id,
            "key": ask.key,
            "bucketed": series.bucketed,
            "step": table.column("x").to_pylist(),
        }
        if not series.bucketed:
            out["value"] = float_list(table.column("value"))
        else:
            for name in ("min", "max", "first", "last", "mean"):
                out[name] = float_list(table.column(name))
            out["count"] = table.column("count").to_pylist()
        return dumps(out, floats_converted=True)  # every float column through float_list

    ask = series_request(request.query)
    app = request.app
    return json_response(await with_snapshot(request, document, app[CATALOG], app[READER], ask))


async def _multi_series(request: web.Request) -> web.Response:
    def document(
        snapshot: Snapshot, catalog: Catalog, reader: Reader, ask: MultiSeriesRequest
    ) -> bytes:
        for run_id in dict.fromkeys(s.run_id for s in ask.series):
            _require_run(catalog, run_id)
        result: MultiSeries
        if ask.grid == "aligned" and ask.x == "step" and ask.aggregate is None:
            result = aligned_series(
                reader, snapshot, ask.series, ask.buckets, x_min=ask.x_min, x_max=ask.x_max
            )
        else:
            result = multi_series(
                reader,
                snapshot,
                ask.series,
                ask.buckets,
                x=ask.x,
                x_min=ask.x_min,
                x_max=ask.x_max,
                aggregate=ask.aggregate,
            )
        return dumps(
            {
                "x": result.x,
                "aggregate": result.aggregate,
                "series": [series_json(data) for data in result.series],
            },
            floats_converted=True,  # series_json: every float column through float_list
        )

    ask = multi_series_request(await request.read())
    app = request.app
    return json_response(await with_snapshot(request, document, app[CATALOG], app[READER], ask))


class _Busy(SteppeError):
    error_code = "RESOURCE_EXHAUSTED"


async def _sql(request: web.Request) -> web.Response:
    def document(
        snapshot: Snapshot, tables: CatalogTables, sandbox: SqlSandbox, ask: SqlRequest
    ) -> web.Response:
        arrow = ask.format == "arrow"
        limit = sandbox.max_result_bytes // (1 if arrow else JSON_RESULT_FRACTION)
        table = sandbox.run(snapshot, tables.current(), ask.query, ask.max_rows, max_bytes=limit)
        if arrow:
            return web.Response(body=arrow_stream(table), content_type=ARROW_STREAM)
        columns = [{"name": f.name, "type": str(f.type)} for f in table.schema]
        return json_response(dumps({"columns": columns, "rows": table_rows(table)}))

    ask = sql_request(await request.read())
    app = request.app
    admission = app[SQL_ADMISSION]
    if admission.locked():
        raise _Busy(
            f"the server is running {SQL_WORKERS} SQL queries and has {SQL_MAX_WAITING} "
            "waiting (the SQL concurrency limit): retry later"
        )
    async with admission:
        # User SQL waits for its own threads (SQL_WORKERS), never for the UI's reads'.
        source, executor = app[SNAPSHOT_SOURCE], app[SQL_EXECUTOR]
        args = (app[CATALOG_TABLES], app[SQL_SANDBOX], ask)
        try:
            return await run_on(executor, document, source.snapshot(), *args)
        except duckdb.IOException:
            log.info("Retrying a SQL query on a fresh snapshot", exc_info=True)
            return await run_on(executor, document, source.snapshot(), *args)
