"""MLflow's metrics routes: get-history (paged) and get-history-bulk-interval (sampled), read
with DuckDB from the points of a snapshot.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pyarrow as pa
from aiohttp import web

from steppe.errors import (
    InvalidParameterValue,
)
from steppe.ingest.catalog import (
    Catalog,
)
from steppe.ingest.layout import Snapshot
from steppe.query.context import CATALOG, READER, with_snapshot
from steppe.query.jsonenc import dumps, float_value
from steppe.query.mlflow_api.common import (
    HISTORY_PAGE,
    MAX_BULK_RESULTS_PER_RUN,
    MAX_BULK_RUNS,
    MAX_HISTORY_PAGE,
    _fields,
    _page_offset,
    _page_token,
    _run_id,
)
from steppe.query.reader import Reader, points_sql
from steppe.validation import (
    check_run_id,
)

_HISTORY_SCHEMA = pa.schema(
    [("step", pa.int64()), ("timestamp", pa.int64()), ("value", pa.float64())]
)
# MLflow stores NaN as 0 (plus a flag): order values the way its SQL store does.
_VALUE_ORDER = "CASE WHEN isnan(value) THEN 0 ELSE value END, isnan(value)"


def _history_page(
    snapshot: Snapshot, reader: Reader, run_id: str, key: str, limit: int, offset: int
) -> pa.Table:
    points = points_sql(snapshot, "run_id = $run_id AND key = $key", 'step, "timestamp", value')
    # MLflow's order for a history: timestamp, then step, then value.
    sql = (
        f'SELECT step, "timestamp", value FROM ({points}) '
        f'ORDER BY "timestamp", step, {_VALUE_ORDER} LIMIT $limit OFFSET $offset'
    )
    return reader.query(
        snapshot, sql, {"run_id": run_id, "key": key, "limit": limit, "offset": offset}
    )


def _metric_rows(key: str, table: pa.Table, run_id: str | None = None) -> list[dict[str, object]]:
    steps = table.column("step").to_pylist()
    stamps = table.column("timestamp").to_pylist()
    values = table.column("value").to_pylist()
    rows: list[dict[str, object]] = []
    for step, stamp, value in zip(steps, stamps, values, strict=True):
        row: dict[str, object] = {
            "key": key,
            "value": float_value(value),
            "timestamp": stamp,
            "step": step,
        }
        if run_id is not None:
            row["run_id"] = run_id
        rows.append(row)
    return rows


async def _get_metric_history(request: web.Request) -> web.Response:
    def document(
        snapshot: Snapshot,
        catalog: Catalog,
        reader: Reader,
        run_id: str,
        key: str,
        limit: int,
        offset: int,
    ) -> bytes:
        catalog.get_run(run_id)  # 404 for an unknown run
        table = _history_page(snapshot, reader, run_id, key, limit + 1, offset)
        out: dict[str, object] = {"metrics": _metric_rows(key, table.slice(0, limit))}
        if table.num_rows > limit:
            out["next_page_token"] = _page_token(offset + limit)
        return dumps(out)

    fields = await _fields(request)
    run_id = _run_id(fields)
    key = fields.string("metric_key", required=True)
    limit = min(fields.bounded("max_results", HISTORY_PAGE, 1, 2**31 - 1), MAX_HISTORY_PAGE)
    offset = _page_offset(fields.string("page_token"))
    app = request.app
    body = await with_snapshot(
        request, document, app[CATALOG], app[READER], run_id, key, limit, offset
    )
    return web.Response(body=body, content_type="application/json")


def _sampled_history(
    snapshot: Snapshot,
    reader: Reader,
    run_ids: Sequence[str],
    key: str,
    max_results: int,
    steps: tuple[int, int] | None,
) -> dict[str, pa.Table]:
    """Per run, up to ``max_results`` points evenly sampled over its ordered history (step,
    timestamp, value): the first of each of ``max_results`` equal buckets, and always the last
    point (replacing the final sample when the page is full), as MLflow's SQL store does."""
    params: dict[str, object] = {"key": key, "n": max_results}
    marks = []
    for index, run_id in enumerate(run_ids):
        params[f"r{index}"] = run_id
        marks.append(f"$r{index}")
    where = f"key = $key AND run_id IN ({', '.join(marks)})"
    if steps is not None:
        where += " AND step BETWEEN $lo AND $hi"
        params["lo"], params["hi"] = steps
    points = points_sql(snapshot, where, 'run_id, step, "timestamp", value')
    order = f'step, "timestamp", {_VALUE_ORDER}'
    backwards = (
        'step DESC, "timestamp" DESC, CASE WHEN isnan(value) THEN 0 ELSE value END DESC, '
        "isnan(value) DESC"
    )
    sql = f"""
        WITH pts AS ({points}),
        bucketed AS (
            SELECT *, ntile($n) OVER (PARTITION BY run_id ORDER BY {order}) AS bucket,
                   row_number() OVER (PARTITION BY run_id ORDER BY {backwards}) AS from_end
            FROM pts
        ),
        ranked AS (
            SELECT *, row_number() OVER (PARTITION BY run_id, bucket ORDER BY {order}) AS rn
            FROM bucketed
        )
        SELECT run_id, step, "timestamp", value, rn = 1 AS sampled, from_end = 1 AS last
        FROM ranked WHERE rn = 1 OR from_end = 1
        ORDER BY run_id, {order}
    """
    table = reader.query(snapshot, sql, params)
    out: dict[str, pa.Table] = {}
    rows = table.to_pylist()
    by_run: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_run.setdefault(row["run_id"], []).append(row)
    for run_id, run_rows in by_run.items():
        sampled = [r for r in run_rows if r["sampled"]]
        last = next(r for r in run_rows if r["last"])
        if not sampled or sampled[-1] is not last:
            if len(sampled) >= max_results:
                sampled[-1] = last
            else:
                sampled.append(last)
        out[run_id] = pa.Table.from_pylist(
            [
                {"step": r["step"], "timestamp": r["timestamp"], "value": r["value"]}
                for r in sampled
            ],
            schema=pa.schema(
                [("step", pa.int64()), ("timestamp", pa.int64()), ("value", pa.float64())]
            ),
        )
    return out


async def _get_metric_history_bulk_interval(request: web.Request) -> web.Response:
    def document(
        snapshot: Snapshot,
        catalog: Catalog,
        reader: Reader,
        run_ids: list[str],
        key: str,
        max_results: int,
        steps: tuple[int, int] | None,
    ) -> bytes:
        for run_id in run_ids:
            catalog.get_run(run_id)  # 404 for an unknown run
        sampled = _sampled_history(snapshot, reader, run_ids, key, max_results, steps)
        metrics: list[dict[str, object]] = []
        for run_id in dict.fromkeys(run_ids):
            if run_id in sampled:
                metrics.extend(_metric_rows(key, sampled[run_id], run_id))
        return dumps({"metrics": metrics})

    fields = await _fields(request)
    run_ids = fields.strings("run_ids")
    if not run_ids:
        raise InvalidParameterValue("run_ids", run_ids, "is a required parameter")
    if len(run_ids) > MAX_BULK_RUNS:
        raise InvalidParameterValue(
            "run_ids", f"<{len(run_ids)} run ids>", f"at most {MAX_BULK_RUNS} run_ids per request"
        )
    for i, run_id in enumerate(run_ids):
        check_run_id(f"run_ids[{i}]", run_id)
    key = fields.string("metric_key", required=True)
    max_results = fields.bounded(
        "max_results", MAX_BULK_RESULTS_PER_RUN, 1, MAX_BULK_RESULTS_PER_RUN
    )
    start, end = fields.int64("start_step"), fields.int64("end_step")
    if (start is None) != (end is None):
        raise InvalidParameterValue(
            "start_step", start, "give both start_step and end_step, or neither"
        )
    steps = None
    if start is not None and end is not None:
        if start > end:
            raise InvalidParameterValue(
                "end_step", end, f"must not be less than start_step ({start})"
            )
        steps = (start, end)
    app = request.app
    body = await with_snapshot(
        request, document, app[CATALOG], app[READER], run_ids, key, max_results, steps
    )
    return web.Response(body=body, content_type="application/json")
