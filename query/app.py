"""The read side's aiohttp app: steppe's JSON API (query/API.md) and the web UI's files.

Handlers take snapshots on the loop thread and run every blocking read (catalog, DuckDB, JSON
encoding) in the query executor. Nothing here writes to the catalog or the data dir; the routes
of steppe.query.mlflow_api and steppe.query.artifacts, registered by make_app, do.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import logging
import math
import re
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Concatenate, ParamSpec, TypeVar

import duckdb
import pyarrow as pa
from aiohttp import web
from multidict import MultiMapping

from steppe import auth
from steppe.errors import (
    CODE_BY_HTTP_STATUS,
    InvalidParameterValue,
    ResourceDoesNotExist,
    SteppeError,
)
from steppe.ingest.catalog import Catalog, ExperimentRecord, RunRecord
from steppe.ingest.layout import Snapshot, SnapshotSource
from steppe.query.artifacts import ArtifactStore, add_artifact_routes
from steppe.query.guard import LOOPBACK_HOSTS, guard_middleware
from steppe.query.jsonenc import dumps, float_list, float_value, parse_body, table_rows
from steppe.query.paging import page_offset, page_token
from steppe.query.reader import MetricSummary, Reader
from steppe.query.search import (
    VIEW_TYPES,
    Comparison,
    OrderKey,
    RunSearch,
    parse_filter,
    parse_order_by,
)
from steppe.query.series import (
    AGGREGATES,
    X_AXES,
    Aggregate,
    MultiSeries,
    SeriesData,
    SeriesKey,
    XAxis,
    multi_series,
)
from steppe.query.sql import (
    DEFAULT_MAX_RESULT_BYTES,
    DEFAULT_MAX_ROWS,
    DEFAULT_TIME_LIMIT_S,
    JSON_RESULT_FRACTION,
    MAX_MAX_ROWS,
    SqlSandbox,
)
from steppe.query.views import CatalogTables, matching_run_ids

if TYPE_CHECKING:
    from steppe.query.mlflow_api import MetricWriter

__all__ = [
    "API_PREFIX",
    "CATALOG",
    "CATALOG_TABLES",
    "DEFAULT_STATIC_DIR",
    "READER",
    "SERVER_INFO",
    "SNAPSHOT_SOURCE",
    "make_app",
    "with_snapshot",
]

log = logging.getLogger("steppe.query")

P = ParamSpec("P")
T = TypeVar("T")

API_PREFIX = "/api/steppe/v1"
DEFAULT_STATIC_DIR = Path(__file__).parent / "static"

DEFAULT_BUCKETS = 1000
MAX_BUCKETS = 10_000
DEFAULT_MAX_RESULTS = 1000
MAX_MAX_RESULTS = 50_000
#: Series in one multi-series request.
MAX_SERIES = 100
ARROW_STREAM = "application/vnd.apache.arrow.stream"
#: Concurrent blocking reads; each holds a DuckDB cursor and its result in memory.
QUERY_WORKERS = 4
#: User SQL runs on threads of its own, so heavy queries never take the UI's: this many at
#: once, and at most SQL_MAX_WAITING more queued; past that a query is answered 429.
SQL_WORKERS = 1
SQL_MAX_WAITING = 8

_INT64_MIN = -(2**63)
_INT64_MAX = 2**63 - 1
_INTEGER_RE = re.compile(r"-?[0-9]+")
_NUMBER_RE = re.compile(r"-?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?")

CATALOG = web.AppKey[Catalog]("catalog")
SNAPSHOT_SOURCE = web.AppKey[SnapshotSource]("snapshot_source")
SERVER_INFO = web.AppKey[Mapping[str, object]]("server_info")
STATIC_DIR = web.AppKey("static_dir", Path)
ON_ACTIVITY = web.AppKey[Callable[[], None] | None]("on_activity")
#: Set while the app runs (its cleanup context owns both).
READER = web.AppKey("reader", Reader)
EXECUTOR = web.AppKey("executor", ThreadPoolExecutor)
CATALOG_TABLES = web.AppKey("catalog_tables", CatalogTables)
SQL_SANDBOX = web.AppKey("sql_sandbox", SqlSandbox)
SQL_TIME_LIMIT_S = web.AppKey("sql_time_limit_s", float)
SQL_MAX_RESULT_BYTES = web.AppKey("sql_max_result_bytes", int)
SQL_EXECUTOR = web.AppKey("sql_executor", ThreadPoolExecutor)
SQL_ADMISSION = web.AppKey("sql_admission", asyncio.Semaphore)

_PLACEHOLDER_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>steppe</title></head>
<body><h1>steppe</h1><p>The web UI is not installed. The JSON API is at
<a href="/api/steppe/v1/experiments">/api/steppe/v1/experiments</a>.</p></body></html>
"""


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
    middlewares = [_error_middleware]
    if token:
        middlewares.insert(0, _auth_middleware(token))
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
    app.router.add_post(f"{api}/runs/search", _search_runs)
    app.router.add_get(f"{api}/runs/{{run_id}}", _get_run)
    app.router.add_get(f"{api}/metric-history", _metric_history)
    app.router.add_get(f"{api}/series", _series)
    app.router.add_post(f"{api}/series", _multi_series)
    app.router.add_post(f"{api}/sql", _sql)

    app.router.add_get("/", _index)
    app.router.add_get("/experiments/{experiment_id}", _index)
    app.router.add_get("/runs/{run_id}", _index)
    app.router.add_get("/compare", _index)
    app.router.add_get("/sql", _index)
    app.router.add_get("/models", _index)
    app.router.add_get("/models/{name}", _index)
    app.router.add_get("/logged-models/{model_id}", _index)
    app.router.add_get("/static/{path:.*}", _static)

    if artifacts is not None:
        add_artifact_routes(app, artifacts, catalog)
    # Imported here, not at the top: mlflow_api uses this module's app keys.
    from steppe.query.mlflow_api import add_mlflow_routes

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


# errors ----------------------------------------------------------------------------------


def _error(status: int, error_code: str, message: str) -> web.Response:
    return web.Response(
        status=status,
        body=dumps({"error_code": error_code, "message": message}),
        content_type="application/json",
    )


_PUBLIC_PATHS = {f"{API_PREFIX}/server-info", "/api/3.0/mlflow/server-info", "/health"}


def _auth_middleware(token: str) -> Any:
    """Bearer token for APIs (MLflow's client sends MLFLOW_TRACKING_TOKEN this way); for a
    browser, ``?token=`` on a page sets an HttpOnly cookie and redirects without it."""

    @web.middleware
    async def check(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        if request.path in _PUBLIC_PATHS:
            return await handler(request)
        if auth.matches(token, request.headers.get("Authorization")) or auth.matches(
            token, request.cookies.get(auth.COOKIE)
        ):
            return await handler(request)
        if request.method == "GET" and auth.matches(token, request.query.get("token")):
            query = {k: v for k, v in request.query.items() if k != "token"}
            response = web.HTTPFound(request.rel_url.with_query(query))
            response.set_cookie(
                auth.COOKIE, token, httponly=True, samesite="Strict", secure=request.secure
            )
            raise response
        return web.json_response(
            {
                "error_code": "UNAUTHENTICATED",
                "message": "this steppe server needs a token: send 'Authorization: Bearer "
                "<token>' (STEPPE_TOKEN / MLFLOW_TRACKING_TOKEN), or log in a browser by "
                "opening http://HOST:PORT/?token=<your token> once",
            },
            status=401,
        )

    return check


@web.middleware
async def _error_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    try:
        on_activity = request.app[ON_ACTIVITY]
        if on_activity is not None:
            on_activity()
        return await handler(request)
    except SteppeError as exc:
        return _error(exc.http_status, exc.error_code, exc.message)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        if exc.status == 404:
            message = f"Not found: {request.method} {request.path}"
        elif exc.status == 405:
            message = f"Method {request.method} is not allowed for {request.path}"
        else:
            message = f"{exc.reason}: {request.method} {request.path}"
        code = CODE_BY_HTTP_STATUS.get(
            exc.status, "BAD_REQUEST" if exc.status < 500 else "INTERNAL_ERROR"
        )
        response = _error(exc.status, code, message)
        if "Allow" in exc.headers:
            response.headers["Allow"] = exc.headers["Allow"]
        return response
    except (OSError, sqlite3.OperationalError) as exc:
        if not _disk_full(exc):
            log.exception("Unhandled error in %s %s", request.method, request.path)
            return _error(500, "INTERNAL_ERROR", "Internal server error; see the server log.")
        log.warning("Disk full in %s %s: %s", request.method, request.path, exc)
        return _error(
            507,
            "RESOURCE_EXHAUSTED",
            "the server's disk is full: nothing was changed; free space and retry",
        )
    except Exception:
        # Anything else is a bug: log it with its stack, answer without one.
        log.exception("Unhandled error in %s %s", request.method, request.path)
        return _error(500, "INTERNAL_ERROR", "Internal server error; see the server log.")


def _disk_full(exc: BaseException) -> bool:
    if isinstance(exc, OSError):
        return exc.errno in (errno.ENOSPC, errno.EDQUOT) or "No space left" in str(exc)
    return "disk is full" in str(exc)


# running blocking reads ----------------------------------------------------------------


async def _blocking(
    request: web.Request, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs
) -> T:
    return await _on(request.app[EXECUTOR], fn, *args, **kwargs)


async def _on(
    executor: ThreadPoolExecutor, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs
) -> T:
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(executor, functools.partial(fn, *args, **kwargs))


async def with_snapshot(
    request: web.Request,
    fn: Callable[Concatenate[Snapshot, P], T],
    *args: P.args,
    **kwargs: P.kwargs,
) -> T:
    """Run ``fn(snapshot, ...)`` in the executor on a snapshot taken here, on the loop."""
    source = request.app[SNAPSHOT_SOURCE]
    try:
        return await _blocking(request, fn, source.snapshot(), *args, **kwargs)
    except duckdb.IOException:
        # Compaction may have replaced a file of that snapshot while the query waited;
        # a fresh snapshot names the replacement. A real I/O fault fails again.
        log.info("Retrying a read on a fresh snapshot", exc_info=True)
        return await _blocking(request, fn, source.snapshot(), *args, **kwargs)


def _json(body: bytes) -> web.Response:
    return web.Response(body=body, content_type="application/json")


# request validation ----------------------------------------------------------------------


def _param(query: MultiMapping[str], name: str, *, required: bool) -> str | None:
    values = query.getall(name, [])
    if len(values) > 1:
        raise InvalidParameterValue(name, values, "must be given at most once")
    if not values:
        if required:
            raise InvalidParameterValue(name, None, "query parameter is required")
        return None
    if values[0] == "":
        raise InvalidParameterValue(name, "", "must not be empty")
    return values[0]


def _int_param(query: MultiMapping[str], name: str, default: int, low: int, high: int) -> int:
    text = _param(query, name, required=False)
    if text is None:
        return default
    if not _INTEGER_RE.fullmatch(text) or not low <= int(text) <= high:
        raise InvalidParameterValue(name, text, f"must be an integer from {low} to {high}")
    return int(text)


def _step_param(query: MultiMapping[str], name: str) -> int | float | None:
    text = _param(query, name, required=False)
    if text is None:
        return None
    if _INTEGER_RE.fullmatch(text):
        return int(text)
    if _NUMBER_RE.fullmatch(text) and math.isfinite(float(text)):
        return float(text)
    raise InvalidParameterValue(name, text, "must be a finite number (a step)")


@dataclass(frozen=True)
class _MetricRequest:
    run_id: str
    key: str


@dataclass(frozen=True)
class _SeriesRequest:
    run_id: str
    key: str
    buckets: int
    x_min: int | None
    x_max: int | None


@dataclass(frozen=True)
class _SearchRunsRequest:
    experiment_ids: list[str] | None
    max_results: int
    filters: tuple[Comparison, ...] = ()
    order_by: tuple[OrderKey, ...] = ()
    lifecycle_stages: tuple[str, ...] | None = None
    offset: int = 0
    paged: bool = False  # the request sent page_token (even null): answer next_page_token


@dataclass(frozen=True)
class _SqlRequest:
    query: str
    format: str
    max_rows: int


@dataclass(frozen=True)
class _MultiSeriesRequest:
    series: list[SeriesKey]
    buckets: int
    x: XAxis
    x_min: int | None
    x_max: int | None
    aggregate: Aggregate | None


def _metric_history_request(query: MultiMapping[str]) -> _MetricRequest:
    run_id = _param(query, "run_id", required=True)
    key = _param(query, "key", required=True)
    assert run_id is not None and key is not None
    return _MetricRequest(run_id, key)


def _series_request(query: MultiMapping[str]) -> _SeriesRequest:
    metric = _metric_history_request(query)
    buckets = _int_param(query, "buckets", DEFAULT_BUCKETS, 1, MAX_BUCKETS)
    x_min = _step_param(query, "x_min")
    x_max = _step_param(query, "x_max")
    if x_min is not None and x_max is not None and x_min > x_max:
        raise InvalidParameterValue("x_min", x_min, f"must not be greater than x_max ({x_max})")
    # Steps are int64: a fractional bound (a zoomed chart) rounds inwards.
    low = None if x_min is None else max(_INT64_MIN, min(_INT64_MAX, math.ceil(x_min)))
    high = None if x_max is None else max(_INT64_MIN, min(_INT64_MAX, math.floor(x_max)))
    return _SeriesRequest(metric.run_id, metric.key, buckets, low, high)


def _json_object(body: bytes, allowed: Sequence[str]) -> dict[str, Any]:
    document = parse_body(body)
    if not isinstance(document, dict):
        raise InvalidParameterValue("body", document, "must be a JSON object")
    unknown = sorted(set(document) - set(allowed))
    if unknown:
        raise InvalidParameterValue(
            unknown[0], document[unknown[0]], f"unknown field; allowed: {', '.join(allowed)}"
        )
    return document


def _int_field(document: dict[str, Any], name: str, default: int, low: int, high: int) -> int:
    value = document.get(name, default)
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise InvalidParameterValue(name, value, f"must be an integer from {low} to {high}")
    return value


def _choice(document: dict[str, Any], name: str, choices: Sequence[str | None]) -> Any:
    value = document.get(name, choices[0])
    if value not in choices:
        shown = ", ".join("null" if c is None else f'"{c}"' for c in choices)
        raise InvalidParameterValue(name, value, f"must be one of {shown}")
    return value


def _search_runs_request(body: bytes) -> _SearchRunsRequest:
    document = _json_object(
        body,
        (
            "experiment_ids",
            "max_results",
            "filter_string",
            "order_by",
            "page_token",
            "run_view_type",
        ),
    )
    experiment_ids = document.get("experiment_ids")
    if experiment_ids is not None and (
        not isinstance(experiment_ids, list)
        or not all(isinstance(item, str) for item in experiment_ids)
    ):
        raise InvalidParameterValue(
            "experiment_ids", experiment_ids, "must be a list of experiment id strings or null"
        )
    max_results = _int_field(document, "max_results", DEFAULT_MAX_RESULTS, 1, MAX_MAX_RESULTS)
    filter_string = document.get("filter_string")
    if filter_string is not None and not isinstance(filter_string, str):
        raise InvalidParameterValue("filter_string", filter_string, "must be a string or null")
    order_by = document.get("order_by")
    if order_by is not None and not isinstance(order_by, list):
        raise InvalidParameterValue("order_by", order_by, "must be a list of strings or null")
    view_type = _choice(document, "run_view_type", ["ALL", "ACTIVE_ONLY", "DELETED_ONLY"])
    return _SearchRunsRequest(
        experiment_ids,
        max_results,
        filters=parse_filter(filter_string),
        order_by=parse_order_by(order_by),
        lifecycle_stages=VIEW_TYPES[view_type],
        offset=page_offset(document.get("page_token")),
        paged="page_token" in document,
    )


def _sql_request(body: bytes) -> _SqlRequest:
    document = _json_object(body, ("query", "format", "max_rows"))
    query = document.get("query")
    if not isinstance(query, str) or not query.strip():
        raise InvalidParameterValue("query", query, "must be a non-empty SQL string")
    fmt = _choice(document, "format", ["json", "arrow"])
    max_rows = _int_field(document, "max_rows", DEFAULT_MAX_ROWS, 1, MAX_MAX_ROWS)
    return _SqlRequest(query, fmt, max_rows)


def _bound(document: dict[str, Any], name: str) -> int | float | None:
    value = document.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InvalidParameterValue(name, value, "must be a finite number or null")
    return value


def _multi_series_request(body: bytes) -> _MultiSeriesRequest:
    document = _json_object(body, ("series", "buckets", "x_min", "x_max", "x", "aggregate"))
    raw = document.get("series")
    if not isinstance(raw, list) or not 1 <= len(raw) <= MAX_SERIES:
        raise InvalidParameterValue(
            "series", raw, f'must be a list of 1 to {MAX_SERIES} {{"run_id", "key"}} objects'
        )
    series: list[SeriesKey] = []
    seen: dict[SeriesKey, int] = {}
    for index, item in enumerate(raw):
        name = f"series[{index}]"
        if not isinstance(item, dict) or set(item) != {"run_id", "key"}:
            raise InvalidParameterValue(name, item, 'must be an object {"run_id", "key"}')
        for part in ("run_id", "key"):
            if not isinstance(item[part], str) or item[part] == "":
                raise InvalidParameterValue(f"{name}.{part}", item[part], "must be a string")
        key = SeriesKey(item["run_id"], item["key"])
        if key in seen:
            raise InvalidParameterValue(name, item, f"repeats series[{seen[key]}]")
        seen[key] = index
        series.append(key)
    buckets = _int_field(document, "buckets", DEFAULT_BUCKETS, 1, MAX_BUCKETS)
    x = _choice(document, "x", list(X_AXES))
    aggregate = _choice(document, "aggregate", [None, *AGGREGATES])
    x_min, x_max = _bound(document, "x_min"), _bound(document, "x_max")
    if x_min is not None and x_max is not None and x_min > x_max:
        raise InvalidParameterValue("x_min", x_min, f"must not be greater than x_max ({x_max})")
    # x is int64 (steps or ms): a fractional bound (a zoomed chart) rounds inwards.
    low = None if x_min is None else max(_INT64_MIN, min(_INT64_MAX, math.ceil(x_min)))
    high = None if x_max is None else max(_INT64_MIN, min(_INT64_MAX, math.floor(x_max)))
    return _MultiSeriesRequest(series, buckets, x, low, high, aggregate)


# documents -------------------------------------------------------------------------------


def _experiment_json(experiment: ExperimentRecord, runs: Sequence[RunRecord]) -> dict[str, object]:
    activity = [max(run.start_time, run.end_time or 0) for run in runs]
    return {
        "experiment_id": experiment.experiment_id,
        "name": experiment.name,
        "artifact_location": experiment.artifact_location,
        "lifecycle_stage": experiment.lifecycle_stage,
        "creation_time": experiment.creation_time,
        "last_update_time": experiment.last_update_time,
        "tags": dict(experiment.tags),
        "run_count": len(runs),
        "last_activity": max(activity, default=None),
    }


def _metric_json(summary: MetricSummary) -> dict[str, object]:
    # min/max are None when every value is NaN: their NaN-ignoring min/max is then NaN.
    return {
        "value": float_value(summary["value"]),
        "step": summary["step"],
        "timestamp": summary["timestamp"],
        "min": float_value(summary["min"] if summary["min"] is not None else math.nan),
        "max": float_value(summary["max"] if summary["max"] is not None else math.nan),
        "count": summary["count"],
    }


def _run_json(run: RunRecord, metrics: Mapping[str, MetricSummary]) -> dict[str, object]:
    return {
        "info": {
            "run_id": run.run_id,
            "run_name": run.run_name,
            "experiment_id": run.experiment_id,
            "status": run.status,
            "start_time": run.start_time,
            "end_time": run.end_time,
            "lifecycle_stage": run.lifecycle_stage,
            "artifact_uri": run.artifact_uri,
            "user_id": run.user_id,
        },
        "data": {
            "params": dict(run.params),
            "tags": dict(run.tags),
            "metrics": {key: _metric_json(summary) for key, summary in metrics.items()},
        },
    }


def _runs_json(reader: Reader, snapshot: Snapshot, runs: Sequence[RunRecord]) -> list[object]:
    metrics = reader.latest_metrics(snapshot, [run.run_id for run in runs])
    return [_run_json(run, metrics.get(run.run_id, {})) for run in runs]


def _runs_document(reader: Reader, snapshot: Snapshot, runs: Sequence[RunRecord]) -> bytes:
    return dumps({"runs": _runs_json(reader, snapshot, runs)})


def _series_json(data: SeriesData) -> dict[str, object]:
    table = data.table
    out: dict[str, object] = {
        "run_id": None if data.series is None else data.series.run_id,
        "key": None if data.series is None else data.series.key,
        "bucketed": data.bucketed,
        "x": table.column("x").to_pylist(),
    }
    names = ("min", "max", "first", "last", "mean") if data.bucketed else ("value",)
    for name in names:
        out[name] = float_list(table.column(name))
    if "count" in table.column_names:
        out["count"] = table.column("count").to_pylist()
    return out


def _arrow_buffer(table: pa.Table) -> pa.Buffer:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue()


def _arrow_stream(table: pa.Table) -> bytes:
    body: bytes = _arrow_buffer(table).to_pybytes()
    return body


def _require_run(catalog: Catalog, run_id: str) -> None:
    if not catalog.run_exists(run_id):
        raise ResourceDoesNotExist(f"Run with id={run_id!r} not found")


# handlers (each builds its document in the executor) ----------------------------------


async def _server_info(request: web.Request) -> web.Response:
    info = {
        name: value if value is None or isinstance(value, (str, int, float, bool)) else str(value)
        for name, value in request.app[SERVER_INFO].items()
    }
    return _json(dumps(info))


async def _health(request: web.Request) -> web.Response:
    """200 ``{"status": "ok"}``, or 503 with the reason when metric writes cannot be stored."""
    failure = getattr(request.app[SNAPSHOT_SOURCE], "failure", None)
    if failure:
        body = {"status": "unavailable", "reason": f"cannot write metrics: {failure}"}
        return web.Response(status=503, body=dumps(body), content_type="application/json")
    return _json(dumps({"status": "ok"}))


async def _list_experiments(request: web.Request) -> web.Response:
    def document(catalog: Catalog) -> bytes:
        runs_by_experiment: dict[str, list[RunRecord]] = {}
        for run in catalog.list_runs():
            runs_by_experiment.setdefault(run.experiment_id, []).append(run)
        experiments = [
            _experiment_json(exp, runs_by_experiment.get(exp.experiment_id, []))
            for exp in catalog.list_experiments()
        ]
        return dumps({"experiments": experiments})

    return _json(await _blocking(request, document, request.app[CATALOG]))


async def _get_experiment(request: web.Request) -> web.Response:
    def document(catalog: Catalog, experiment_id: str) -> bytes:
        experiment = catalog.get_experiment(experiment_id)
        runs = catalog.list_runs([experiment_id])
        return dumps({"experiment": _experiment_json(experiment, runs)})

    experiment_id = request.match_info["experiment_id"]
    return _json(await _blocking(request, document, request.app[CATALOG], experiment_id))


async def _experiment_runs(request: web.Request) -> web.Response:
    def document(snapshot: Snapshot, catalog: Catalog, reader: Reader, experiment_id: str) -> bytes:
        catalog.get_experiment(experiment_id)  # 404 for an unknown id
        return _runs_document(reader, snapshot, catalog.list_runs([experiment_id]))

    app = request.app
    experiment_id = request.match_info["experiment_id"]
    return _json(await with_snapshot(request, document, app[CATALOG], app[READER], experiment_id))


async def _search_runs(request: web.Request) -> web.Response:
    def document(
        snapshot: Snapshot,
        tables: CatalogTables,
        reader: Reader,
        ask: _SearchRunsRequest,
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
        out: dict[str, object] = {"runs": _runs_json(reader, snapshot, runs)}
        if ask.paged and len(run_ids) > ask.max_results:
            out["next_page_token"] = page_token(ask.offset + ask.max_results)
        return dumps(out)

    ask = _search_runs_request(await request.read())
    app = request.app
    return _json(
        await with_snapshot(
            request, document, app[CATALOG_TABLES], app[READER], ask, app[SQL_TIME_LIMIT_S]
        )
    )


async def _get_run(request: web.Request) -> web.Response:
    def document(snapshot: Snapshot, catalog: Catalog, reader: Reader, run_id: str) -> bytes:
        run = catalog.get_run(run_id)
        metrics = reader.latest_metrics(snapshot, [run_id]).get(run_id, {})
        return dumps({"run": _run_json(run, metrics)})

    app = request.app
    run_id = request.match_info["run_id"]
    return _json(await with_snapshot(request, document, app[CATALOG], app[READER], run_id))


async def _metric_history(request: web.Request) -> web.Response:
    def document(
        snapshot: Snapshot, catalog: Catalog, reader: Reader, metric: _MetricRequest, fmt: str
    ) -> web.Response:
        _require_run(catalog, metric.run_id)
        table = reader.metric_history(snapshot, metric.run_id, metric.key)
        if fmt == "arrow":
            # The IPC stream's own buffers: no per-point Python work, no copy to bytes.
            return web.Response(body=memoryview(_arrow_buffer(table)), content_type=ARROW_STREAM)
        return _json(
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

    metric = _metric_history_request(request.query)
    fmt = _param(request.query, "format", required=False) or "json"
    if fmt not in ("json", "arrow"):
        raise InvalidParameterValue("format", fmt, 'must be "json" or "arrow"')
    app = request.app
    return await with_snapshot(request, document, app[CATALOG], app[READER], metric, fmt)


async def _series(request: web.Request) -> web.Response:
    def document(
        snapshot: Snapshot, catalog: Catalog, reader: Reader, ask: _SeriesRequest
    ) -> bytes:
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
        return dumps(out)

    ask = _series_request(request.query)
    app = request.app
    return _json(await with_snapshot(request, document, app[CATALOG], app[READER], ask))


async def _multi_series(request: web.Request) -> web.Response:
    def document(
        snapshot: Snapshot, catalog: Catalog, reader: Reader, ask: _MultiSeriesRequest
    ) -> bytes:
        for run_id in dict.fromkeys(s.run_id for s in ask.series):
            _require_run(catalog, run_id)
        result: MultiSeries = multi_series(
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
                "series": [_series_json(data) for data in result.series],
            }
        )

    ask = _multi_series_request(await request.read())
    app = request.app
    return _json(await with_snapshot(request, document, app[CATALOG], app[READER], ask))


class _Busy(SteppeError):
    error_code = "RESOURCE_EXHAUSTED"


async def _sql(request: web.Request) -> web.Response:
    def document(
        snapshot: Snapshot, tables: CatalogTables, sandbox: SqlSandbox, ask: _SqlRequest
    ) -> web.Response:
        arrow = ask.format == "arrow"
        limit = sandbox.max_result_bytes // (1 if arrow else JSON_RESULT_FRACTION)
        table = sandbox.run(snapshot, tables.current(), ask.query, ask.max_rows, max_bytes=limit)
        if arrow:
            return web.Response(body=_arrow_stream(table), content_type=ARROW_STREAM)
        columns = [{"name": f.name, "type": str(f.type)} for f in table.schema]
        return _json(dumps({"columns": columns, "rows": table_rows(table)}))

    ask = _sql_request(await request.read())
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
            return await _on(executor, document, source.snapshot(), *args)
        except duckdb.IOException:
            log.info("Retrying a SQL query on a fresh snapshot", exc_info=True)
            return await _on(executor, document, source.snapshot(), *args)


def _static_file(root: Path, relative: str) -> Path | None:
    """The file ``relative`` names inside ``root``, or None: no directories (no listings),
    nothing that resolves outside ``root`` (``..``, absolute paths, symlinks out)."""
    if not relative or Path(relative).is_absolute():
        return None
    try:
        base = root.resolve(strict=True)
        path = (base / relative).resolve(strict=True)
        path.relative_to(base)
    except (OSError, RuntimeError, ValueError):
        return None  # missing, a symlink loop, or outside the folder: all just "not found"
    return path if path.is_file() else None


async def _index(request: web.Request) -> web.StreamResponse:
    index = await asyncio.to_thread(_static_file, request.app[STATIC_DIR], "index.html")
    if index is None:
        return web.Response(text=_PLACEHOLDER_PAGE, content_type="text/html")
    # The page script routes on location.pathname; always revalidate it.
    return web.FileResponse(index, headers={"Cache-Control": "no-cache"})


async def _static(request: web.Request) -> web.StreamResponse:
    path = await asyncio.to_thread(
        _static_file, request.app[STATIC_DIR], request.match_info["path"]
    )
    if path is None:
        raise web.HTTPNotFound()
    return web.FileResponse(path)
