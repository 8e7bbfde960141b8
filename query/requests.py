"""Request parsing for steppe's JSON API: query strings and JSON bodies into typed requests,
with an InvalidParameterValue naming the field and the rule for anything out of bounds.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Literal

from multidict import MultiMapping

from steppe.errors import (
    InvalidParameterValue,
)
from steppe.query.aligned import GRIDS, Grid
from steppe.query.jsonenc import parse_body
from steppe.query.paging import page_offset
from steppe.query.search import (
    VIEW_TYPES,
    Comparison,
    OrderKey,
    RunGrouping,
    parse_filter,
    parse_order_by,
)
from steppe.query.series import (
    AGGREGATES,
    X_AXES,
    Aggregate,
    SeriesKey,
    XAxis,
)
from steppe.query.sql import (
    DEFAULT_MAX_ROWS,
    MAX_MAX_ROWS,
)

if TYPE_CHECKING:
    pass

DEFAULT_BUCKETS = 1000
MAX_BUCKETS = 10_000
DEFAULT_MAX_RESULTS = 1000
MAX_MAX_RESULTS = 50_000
#: Series in one multi-series request.
MAX_SERIES = 100

_INT64_MIN = -(2**63)
_INT64_MAX = 2**63 - 1
_INTEGER_RE = re.compile(r"-?[0-9]+")
_NUMBER_RE = re.compile(r"-?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?")


def param(query: MultiMapping[str], name: str, *, required: bool) -> str | None:
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


def int_param(query: MultiMapping[str], name: str, default: int, low: int, high: int) -> int:
    text = param(query, name, required=False)
    if text is None:
        return default
    if not _INTEGER_RE.fullmatch(text) or not low <= int(text) <= high:
        raise InvalidParameterValue(name, text, f"must be an integer from {low} to {high}")
    return int(text)


def step_param(query: MultiMapping[str], name: str) -> int | float | None:
    text = param(query, name, required=False)
    if text is None:
        return None
    if _INTEGER_RE.fullmatch(text):
        return int(text)
    if _NUMBER_RE.fullmatch(text) and math.isfinite(float(text)):
        return float(text)
    raise InvalidParameterValue(name, text, "must be a finite number (a step)")


@dataclass(frozen=True)
class MetricRequest:
    run_id: str
    key: str


@dataclass(frozen=True)
class SeriesRequest:
    run_id: str
    key: str
    buckets: int
    x_min: int | None
    x_max: int | None


@dataclass(frozen=True)
class SearchRunsRequest:
    experiment_ids: list[str] | None
    max_results: int
    filters: tuple[Comparison, ...] = ()
    order_by: tuple[OrderKey, ...] = ()
    lifecycle_stages: tuple[str, ...] | None = None
    offset: int = 0
    paged: bool = False  # the request sent page_token (even null): answer next_page_token
    count: bool = False  # answer total_count, the runs matching over every page
    grouping: RunGrouping | None = None


@dataclass(frozen=True)
class SqlRequest:
    query: str
    format: str
    max_rows: int


@dataclass(frozen=True)
class MultiSeriesRequest:
    series: list[SeriesKey]
    buckets: int
    x: XAxis
    x_min: int | None
    x_max: int | None
    aggregate: Aggregate | None
    #: "even": ``buckets`` equal x ranges; "aligned": 2^k-step buckets from the tiers (x
    #: step, no aggregate; otherwise the even grid).
    grid: Grid = "even"


def metric_history_request(query: MultiMapping[str]) -> MetricRequest:
    run_id = param(query, "run_id", required=True)
    key = param(query, "key", required=True)
    assert run_id is not None and key is not None
    return MetricRequest(run_id, key)


def series_request(query: MultiMapping[str]) -> SeriesRequest:
    metric = metric_history_request(query)
    buckets = int_param(query, "buckets", DEFAULT_BUCKETS, 1, MAX_BUCKETS)
    x_min = step_param(query, "x_min")
    x_max = step_param(query, "x_max")
    if x_min is not None and x_max is not None and x_min > x_max:
        raise InvalidParameterValue("x_min", x_min, f"must not be greater than x_max ({x_max})")
    # Steps are int64: a fractional bound (a zoomed chart) rounds inwards.
    low = None if x_min is None else max(_INT64_MIN, min(_INT64_MAX, math.ceil(x_min)))
    high = None if x_max is None else max(_INT64_MIN, min(_INT64_MAX, math.floor(x_max)))
    return SeriesRequest(metric.run_id, metric.key, buckets, low, high)


def json_object(body: bytes, allowed: Sequence[str]) -> dict[str, Any]:
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


def search_runs_request(body: bytes) -> SearchRunsRequest:
    document = json_object(
        body,
        (
            "experiment_ids",
            "max_results",
            "filter_string",
            "order_by",
            "page_token",
            "run_view_type",
            "count",
            "metric_aggregates",
            "group_by",
            "group_metrics",
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
    count = document.get("count", False)
    if not isinstance(count, bool):
        raise InvalidParameterValue("count", count, "must be true or false")
    aggregates = _metric_aggregates(document.get("metric_aggregates"))
    keys = tuple(
        replace(key, column=aggregates.get(key.key, "value")) if key.kind == "metric" else key
        for key in parse_order_by(order_by)
    )
    return SearchRunsRequest(
        experiment_ids,
        max_results,
        filters=parse_filter(filter_string),
        order_by=keys,
        lifecycle_stages=VIEW_TYPES[view_type],
        offset=page_offset(document.get("page_token")),
        paged="page_token" in document,
        count=count,
        grouping=_grouping(document, aggregates),
    )


_AGGREGATES: dict[str, Literal["value", "min", "max"]] = {
    "latest": "value",
    "min": "min",
    "max": "max",
}
MAX_GROUP_METRICS = 50


def _metric_aggregates(raw: object) -> dict[str, Literal["value", "min", "max"]]:
    """{"loss": "min"}: order_by and group_metrics on that key use the run's min (or max,
    or the latest value, MLflow's meaning and the default) of the metric."""
    if raw is None:
        return {}
    if not isinstance(raw, dict) or not all(
        isinstance(k, str) and v in _AGGREGATES for k, v in raw.items()
    ):
        raise InvalidParameterValue(
            "metric_aggregates", raw, 'must map metric keys to "latest", "min" or "max"'
        )
    return {k: _AGGREGATES[v] for k, v in raw.items()}


def _grouping(
    document: dict[str, Any], aggregates: dict[str, Literal["value", "min", "max"]]
) -> RunGrouping | None:
    raw = document.get("group_by")
    metrics = document.get("group_metrics", [])
    if raw is None:
        return None
    if not isinstance(raw, str):
        raise InvalidParameterValue("group_by", raw, "must be a string such as 'params.lr'")
    (by,) = parse_order_by([raw])
    if by.kind not in ("param", "tag") or not by.ascending:
        raise InvalidParameterValue(
            "group_by", raw, "must name a param or a tag, e.g. 'params.lr' or 'tags.team'"
        )
    if (
        not isinstance(metrics, list)
        or len(metrics) > MAX_GROUP_METRICS
        or not all(isinstance(k, str) for k in metrics)
    ):
        raise InvalidParameterValue(
            "group_metrics", metrics, f"must be a list of at most {MAX_GROUP_METRICS} metric keys"
        )
    return RunGrouping(
        by,
        tuple(OrderKey("metric", k, column=aggregates.get(k, "value")) for k in metrics),
    )


def sql_request(body: bytes) -> SqlRequest:
    document = json_object(body, ("query", "format", "max_rows"))
    query = document.get("query")
    if not isinstance(query, str) or not query.strip():
        raise InvalidParameterValue("query", query, "must be a non-empty SQL string")
    fmt = _choice(document, "format", ["json", "arrow"])
    max_rows = _int_field(document, "max_rows", DEFAULT_MAX_ROWS, 1, MAX_MAX_ROWS)
    return SqlRequest(query, fmt, max_rows)


def _bound(document: dict[str, Any], name: str) -> int | float | None:
    value = document.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InvalidParameterValue(name, value, "must be a finite number or null")
    return value


def multi_series_request(body: bytes) -> MultiSeriesRequest:
    document = json_object(body, ("series", "buckets", "x_min", "x_max", "x", "aggregate", "grid"))
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
    grid = _choice(document, "grid", list(GRIDS))
    x_min, x_max = _bound(document, "x_min"), _bound(document, "x_max")
    if x_min is not None and x_max is not None and x_min > x_max:
        raise InvalidParameterValue("x_min", x_min, f"must not be greater than x_max ({x_max})")
    # x is int64 (steps or ms): a fractional bound (a zoomed chart) rounds inwards.
    low = None if x_min is None else max(_INT64_MIN, min(_INT64_MAX, math.ceil(x_min)))
    high = None if x_max is None else max(_INT64_MIN, min(_INT64_MAX, math.floor(x_max)))
    return MultiSeriesRequest(series, buckets, x, low, high, aggregate, grid)
