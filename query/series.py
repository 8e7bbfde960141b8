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
from steppe.query.reader import NO_POINTS, Bounds, Reader, Window, points_sql, window_sql

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


_INT64_MAX = 2**63 - 1

#: The source column each x axis is computed from.
_COLUMN: dict[XAxis, Literal["step", "timestamp"]] = {
    "step": "step",
    "wall": "timestamp",
    "relative": "timestamp",
}

# One series' points as (x, step, ts, value); {where} pushes run, key and window into the scans.
_POINTS = 'SELECT {x} AS x, step, "timestamp" AS ts, value FROM ({points})'

_EXACT = """SELECT {i}::BIGINT AS sid, false AS bucketed, x, value AS "min", value AS "max",
       value AS "first", value AS "last", value AS mean, 1::BIGINT AS "count", step, ts
FROM ({points})"""

# One row per non-empty bucket. {bucket} and {order} are integer expressions chosen in Python
# (BIGINT when the products fit, else HUGEINT or a struct) so DuckDB groups and compares plain
# integers. min/max skip NaN so a NaN cannot hide the envelope (DuckDB orders NaN above every
# number, so min needs no filter, and NaN = NaN, so nullif drops it for max); the mean
# propagates NaN so a bucket holding one still shows it.
_BUCKETED = """SELECT {i}::BIGINT AS sid, true AS bucketed, min(x) AS x,
       coalesce(min(value), 'NaN'::DOUBLE) AS "min",
       coalesce(max(nullif(value, 'NaN'::DOUBLE)), 'NaN'::DOUBLE) AS "max",
       arg_min(value, {order}) AS "first",
       arg_max(value, {order}) AS "last",
       avg(value) AS mean, count(*) AS "count", min(step) AS step, min(ts) AS ts
FROM ({points})
GROUP BY {bucket}"""

_AGGREGATE_SQL = {
    "mean": "avg(value)",
    "min": "coalesce(min(value) FILTER (WHERE NOT isnan(value)), 'NaN'::DOUBLE)",
    "max": "coalesce(max(value) FILTER (WHERE NOT isnan(value)), 'NaN'::DOUBLE)",
}

#: One table of answers per call: a row per point or bucket of series ``sid`` (also
#: steppe.query.aligned's).
SERIES_SCHEMA = pa.schema(
    [
        ("sid", pa.int64()),
        ("bucketed", pa.bool_()),
        ("x", pa.int64()),
        ("min", pa.float64()),
        ("max", pa.float64()),
        ("first", pa.float64()),
        ("last", pa.float64()),
        ("mean", pa.float64()),
        ("count", pa.int64()),
        ("step", pa.int64()),
        ("ts", pa.int64()),
    ]
)


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

    The one implementation behind ``GET`` and ``POST /series``: per series, the count and
    ranges come first (the files' part cached by the Reader), so the grid is fixed in Python
    and one query then reads each series once, exact or grouped into buckets.
    """
    if buckets < 1:
        raise ValueError(f"buckets must be >= 1, got {buckets}")
    if not series:
        raise ValueError("series must not be empty")
    if aggregate is not None:
        return _aggregated(reader, snapshot, series, buckets, x, x_min, x_max, aggregate)
    column = _COLUMN[x]
    offsets = _offsets(reader, snapshot, series, x)
    windows: dict[int, Window] = {}
    for i, s in enumerate(series):
        if s.run_id in offsets:
            off = offsets[s.run_id]
            lo = None if x_min is None else x_min + off
            hi = None if x_max is None else x_max + off
            windows[i] = (column, lo, hi)
    bounds = [NO_POINTS] * len(series)
    for window in dict.fromkeys(windows.values()):
        chosen = [i for i, w in windows.items() if w == window]
        found = reader.series_bounds(
            snapshot, [(series[i].run_id, series[i].key) for i in chosen], window
        )
        for i, b in zip(chosen, found, strict=True):
            bounds[i] = b
    present = [i for i, b in enumerate(bounds) if b.n]
    if not present:
        return MultiSeries(x, None, [_series_data(s, SERIES_SCHEMA.empty_table()) for s in series])
    # One grid for every series: lo/hi over all selected points, in x.
    lo = min(_x_range(bounds[i], x, offsets[series[i].run_id])[0] for i in present)
    hi = max(_x_range(bounds[i], x, offsets[series[i].run_id])[1] for i in present)
    params: dict[str, object] = {}
    if any(bounds[i].n > 2 * buckets for i in present):
        params.update(buckets=buckets, lo=lo, span=hi - lo + 1)
    if (hi - lo) * buckets <= _INT64_MAX:
        bucket = "(x - $lo) * $buckets // $span"
    else:
        bucket = "(x::HUGEINT - $lo) * $buckets // $span"
    parts = []
    for i in present:
        s, b = series[i], bounds[i]
        params.update({f"r{i}": s.run_id, f"k{i}": s.key})
        where = f"run_id = $r{i} AND key = $k{i}" + window_sql(windows[i], params, f"w{i}")
        x_sql = f'"{column}"'
        if x == "relative":
            params[f"o{i}"] = offsets[s.run_id]
            x_sql += f" - $o{i}"
        points = _POINTS.format(x=x_sql, points=points_sql(snapshot, where))
        if b.n <= 2 * buckets:
            parts.append(_EXACT.format(i=i, points=points))
        else:
            order = _order_sql(b, x, params, f"q{i}")
            parts.append(_BUCKETED.format(i=i, points=points, order=order, bucket=bucket))
    sql = "\nUNION ALL\n".join(parts) + "\nORDER BY sid, x, step, ts"
    table = reader.query(snapshot, sql, params)
    sids = table.column("sid")
    return MultiSeries(
        x, None, [_series_data(s, table.filter(pc.equal(sids, i))) for i, s in enumerate(series)]
    )


def _offsets(
    reader: Reader, snapshot: Snapshot, series: Sequence[SeriesKey], x: XAxis
) -> dict[str, int]:
    """run_id -> what is subtracted from the source column to give x (a run's first
    timestamp for ``relative``; absent for a run with no points at all)."""
    runs = list(dict.fromkeys(s.run_id for s in series))
    if x != "relative":
        return dict.fromkeys(runs, 0)
    return reader.run_starts(snapshot, runs)


def _x_range(bounds: Bounds, x: XAxis, offset: int) -> tuple[int, int]:
    if x == "step":
        return bounds.step_lo, bounds.step_hi
    return bounds.t_lo - offset, bounds.t_hi - offset


def _order_sql(bounds: Bounds, x: XAxis, params: dict[str, object], prefix: str) -> str:
    """An expression ordering one series' points by x, then step/timestamp (for first and
    last in a bucket); one BIGINT when it fits. Binds what it uses."""
    if x == "step":
        major, minor = ("step", bounds.step_lo, bounds.step_hi), ("ts", bounds.t_lo, bounds.t_hi)
    else:
        major, minor = ("ts", bounds.t_lo, bounds.t_hi), ("step", bounds.step_lo, bounds.step_hi)
    minor_width = minor[2] - minor[1] + 1
    if minor_width == 1:
        return major[0]  # one value of the minor column: the major alone orders
    major_width = major[2] - major[1] + 1
    if major_width * minor_width > _INT64_MAX:
        return f"({major[0]}, {minor[0]})"
    params.update({f"{prefix}lo": major[1], f"{prefix}mlo": minor[1], f"{prefix}w": minor_width})
    return f"({major[0]} - ${prefix}lo) * ${prefix}w + ({minor[0]} - ${prefix}mlo)"


def _marks(prefix: str, values: Sequence[str], params: dict[str, object]) -> str:
    names = []
    for index, value in enumerate(values):
        params[f"{prefix}{index}"] = value
        names.append(f"${prefix}{index}")
    return ", ".join(names)


def _aggregated(
    reader: Reader,
    snapshot: Snapshot,
    series: Sequence[SeriesKey],
    buckets: int,
    x: XAxis,
    x_min: int | None,
    x_max: int | None,
    aggregate: Aggregate,
) -> MultiSeries:
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
    window_where = " AND ".join(f"x {op} {mark}" for _, op, mark in window)
    points = points_sql(snapshot, where, 'run_id, key, step, "timestamp", value')
    ctes = [f"src AS ({points})"]
    if x == "relative":
        starts = points_sql(snapshot, f"run_id IN ({run_marks})", 'run_id, "timestamp"')
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
    ) {"WHERE " + window_where if window_where else ""}
)"""
    )
    table = reader.query(snapshot, _aggregate_sql(ctes, aggregate), params, {_SELECTION: selection})
    return MultiSeries(x, aggregate, [_series_data(None, table, aggregated=True)])


def _aggregate_sql(ctes: list[str], aggregate: Aggregate) -> str:
    ctes = [
        *ctes,
        f"""agg AS (
    SELECT x, {_AGGREGATE_SQL[aggregate]} AS value, count(*) AS points
    FROM pts GROUP BY x
)""",
        "bounds AS (SELECT count(*) AS n, min(x)::HUGEINT AS lo, max(x)::HUGEINT AS hi FROM agg)",
    ]
    return (
        "WITH "
        + ",\n".join(ctes)
        + """
SELECT false AS bucketed, x, value AS "min", value AS "max", value AS "first",
       value AS "last", value AS mean, points AS "count"
FROM agg, bounds
WHERE bounds.n <= $exact_limit
UNION ALL
SELECT true, min(x), coalesce(min(value), 'NaN'::DOUBLE),
       coalesce(max(nullif(value, 'NaN'::DOUBLE)), 'NaN'::DOUBLE),
       arg_min(value, x), arg_max(value, x), avg(value), count(*)
FROM agg, bounds
WHERE bounds.n > $exact_limit
GROUP BY (x::HUGEINT - bounds.lo) * $buckets // (bounds.hi - bounds.lo + 1)
ORDER BY x
"""
    )


def _series_data(key: SeriesKey | None, table: pa.Table, *, aggregated: bool = False) -> SeriesData:
    bucketed = table.num_rows > 0 and bool(table.column("bucketed")[0].as_py())
    if bucketed:
        return SeriesData(key, True, table.select(_BUCKET_COLUMNS))
    exact = table.rename_columns({"first": "value"}).select(
        [*_EXACT_COLUMNS, "count"] if aggregated else _EXACT_COLUMNS
    )
    return SeriesData(key, False, exact)
