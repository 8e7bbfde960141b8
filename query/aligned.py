"""Series on step against an aligned grid: buckets of 2^k steps (``step >> k``), at least the
requested number of them over the selected points, answered from the metrics files'
pre-aggregated tiers (layout.TIER_SCHEMA) where they exist and from the points elsewhere.

Exact by construction: a bucket merges tier rows lying wholly inside the window and the
points of the window's ragged ends, of files without tiers and of the unflushed tail, with
the same min/max/first/last/count as the points alone (the mean is sum / count, equal up to
the order of the additions). Synchronous and read-only, like steppe.query.series.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import pyarrow as pa
import pyarrow.compute as pc

from steppe.ingest.layout import TIER_SHIFTS, Snapshot, tiers_path
from steppe.query.reader import TAIL, Bounds, Reader
from steppe.query.series import MultiSeries, SeriesData, SeriesKey

__all__ = ["GRIDS", "Grid", "aligned_series", "grid_shift"]

#: How a bucketed answer cuts x: ``buckets`` equal ranges, or 2^k-step aligned buckets.
Grid = Literal["even", "aligned"]
GRIDS: tuple[Grid, ...] = ("even", "aligned")

_INT64_MAX = 2**63 - 1

# One point as a partial summary (the tier rows' columns).
_POINT_ROW = """1::BIGINT AS "count", value AS "sum", value AS "min", value AS "max",
value AS "first", step AS first_step, "timestamp" AS first_ts, value AS "last",
step AS last_step, "timestamp" AS last_ts, "timestamp" AS ts_lo, "timestamp" AS ts_hi"""
_TIER_ROW = """"count", "sum", "min", "max", "first", first_step, first_ts, "last", last_step,
last_ts, ts_lo, ts_hi"""

# Partial summaries merged: min skips NaN (DuckDB orders it above every number), max via
# nullif; each is NaN only when every point is.
_BOUNDS = """SELECT {i}::BIGINT AS sid, sum("count")::BIGINT AS n, min(first_step) AS step_lo,
       max(last_step) AS step_hi, min(ts_lo) AS t_lo, max(ts_hi) AS t_hi
FROM ({rows})"""

_BUCKETS = """SELECT {i}::BIGINT AS sid, true AS bucketed, min(first_step) AS x,
       coalesce(min("min"), 'NaN'::DOUBLE) AS "min",
       coalesce(max(nullif("max", 'NaN'::DOUBLE)), 'NaN'::DOUBLE) AS "max",
       arg_min("first", {{'s': first_step, 't': first_ts}}) AS "first",
       arg_max("last", {{'s': last_step, 't': last_ts}}) AS "last",
       sum("sum") / sum("count") AS mean, sum("count")::BIGINT AS "count",
       min(first_step) AS step, min(ts_lo) AS ts
FROM ({rows})
GROUP BY first_step >> {k}"""

_EXACT = """SELECT {i}::BIGINT AS sid, false AS bucketed, first_step AS x, "first" AS "min",
       "first" AS "max", "first", "first" AS "last", "first" AS mean, 1::BIGINT AS "count",
       first_step AS step, first_ts AS ts
FROM ({rows})"""

_SCHEMA = pa.schema(
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


def grid_shift(lo: int, hi: int, buckets: int) -> int:
    """The largest k with at least ``buckets`` 2^k-step buckets between lo and hi (0 when
    even single steps give fewer)."""
    k = 0
    while k < 62 and (hi >> (k + 1)) - (lo >> (k + 1)) + 1 >= buckets:
        k += 1
    return k


class _Plan:
    """Per series: the files whose tiers cover it and the files to read its points from."""

    def __init__(self, reader: Reader, snapshot: Snapshot, series: Sequence[SeriesKey]) -> None:
        covered = [reader.tiers.covered(path) for path in snapshot.files]
        self.tiered: list[list[Path]] = []
        self.raw: list[list[Path]] = []
        for s in series:
            pair = (s.run_id, s.key)
            self.tiered.append(
                [p for p, c in zip(snapshot.files, covered, strict=True) if pair in c]
            )
            self.raw.append(
                [p for p, c in zip(snapshot.files, covered, strict=True) if pair not in c]
            )
        self.tail = snapshot.tail.num_rows > 0

    def any_tiers(self) -> bool:
        return any(self.tiered)


def _rows_sql(
    plan: _Plan,
    i: int,
    shift: int | None,
    lo: int | None,
    hi: int | None,
    params: dict[str, object],
) -> str:
    """Partial summaries of series ``i``'s points with lo <= step <= hi: tier rows at
    ``shift`` wholly inside the window, points everywhere else (None: points only)."""
    series = f"run_id = $r{i} AND key = $k{i}"

    def window(a: int | None, b: int | None, tag: str) -> str:
        sql = ""
        if a is not None:
            params[f"{tag}lo{i}"] = a
            sql += f" AND step >= ${tag}lo{i}"
        if b is not None:
            params[f"{tag}hi{i}"] = b
            sql += f" AND step <= ${tag}hi{i}"
        return sql

    def points(files: list[Path], where: str, tag: str) -> str:
        params[f"{tag}f{i}"] = [str(p) for p in files]
        return f"SELECT {_POINT_ROW} FROM read_parquet(${tag}f{i}) WHERE {series}{where}"

    parts: list[str] = []
    tiered = plan.tiered[i] if shift is not None else []
    raw = plan.raw[i] if shift is not None else [*plan.tiered[i], *plan.raw[i]]
    if tiered:
        assert shift is not None
        first = None if lo is None else -((-lo) >> shift)  # first bucket starting >= lo
        last = None if hi is None else ((hi + 1) >> shift) - 1  # last bucket ending <= hi
        if first is not None and last is not None and first > last:
            raw = [*tiered, *raw]  # no whole bucket inside the window
        else:
            params[f"s{i}"] = shift
            where = f"{series} AND shift = $s{i}"
            if first is not None:
                params[f"b0{i}"] = first
                where += f" AND bucket >= $b0{i}"
            if last is not None:
                params[f"b1{i}"] = last
                where += f" AND bucket <= $b1{i}"
            params[f"tf{i}"] = [str(tiers_path(p)) for p in tiered]
            parts.append(f"SELECT {_TIER_ROW} FROM read_parquet($tf{i}) WHERE {where}")
            # The ragged ends: points of the window outside the whole buckets.
            if first is not None and lo is not None and lo < first << shift:
                parts.append(points(tiered, window(lo, (first << shift) - 1, "e0"), "e0"))
            if last is not None and hi is not None and ((last + 1) << shift) <= hi:
                parts.append(points(tiered, window((last + 1) << shift, hi, "e1"), "e1"))
    if raw:
        parts.append(points(raw, window(lo, hi, "w"), "w"))
    if plan.tail or not parts:
        parts.append(f"SELECT {_POINT_ROW} FROM {TAIL} WHERE {series}{window(lo, hi, 't')}")
    return "\nUNION ALL\n".join(parts)


def _bounds(
    reader: Reader,
    snapshot: Snapshot,
    plan: _Plan,
    series: Sequence[SeriesKey],
    lo: int | None,
    hi: int | None,
) -> list[Bounds]:
    if not plan.any_tiers():
        return reader.series_bounds(snapshot, [(s.run_id, s.key) for s in series], ("step", lo, hi))
    # Whole tier rows where they are coarse enough that the ragged ends stay small.
    if lo is None and hi is None:
        shift: int | None = TIER_SHIFTS[-1]
    else:
        span = (hi - lo + 1) if lo is not None and hi is not None else 1 << 20
        fitting = [s for s in TIER_SHIFTS if (1 << s) <= span >> 8]
        shift = fitting[-1] if fitting else None
    params: dict[str, object] = {}
    parts = []
    for i, s in enumerate(series):
        params.update({f"r{i}": s.run_id, f"k{i}": s.key})
        parts.append(_BOUNDS.format(i=i, rows=_rows_sql(plan, i, shift, lo, hi, params)))
    table = reader.query(snapshot, "\nUNION ALL\n".join(parts), params)
    out = [Bounds(0, 0, 0, 0, 0)] * len(series)
    for row in table.to_pylist():
        if row["n"]:
            out[row["sid"]] = Bounds(
                row["n"], row["step_lo"], row["step_hi"], row["t_lo"], row["t_hi"]
            )
    return out


def aligned_series(
    reader: Reader,
    snapshot: Snapshot,
    series: Sequence[SeriesKey],
    buckets: int,
    *,
    x_min: int | None = None,
    x_max: int | None = None,
) -> MultiSeries:
    """Points with ``x_min <= step <= x_max`` of each series: exact when the series has at
    most ``2 * buckets`` of them, else one row per non-empty bucket ``step >> k`` for the
    largest k giving at least ``buckets`` buckets between the lowest and highest selected
    step of all series (so buckets line up across series). Columns as
    ``steppe.query.series.multi_series`` (x: the lowest step in the bucket)."""
    if buckets < 1:
        raise ValueError(f"buckets must be >= 1, got {buckets}")
    if not series:
        raise ValueError("series must not be empty")
    plan = _Plan(reader, snapshot, series)
    bounds = _bounds(reader, snapshot, plan, series, x_min, x_max)
    present = [i for i, b in enumerate(bounds) if b.n]
    if not present:
        return MultiSeries("step", None, [_data(s, _SCHEMA.empty_table()) for s in series])
    lo = min(bounds[i].step_lo for i in present)
    hi = max(bounds[i].step_hi for i in present)
    k = grid_shift(lo, hi, buckets)
    shift = max((s for s in TIER_SHIFTS if s <= k), default=None)
    params: dict[str, object] = {}
    parts = []
    for i in present:
        s = series[i]
        params.update({f"r{i}": s.run_id, f"k{i}": s.key})
        if bounds[i].n <= 2 * buckets:
            rows = _rows_sql(plan, i, None, x_min, x_max, params)
            parts.append(_EXACT.format(i=i, rows=rows))
        else:
            rows = _rows_sql(plan, i, shift, x_min, x_max, params)
            parts.append(_BUCKETS.format(i=i, rows=rows, k=k))
    sql = "\nUNION ALL\n".join(parts) + "\nORDER BY sid, x, step, ts"
    table = reader.query(snapshot, sql, params)
    sids = table.column("sid")
    return MultiSeries(
        "step", None, [_data(s, table.filter(pc.equal(sids, i))) for i, s in enumerate(series)]
    )


def _data(key: SeriesKey, table: pa.Table) -> SeriesData:
    if table.num_rows and bool(table.column("bucketed")[0].as_py()):
        return SeriesData(
            key, True, table.select(["x", "min", "max", "first", "last", "mean", "count"])
        )
    return SeriesData(key, False, table.rename_columns({"first": "value"}).select(["x", "value"]))
