"""MLflow's runs routes: create, get, update, delete, restore, log-metric, log-parameter,
set-tag, delete-tag, log-batch, log-inputs and search. Writes go to the domain services
(steppe.ingest.tracking) and points to the MetricWriter.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from aiohttp import web

from steppe.errors import (
    InvalidParameterValue,
)
from steppe.ingest.catalog import (
    Catalog,
)
from steppe.ingest.layout import Snapshot
from steppe.query import mlflow_models  # LoggedModel metrics (model_id)
from steppe.query.context import CATALOG, CATALOG_TABLES, READER, SQL_TIME_LIMIT_S, with_snapshot
from steppe.query.jsonenc import dumps
from steppe.query.mlflow_api.common import (
    _RUN_STATUS_NUMBERS,
    _VIEW_TYPE_NUMBERS,
    DEFAULT_SEARCH_RESULTS,
    MAX_BATCH_REQUEST_BYTES,
    MAX_SEARCH_RESULTS,
    _blocking,
    _catalog,
    _dataset_inputs,
    _Fields,
    _fields,
    _json,
    _key,
    _log_batch_request,
    _metric,
    _ok,
    _page_offset,
    _page_token,
    _pairs,
    _Point,
    _run_id,
    _run_info_json,
    _run_json,
    _runs,
    _runs_json,
    _text,
    _writer,
)
from steppe.query.reader import Reader
from steppe.query.search import (
    VIEW_TYPES,
    Comparison,
    OrderKey,
    RunSearch,
    parse_filter,
    parse_order_by,
)
from steppe.query.views import CatalogTables, matching_run_ids
from steppe.validation import (
    check_experiment_id,
)


async def _create_run(request: web.Request) -> web.Response:
    _writer(request)
    fields = await _fields(request)
    start_time = fields.int64("start_time")
    if start_time is not None and start_time < 0:
        raise InvalidParameterValue("start_time", start_time, "must be non-negative (ms)")
    services = _runs(request)
    record = await _blocking(
        lambda: services.create(
            experiment_id=fields.string("experiment_id"),
            run_name=fields.string("run_name"),
            start_time=start_time,
            tags=_pairs(fields.objects("tags"), "tags"),
            user_id=fields.string("user_id"),
        )
    )
    return _json({"run": _run_json(record, {})})


async def _get_run(request: web.Request) -> web.Response:
    def document(snapshot: Snapshot, catalog: Catalog, reader: Reader, run_id: str) -> bytes:
        run = catalog.get_run(run_id)
        return dumps({"run": _runs_json(reader, catalog, snapshot, [run])[0]})

    fields = await _fields(request)
    app = request.app
    body = await with_snapshot(request, document, app[CATALOG], app[READER], _run_id(fields))
    return web.Response(body=body, content_type="application/json")


async def _update_run(request: web.Request) -> web.Response:
    _writer(request)
    fields = await _fields(request)
    run_id = _run_id(fields)
    status = fields.enum("status", _RUN_STATUS_NUMBERS, "") or None
    end_time = fields.int64("end_time")
    if end_time is not None and end_time < 0:
        raise InvalidParameterValue("end_time", end_time, "must be non-negative (ms)")
    run_name = fields.string("run_name") or None
    runs = _runs(request)
    record = await _blocking(
        lambda: runs.update(run_id, status=status, end_time=end_time, run_name=run_name)
    )
    return _json({"run_info": _run_info_json(record)})


async def _delete_run(request: web.Request) -> web.Response:
    writer = _writer(request)
    fields = await _fields(request)
    run_id = _run_id(fields)
    await _blocking(_runs(request).delete, run_id)
    writer.forget_runs([run_id])
    return _ok()


async def _restore_run(request: web.Request) -> web.Response:
    _writer(request)
    fields = await _fields(request)
    await _blocking(_runs(request).restore, _run_id(fields))
    return _ok()


async def _log_points(request: web.Request, run_id: str, points: Sequence[_Point]) -> None:
    if not points:
        return
    await _writer(request).log_points(
        [run_id] * len(points),
        [p.key for p in points],
        [p.step for p in points],
        [p.timestamp for p in points],
        [p.value for p in points],
    )


async def _log_metric(request: web.Request) -> web.Response:
    _writer(request)
    fields = await _fields(request)
    run_id = _run_id(fields)
    point = _metric({name: fields.raw(name) for name in ("key", "value", "timestamp", "step")}, "")
    linked = {name: fields.raw(name) for name in ("model_id", "dataset_name", "dataset_digest")}
    model_metrics = mlflow_models.model_metrics_of(run_id, [linked], [point])
    await _blocking(_runs(request).active, run_id)
    await mlflow_models.check_model_metrics(request, model_metrics)
    await _log_points(request, run_id, [point])
    await mlflow_models.save_model_metrics(request, model_metrics)
    return _ok()


async def _log_param(request: web.Request) -> web.Response:
    _writer(request)
    fields = await _fields(request)
    run_id = _run_id(fields)
    key = _key("key", fields.raw("key"), "param key")
    value = _text("value", fields.raw("value"))
    await _blocking(_runs(request).log_params, run_id, [(key, value)], "param")
    return _ok()


async def _set_tag(request: web.Request) -> web.Response:
    _writer(request)
    fields = await _fields(request)
    run_id = _run_id(fields)
    key = _key("key", fields.raw("key"), "tag key")
    value = _text("value", fields.raw("value"))
    await _blocking(_runs(request).set_tags, run_id, [(key, value)], "tag")
    return _ok()


async def _delete_tag(request: web.Request) -> web.Response:
    _writer(request)
    fields = await _fields(request)
    run_id = _run_id(fields)
    key = fields.string("key", required=True)
    await _blocking(_runs(request).delete_tag, run_id, key)
    return _ok()


async def _log_batch(request: web.Request) -> web.Response:
    _writer(request)
    fields = await _fields(request, MAX_BATCH_REQUEST_BYTES)
    batch = _log_batch_request(fields)
    runs = _runs(request)
    raw = fields.objects("metrics")
    linked = raw if any(m.get("model_id") for m in raw) else []  # the points, before dedup
    model_metrics = mlflow_models.model_metrics_of(
        batch.run_id,
        linked,
        [_metric(m, f"metrics[{i}].") for i, m in enumerate(linked)],
        "metrics",
    )
    await mlflow_models.check_model_metrics(request, model_metrics)

    # MLflow's order: params (a changed value rejects the request), metrics, then tags.
    await _blocking(runs.log_params, batch.run_id, batch.params)
    await _log_points(request, batch.run_id, batch.metrics)
    await mlflow_models.save_model_metrics(request, model_metrics)
    if batch.tags:
        await _blocking(runs.set_tags, batch.run_id, batch.tags)
    return _ok()


async def _log_inputs(request: web.Request) -> web.Response:
    _writer(request)
    fields = await _fields(request)
    run_id = _run_id(fields)
    datasets = _dataset_inputs(fields.objects("datasets"))
    if fields.objects("models"):
        raise InvalidParameterValue(
            "models", fields.raw("models"), "steppe records no logged models; send datasets only"
        )
    catalog = _catalog(request)
    runs = _runs(request)

    def log() -> None:
        runs.active(run_id)
        if datasets:
            catalog.log_inputs(run_id, datasets)

    await _blocking(log)
    return _ok()


@dataclass(frozen=True)
class _SearchRuns:
    experiment_ids: tuple[str, ...]
    filters: tuple[Comparison, ...]
    order_by: tuple[OrderKey, ...]
    lifecycle_stages: tuple[str, ...] | None
    max_results: int
    offset: int


def _search_runs_request(fields: _Fields) -> _SearchRuns:
    experiment_ids = tuple(
        check_experiment_id(f"experiment_ids[{i}]", e)
        for i, e in enumerate(fields.strings("experiment_ids"))
    )
    max_results = fields.bounded("max_results", DEFAULT_SEARCH_RESULTS, 1, MAX_SEARCH_RESULTS)
    view = fields.enum("run_view_type", _VIEW_TYPE_NUMBERS, "ACTIVE_ONLY")
    try:
        filters = parse_filter(fields.string("filter") or None)
        order_by = parse_order_by(fields.strings("order_by"))
    except InvalidParameterValue as exc:
        field = "filter" if exc.field == "filter_string" else exc.field
        raise InvalidParameterValue(field, exc.value, exc.rule) from None
    return _SearchRuns(
        experiment_ids,
        filters,
        order_by,
        VIEW_TYPES[view],
        max_results,
        _page_offset(fields.string("page_token")),
    )


async def _search_runs(request: web.Request) -> web.Response:
    def document(
        snapshot: Snapshot,
        tables: CatalogTables,
        catalog: Catalog,
        reader: Reader,
        ask: _SearchRuns,
        time_limit_s: float,
    ) -> bytes:
        view = tables.current()
        search = RunSearch(
            experiment_ids=ask.experiment_ids,
            filters=ask.filters,
            order_by=ask.order_by,
            lifecycle_stages=ask.lifecycle_stages,
            limit=ask.max_results + 1,  # one more says whether another page exists
            offset=ask.offset,
        )
        run_ids = matching_run_ids(reader, snapshot, view, search, time_limit_s=time_limit_s)
        runs = [view.records[run_id] for run_id in run_ids[: ask.max_results]]
        out: dict[str, object] = {"runs": _runs_json(reader, catalog, snapshot, runs)}
        if len(run_ids) > ask.max_results:
            out["next_page_token"] = _page_token(ask.offset + ask.max_results)
        return dumps(out)

    ask = _search_runs_request(await _fields(request))
    app = request.app
    body = await with_snapshot(
        request,
        document,
        app[CATALOG_TABLES],
        app[CATALOG],
        app[READER],
        ask,
        app[SQL_TIME_LIMIT_S],
    )
    return web.Response(body=body, content_type="application/json")
