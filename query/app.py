"""The read side's aiohttp app: steppe's JSON API (query/API.md) and the web UI's files.

Handlers take snapshots on the loop thread and run every blocking read (catalog, DuckDB, JSON
encoding) in the query executor. Nothing here writes to the catalog or the data dir.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import math
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Concatenate, ParamSpec, TypeVar

import duckdb
from aiohttp import web
from multidict import MultiMapping

from steppe.errors import InvalidParameterValue, ResourceDoesNotExist, SteppeError
from steppe.ingest.catalog import Catalog, ExperimentRecord, RunRecord
from steppe.ingest.layout import Snapshot, SnapshotSource
from steppe.query.jsonenc import dumps, float_list, float_value
from steppe.query.reader import MetricSummary, Reader

__all__ = [
    "API_PREFIX",
    "CATALOG",
    "DEFAULT_STATIC_DIR",
    "READER",
    "SERVER_INFO",
    "SNAPSHOT_SOURCE",
    "make_app",
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
#: Concurrent blocking reads; each holds a DuckDB cursor and its result in memory.
QUERY_WORKERS = 4

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

_PLACEHOLDER_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>steppe</title></head>
<body><h1>steppe</h1><p>The web UI is not installed. The JSON API is at
<a href="/api/steppe/v1/experiments">/api/steppe/v1/experiments</a>.</p></body></html>
"""

# error_code for aiohttp's own HTTP errors (unknown route, wrong method, body too large...).
_HTTP_ERROR_CODES = {
    403: "PERMISSION_DENIED",
    404: "ENDPOINT_NOT_FOUND",
    405: "METHOD_NOT_ALLOWED",
    413: "REQUEST_LIMIT_EXCEEDED",
    503: "TEMPORARILY_UNAVAILABLE",
}


def make_app(
    catalog: Catalog,
    source: SnapshotSource,
    server_info: Mapping[str, object],
    *,
    static_dir: Path | None = None,
    on_activity: Callable[[], None] | None = None,
) -> web.Application:
    """The read side's HTTP app. ``server_info`` is read on every ``/server-info`` request
    (so ports may be filled in after binding); ``on_activity`` is called at the start of
    every request (an idle-shutdown hook). The DuckDB reader and its worker threads live
    from app startup to cleanup.

        app = make_app(catalog, store, {"version": "0.1.0", "grpc_port": 5001, ...})
        web.run_app(app, host="127.0.0.1", port=5000)
    """
    app = web.Application(middlewares=[_error_middleware])
    app[CATALOG] = catalog
    app[SNAPSHOT_SOURCE] = source
    app[SERVER_INFO] = server_info
    app[STATIC_DIR] = DEFAULT_STATIC_DIR if static_dir is None else Path(static_dir)
    app[ON_ACTIVITY] = on_activity
    app.cleanup_ctx.append(_query_resources)

    api = API_PREFIX
    app.router.add_get(f"{api}/server-info", _server_info)
    app.router.add_get(f"{api}/experiments", _list_experiments)
    app.router.add_get(f"{api}/experiments/{{experiment_id}}", _get_experiment)
    app.router.add_get(f"{api}/experiments/{{experiment_id}}/runs", _experiment_runs)
    app.router.add_post(f"{api}/runs/search", _search_runs)
    app.router.add_get(f"{api}/runs/{{run_id}}", _get_run)
    app.router.add_get(f"{api}/metric-history", _metric_history)
    app.router.add_get(f"{api}/series", _series)

    app.router.add_get("/", _index)
    app.router.add_get("/experiments/{experiment_id}", _index)
    app.router.add_get("/runs/{run_id}", _index)
    app.router.add_get("/static/{path:.*}", _static)
    return app


async def _query_resources(app: web.Application) -> AsyncIterator[None]:
    executor = ThreadPoolExecutor(max_workers=QUERY_WORKERS, thread_name_prefix="steppe-query")
    reader = Reader()
    app[EXECUTOR] = executor
    app[READER] = reader
    try:
        yield
    finally:
        # Let running queries finish before their database goes away.
        await asyncio.get_running_loop().run_in_executor(None, executor.shutdown, True)
        reader.close()


# errors ----------------------------------------------------------------------------------


def _error(status: int, error_code: str, message: str) -> web.Response:
    return web.Response(
        status=status,
        body=dumps({"error_code": error_code, "message": message}),
        content_type="application/json",
    )


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
        code = _HTTP_ERROR_CODES.get(
            exc.status, "BAD_REQUEST" if exc.status < 500 else "INTERNAL_ERROR"
        )
        response = _error(exc.status, code, message)
        if "Allow" in exc.headers:
            response.headers["Allow"] = exc.headers["Allow"]
        return response
    except Exception:
        # Anything else is a bug: log it with its stack, answer without one.
        log.exception("Unhandled error in %s %s", request.method, request.path)
        return _error(500, "INTERNAL_ERROR", "Internal server error; see the server log.")


# running blocking reads ----------------------------------------------------------------


async def _blocking(
    request: web.Request, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs
) -> T:
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(request.app[EXECUTOR], functools.partial(fn, *args, **kwargs))


async def _with_snapshot(
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


def _search_runs_request(body: bytes) -> _SearchRunsRequest:
    try:
        document = json.loads(body) if body.strip() else {}
    except ValueError as exc:
        text = body[:80].decode(errors="replace")
        raise InvalidParameterValue("body", text, f"is not valid JSON ({exc})") from None
    if not isinstance(document, dict):
        raise InvalidParameterValue("body", document, "must be a JSON object")
    unknown = sorted(set(document) - {"experiment_ids", "max_results"})
    if unknown:
        raise InvalidParameterValue(
            unknown[0], document[unknown[0]], "unknown field; allowed: experiment_ids, max_results"
        )
    experiment_ids = document.get("experiment_ids")
    if experiment_ids is not None and (
        not isinstance(experiment_ids, list)
        or not all(isinstance(item, str) for item in experiment_ids)
    ):
        raise InvalidParameterValue(
            "experiment_ids", experiment_ids, "must be a list of experiment id strings or null"
        )
    max_results = document.get("max_results", DEFAULT_MAX_RESULTS)
    if (
        not isinstance(max_results, int)
        or isinstance(max_results, bool)
        or not 1 <= max_results <= MAX_MAX_RESULTS
    ):
        raise InvalidParameterValue(
            "max_results", max_results, f"must be an integer from 1 to {MAX_MAX_RESULTS}"
        )
    return _SearchRunsRequest(experiment_ids, max_results)


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


def _runs_document(reader: Reader, snapshot: Snapshot, runs: Sequence[RunRecord]) -> bytes:
    metrics = reader.latest_metrics(snapshot, [run.run_id for run in runs])
    return dumps({"runs": [_run_json(run, metrics.get(run.run_id, {})) for run in runs]})


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
    return _json(await _with_snapshot(request, document, app[CATALOG], app[READER], experiment_id))


async def _search_runs(request: web.Request) -> web.Response:
    def document(
        snapshot: Snapshot, catalog: Catalog, reader: Reader, search: _SearchRunsRequest
    ) -> bytes:
        runs = catalog.list_runs(search.experiment_ids)[: search.max_results]
        return _runs_document(reader, snapshot, runs)

    search = _search_runs_request(await request.read())
    app = request.app
    return _json(await _with_snapshot(request, document, app[CATALOG], app[READER], search))


async def _get_run(request: web.Request) -> web.Response:
    def document(snapshot: Snapshot, catalog: Catalog, reader: Reader, run_id: str) -> bytes:
        run = catalog.get_run(run_id)
        metrics = reader.latest_metrics(snapshot, [run_id]).get(run_id, {})
        return dumps({"run": _run_json(run, metrics)})

    app = request.app
    run_id = request.match_info["run_id"]
    return _json(await _with_snapshot(request, document, app[CATALOG], app[READER], run_id))


async def _metric_history(request: web.Request) -> web.Response:
    def document(
        snapshot: Snapshot, catalog: Catalog, reader: Reader, metric: _MetricRequest
    ) -> bytes:
        _require_run(catalog, metric.run_id)
        table = reader.metric_history(snapshot, metric.run_id, metric.key)
        return dumps(
            {
                "run_id": metric.run_id,
                "key": metric.key,
                "step": table.column("step").to_pylist(),
                "value": float_list(table.column("value")),
                "timestamp": table.column("timestamp").to_pylist(),
            }
        )

    metric = _metric_history_request(request.query)
    app = request.app
    return _json(await _with_snapshot(request, document, app[CATALOG], app[READER], metric))


async def _series(request: web.Request) -> web.Response:
    def document(
        snapshot: Snapshot, catalog: Catalog, reader: Reader, ask: _SeriesRequest
    ) -> bytes:
        _require_run(catalog, ask.run_id)
        series = reader.series(snapshot, ask.run_id, ask.key, ask.buckets, ask.x_min, ask.x_max)
        table = series.table
        out: dict[str, object] = {
            "run_id": ask.run_id,
            "key": ask.key,
            "bucketed": series.bucketed,
            "step": table.column("step").to_pylist(),
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
    return _json(await _with_snapshot(request, document, app[CATALOG], app[READER], ask))


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
