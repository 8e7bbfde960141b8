"""Many series in one query: runs x keys against step, wall time or relative time, each
exact when small or cut into shared buckets (exact min/max: spikes never vanish), or one
series aggregated across them per x (mean/min/max across ranks).

Synchronous, read-only, steppe's own SQL with bound parameters; runs on a ``Reader``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import pyarrow as pa
import pyarrow.compute as pc

from steppe.ingest.layout import Snapshot
from steppe.query.reader import Reader

__all__ = ["AGGREGATES", "X_AXES", "MultiSeries", "SeriesData", "SeriesKey", "multi_series"]

XAxis = Literal["step", "wall", "relative"]
Aggregate = Literal["mean", "min", "max"]
X_AXES: tuple[XAxis, ...] = ("step", "wall", "relative")
AGGREGATES: tuple[Aggregate, ...] = ("mean", "min", "max")

_SELECTION = "__steppe_selection"
_EXACT_COLUMNS = ["x", "value"]
_BUCKET_COLUMNS = ["x", "min", "max", "first", "last", "mean", "count"]


@dataclass(frozen=True)
class SeriesKey:
    run_id: str
    key: str


@dataclass(frozen=True)
class SeriesData:
    """One answer. Exact: columns x, value (and count, the points aggregated at each x, for
    an aggregate). Bucketed: x (first x in the bucket), min, max (exact, NaN ignored), first,
    last, mean (NaN if any value is), count. ``series`` is None for an aggregate."""

    series: SeriesKey | None
    bucketed: bool
    table: pa.Table


@dataclass(frozen=True)
class MultiSeries:
    x: XAxis
    aggregate: Aggregate | None
    series: list[SeriesData]


def _source_sql(snapshot: Snapshot, columns: str, where: str) -> str:
    sources = []
    if snapshot.files:
        sources.append(f"SELECT {columns} FROM read_parquet($files) WHERE {where}")
    sources.append(f"SELECT {columns} FROM tail WHERE {where}")
    return "\nUNION ALL\n".join(sources)


def _marks(prefix: str, values: Sequence[str], params: dict[str, object]) -> str:
    names = []
    for index, value in enumerate(values):
        params[f"{prefix}{index}"] = value
        names.append(f"${prefix}{index}")
    return ", ".join(names)


_BUCKETED = """
       coalesce(min(value) FILTER (WHERE NOT isnan(value)), 'NaN'::DOUBLE) AS "min",
       coalesce(max(value) FILTER (WHERE NOT isnan(value)), 'NaN'::DOUBLE) AS "max",
       arg_min(value, (x, step, ts)) AS "first",
       arg_max(value, (x, step, ts)) AS "last",
       avg(value) AS mean"""

_AGGREGATE_SQL = {
    "mean": "avg(value)",
    "min": "coalesce(min(value) FILTER (WHERE NOT isnan(value)), 'NaN'::DOUBLE)",
    "max": "coalesce(max(value) FILTER (WHERE NOT isnan(value)), 'NaN'::DOUBLE)",
}


def multi_series(
    reader: Reader,
    snapshot: Snapshot,
    series: Sequence[SeriesKey],
    buckets: int,
    *,
    x: XAxis = "step",
    x_min: int | None = None,
    x_max: int | None = None,
    aggregate: Aggregate | None = None,
) -> MultiSeries:
    """Points with ``x_min <= x <= x_max`` of each series, where x is the step, the
    timestamp (``wall``, ms) or ms since the run's first point of any key (``relative``).

    Without ``aggregate``: one SeriesData per requested series, in order; a series with at
    most ``2 * buckets`` points is exact, a larger one is cut into ``buckets`` equal x ranges
    spanning all the selected points (so buckets line up across series). With ``aggregate``:
    one SeriesData whose value at each x is the mean/min/max (min/max ignore NaN) of every
    selected point at that x, exact or bucketed by the same rule.
    """
    if buckets < 1:
        raise ValueError(f"buckets must be >= 1, got {buckets}")
    if not series:
        raise ValueError("series must not be empty")
    params: dict[str, object] = {"exact_limit": 2 * buckets, "buckets": buckets}
    runs = sorted({s.run_id for s in series})
    keys = sorted({s.key for s in series})
    run_marks = _marks("r", runs, params)
    key_marks = _marks("k", keys, params)
    selection = pa.table(
        {
            "sid": pa.array(range(len(series)), pa.int64()),
            "run_id": pa.array([s.run_id for s in series], pa.string()),
            "key": pa.array([s.key for s in series], pa.string()),
        }
    )
    where = f"run_id IN ({run_marks}) AND key IN ({key_marks})"
    window = []
    if x_min is not None:
        params["x_min"] = x_min
        window.append(("x", ">=", "$x_min"))
    if x_max is not None:
        params["x_max"] = x_max
        window.append(("x", "<=", "$x_max"))
    # Push the window into the scans where x is a plain column (row-group pruning).
    column = {"step": "step", "wall": '"timestamp"', "relative": None}[x]
    if column is not None:
        where += "".join(f" AND {column} {op} {mark}" for _, op, mark in window)
    window_sql = " AND ".join(f"x {op} {mark}" for _, op, mark in window)
    points = _source_sql(snapshot, 'run_id, key, step, "timestamp", value', where)
    ctes = [f"src AS ({points})"]
    if x == "relative":
        starts = _source_sql(snapshot, 'run_id, "timestamp"', f"run_id IN ({run_marks})")
        ctes.append(
            f'starts AS (SELECT run_id, min("timestamp") AS t0 FROM ({starts}) GROUP BY run_id)'
        )
        x_expr = 'src."timestamp" - starts.t0'
        join = "JOIN starts ON starts.run_id = src.run_id"
    else:
        x_expr = f"src.{column}"
        join = ""
    ctes.append(
        f"""pts AS (
    SELECT * FROM (
        SELECT sel.sid, {x_expr} AS x, src.step, src."timestamp" AS ts, src.value
        FROM src JOIN {_SELECTION} AS sel ON sel.run_id = src.run_id AND sel.key = src.key
        {join}
    ) {"WHERE " + window_sql if window_sql else ""}
)"""
    )
    sql = _separate_sql(ctes) if aggregate is None else _aggregate_sql(ctes, aggregate)
    table = reader.query(snapshot, sql, params, {_SELECTION: selection})
    if aggregate is not None:
        return MultiSeries(x, aggregate, [_series_data(None, table, aggregated=True)])
    sids = table.column("sid")
    out = []
    for sid, key in enumerate(series):
        part = table.filter(pc.equal(sids, sid))
        out.append(_series_data(key, part, aggregated=False))
    return MultiSeries(x, None, out)


def _separate_sql(ctes: list[str]) -> str:
    # One grid for every series: lo/hi over all selected points in the window. HUGEINT keeps
    # the bucket arithmetic exact for any int64 x.
    ctes = [
        *ctes,
        "counts AS (SELECT sid, count(*) AS n FROM pts GROUP BY sid)",
        "bounds AS (SELECT min(x)::HUGEINT AS lo, max(x)::HUGEINT AS hi FROM pts)",
    ]
    return (
        "WITH "
        + ",\n".join(ctes)
        + f"""
SELECT p.sid, false AS bucketed, p.x, p.value AS "min", p.value AS "max",
       p.value AS "first", p.value AS "last", p.value AS mean, 1::BIGINT AS "count",
       p.step, p.ts
FROM pts AS p JOIN counts AS c ON c.sid = p.sid
WHERE c.n <= $exact_limit
UNION ALL
SELECT sid, true, min(x), {_BUCKETED}, count(*), min(step), min(ts)
FROM (SELECT p.* FROM pts AS p JOIN counts AS c ON c.sid = p.sid WHERE c.n > $exact_limit), bounds
GROUP BY sid, (x::HUGEINT - bounds.lo) * $buckets // (bounds.hi - bounds.lo + 1)
ORDER BY sid, x, step, ts
"""
    )


def _aggregate_sql(ctes: list[str], aggregate: Aggregate) -> str:
    ctes = [
        *ctes,
        f"""agg AS (
    SELECT x, {_AGGREGATE_SQL[aggregate]} AS value, count(*) AS points, 0::BIGINT AS step,
           0::BIGINT AS ts
    FROM pts GROUP BY x
)""",
        "bounds AS (SELECT count(*) AS n, min(x)::HUGEINT AS lo, max(x)::HUGEINT AS hi FROM agg)",
    ]
    return (
        "WITH "
        + ",\n".join(ctes)
        + f"""
SELECT false AS bucketed, x, value AS "min", value AS "max", value AS "first",
       value AS "last", value AS mean, points AS "count"
FROM agg, bounds
WHERE bounds.n <= $exact_limit
UNION ALL
SELECT true, min(x), {_BUCKETED}, count(*)
FROM agg, bounds
WHERE bounds.n > $exact_limit
GROUP BY (x::HUGEINT - bounds.lo) * $buckets // (bounds.hi - bounds.lo + 1)
ORDER BY x
"""
    )


def _series_data(key: SeriesKey | None, table: pa.Table, *, aggregated: bool) -> SeriesData:
    bucketed = table.num_rows > 0 and bool(table.column("bucketed")[0].as_py())
    if bucketed:
        return SeriesData(key, True, table.select(_BUCKET_COLUMNS))
    exact = table.rename_columns({"first": "value"}).select(
        [*_EXACT_COLUMNS, "count"] if aggregated else _EXACT_COLUMNS
    )
    return SeriesData(key, False, exact)
