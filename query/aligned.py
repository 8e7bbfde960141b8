"""Series on step against an aligned grid: buckets of 2^k steps (``step >> k``), at least the
requested number of them over the selected points, answered from the metrics files'
pre-aggregated tiers (layout.TIER_SCHEMA) where they exist and from the points elsewhere.

A bucketed answer's window is widened to whole blocks of the finest tier (64 steps), so
whole tier rows always tile it: no point of a file with tiers is read for a bucketed
answer, and a bucket says the same whatever the zoom. Exact by construction: a bucket
merges tier rows (the coarsest that fit) with the points of files without tiers and of the
unflushed tail, with the same min/max/first/last/count as the points alone (the mean is
sum / count, equal up to the order of the additions). Synchronous and read-only, like
steppe.query.series.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import pyarrow as pa
import pyarrow.compute as pc

from steppe.ingest.layout import TIER_INDEX_SHIFT, TIER_SHIFTS, Snapshot
from steppe.query.reader import TAIL, Bounds, Reader
from steppe.query.series import SERIES_SCHEMA, MultiSeries, SeriesData, SeriesKey
from steppe.query.tier_files import ROW_COLUMNS

__all__ = ["GRIDS", "Grid", "aligned_series", "cover", "grid_shift", "widen"]

#: How a bucketed answer cuts x: ``buckets`` equal ranges, or 2^k-step aligned buckets.
Grid = Literal["even", "aligned"]
GRIDS: tuple[Grid, ...] = ("even", "aligned")

_INT64_MAX = 2**63 - 1

# The points of each (sid, step >> k) as one partial summary (the tier rows' columns). o
# orders them by (step, timestamp) as one HUGEINT (timestamps are >= 0: MetricRules), which
# DuckDB aggregates about twice as fast as a struct (no shift: DuckDB refuses negative ones).
_GROUPED = """SELECT sid, count(*)::BIGINT AS "count", sum(value) AS "sum",
       coalesce(min(value), 'NaN'::DOUBLE) AS "min",
       coalesce(max(nullif(value, 'NaN'::DOUBLE)), 'NaN'::DOUBLE) AS "max",
       arg_min(value, o) AS "first", min(step) AS first_step,
       (min(o) - min(step)::HUGEINT * 18446744073709551616)::BIGINT AS first_ts,
       arg_max(value, o) AS "last", max(step) AS last_step,
       (max(o) - max(step)::HUGEINT * 18446744073709551616)::BIGINT AS last_ts,
       min(ts) AS ts_lo, max(ts) AS ts_hi
FROM ({points})
GROUP BY sid, step >> {k}"""

# One point as a partial summary (the tier rows' columns).
_POINT_ROW = """1::BIGINT AS "count", value AS "sum", value AS "min", value AS "max",
value AS "first", step AS first_step, "timestamp" AS first_ts, value AS "last",
step AS last_step, "timestamp" AS last_ts, "timestamp" AS ts_lo, "timestamp" AS ts_hi"""
_POINT_COLUMNS = """p.step, p."timestamp" AS ts, p.value,
p.step::HUGEINT * 18446744073709551616 + p."timestamp" AS o"""
_FLOATS = {"sum", "min", "max", "first", "last"}


def grid_shift(lo: int, hi: int, buckets: int) -> int:
    """The largest k with at least ``buckets`` 2^k-step buckets between lo and hi (0 when
    even single steps give fewer)."""
    k = 0
    while k < 62 and (hi >> (k + 1)) - (lo >> (k + 1)) + 1 >= buckets:
        k += 1
    return k


def widen(x_min: int | None, x_max: int | None) -> tuple[int | None, int | None]:
    """The window widened to whole blocks of the finest tier (2^TIER_SHIFTS[0] steps)."""
    block = TIER_SHIFTS[0]
    lo = None if x_min is None else (x_min >> block) << block
    hi = None if x_max is None else min(_INT64_MAX, (((x_max >> block) + 1) << block) - 1)
    return lo, hi


Range = tuple[int, int | None, int | None]


def cover(lo: int | None, hi: int | None, shifts: Sequence[int]) -> list[Range]:
    """(shift, first bucket, last bucket) ranges whose buckets tile [lo, hi] exactly, as
    coarse as ``shifts`` (ascending) allow; lo and hi + 1 are multiples of 2^shifts[0]
    (None: open). At most two ranges per shift."""
    if not shifts:
        raise ValueError(f"[{lo}, {hi}] is not made of whole tier blocks")
    s = shifts[-1]
    first = None if lo is None else -((-lo) >> s)  # first bucket starting at or after lo
    last = None if hi is None or hi == _INT64_MAX else ((hi + 1) >> s) - 1
    if first is not None and last is not None and first > last:
        return cover(lo, hi, shifts[:-1])
    out: list[Range] = [(s, first, last)]
    if lo is not None and first is not None and lo < first << s:
        out += cover(lo, (first << s) - 1, shifts[:-1])
    if hi is not None and last is not None and ((last + 1) << s) <= hi:
        out += cover((last + 1) << s, hi, shifts[:-1])
    return out


class _Plan:
    """Per series, which files to read how: ``tiered`` (tier rows), ``small`` (in the file's
    index but without tiers: its points), ``unknown`` (no tier file to trust: its points).
    Files whose index lacks the series are not read for it at all."""

    def __init__(self, reader: Reader, snapshot: Snapshot, series: Sequence[SeriesKey]) -> None:
        found = [(path, reader.tiers.of(path)) for path in snapshot.files]
        self.tiers = {path: tiers for path, tiers in found if tiers is not None}
        unknown = [path for path, tiers in found if tiers is None]
        self.tiered: list[list[Path]] = []
        self.small: list[list[Path]] = []
        self.unknown = unknown
        for s in series:
            pair = (s.run_id, s.key)
            self.tiered.append([p for p, t in found if t is not None and pair in t.tiered])
            self.small.append(
                [
                    p
                    for p, t in found
                    if t is not None and pair in t.present and pair not in t.tiered
                ]
            )
        self.tail = snapshot.tail.num_rows > 0

    def any_tiers(self) -> bool:
        return any(self.tiered) or any(self.small)


def _marks(prefix: str, values: Sequence[str], params: dict[str, object]) -> str:
    names = []
    for index, value in enumerate(values):
        params[f"{prefix}{index}"] = value
        names.append(f"${prefix}{index}")
    return ", ".join(names)


_ROWS_SCHEMA = pa.schema(
    [("sid", pa.int64())]
    + [(name, pa.float64() if name in _FLOATS else pa.int64()) for name in ROW_COLUMNS]
)


def _rows(
    reader: Reader,
    snapshot: Snapshot,
    plan: _Plan,
    series: Sequence[SeriesKey],
    chosen: Sequence[int],
    how: list[Range] | Literal["index", "points"],
    lo: int | None,
    hi: int | None,
    k: int | None,
) -> pa.Table:
    """Partial summaries (sid + ROW_COLUMNS) of the ``chosen`` series' points with
    lo <= step <= hi: tier rows in ``how``'s ranges (which tile the window), or the files'
    index rows (open window only), or ("points") the points alone; files without tiers,
    and the tail, always give points. Tier rows come from memory (steppe.query.tier_files),
    points from one DuckDB query, one row each, or with ``k`` one per (sid, step >> k)."""
    if not chosen:
        return _ROWS_SCHEMA.empty_table()
    found: list[pa.Table] = []
    raw: list[tuple[int, Path]] = []

    def add(i: int, rows: pa.Table | None) -> None:
        if rows is not None and rows.num_rows:
            sid = pa.array([i] * rows.num_rows, pa.int64())
            found.append(rows.add_column(0, "sid", sid).cast(_ROWS_SCHEMA))

    for i in chosen:
        run_id, key = series[i].run_id, series[i].key
        if how == "points":
            raw += [(i, p) for p in (*plan.tiered[i], *plan.small[i], *plan.unknown)]
        elif how == "index":
            assert lo is None and hi is None
            for path in (*plan.tiered[i], *plan.small[i]):
                add(i, plan.tiers[path].rows(run_id, key, TIER_INDEX_SHIFT, None, None))
            raw += [(i, p) for p in plan.unknown]
        else:
            for path in plan.tiered[i]:
                for shift, first, last in how:
                    add(i, plan.tiers[path].rows(run_id, key, shift, first, last))
            raw += [(i, p) for p in (*plan.small[i], *plan.unknown)]
    if raw or plan.tail:
        found.append(_points(reader, snapshot, series, chosen, raw, plan.tail, lo, hi, k))
    return pa.concat_tables(found) if found else _ROWS_SCHEMA.empty_table()


def _points(
    reader: Reader,
    snapshot: Snapshot,
    series: Sequence[SeriesKey],
    chosen: Sequence[int],
    raw: list[tuple[int, Path]],
    tail: bool,
    lo: int | None,
    hi: int | None,
    k: int | None,
) -> pa.Table:
    """Each point, as a partial summary, of the ``chosen`` series in the window: from the
    (series, file) pairs of ``raw`` and, with ``tail``, from the unflushed tail."""
    params: dict[str, object] = {}
    tables = {
        "__steppe_sel": pa.table(
            {
                "sid": pa.array(chosen, pa.int64()),
                "run_id": pa.array([series[i].run_id for i in chosen], pa.string()),
                "key": pa.array([series[i].key for i in chosen], pa.string()),
            }
        )
    }
    names = f"p.run_id IN ({_marks('r', sorted({series[i].run_id for i in chosen}), params)})"
    names += f" AND p.key IN ({_marks('k', sorted({series[i].key for i in chosen}), params)})"
    if lo is not None:
        params["lo"] = lo
        names += " AND p.step >= $lo"
    if hi is not None:
        params["hi"] = hi
        names += " AND p.step <= $hi"
    join = "JOIN __steppe_sel AS sel ON p.run_id = sel.run_id AND p.key = sel.key"
    columns = _POINT_ROW if k is None else _POINT_COLUMNS
    parts = []
    if raw:
        tables["__steppe_raw"] = pa.table(
            {
                "sid": pa.array([i for i, _ in raw], pa.int64()),
                "file": pa.array([str(p) for _, p in raw], pa.string()),
            }
        )
        params["pf"] = sorted({str(p) for _, p in raw})
        parts.append(
            f"SELECT sel.sid, {columns} FROM read_parquet($pf, filename = true) AS p "
            f"{join} JOIN __steppe_raw AS w ON w.sid = sel.sid AND w.file = p.filename "
            f"WHERE {names}"
        )
    if tail or not parts:
        parts.append(f"SELECT sel.sid, {columns} FROM {TAIL} AS p {join} WHERE {names}")
    sql = "\nUNION ALL\n".join(parts)
    if k is not None:
        sql = _GROUPED.format(points=sql, k=int(k))
    table = reader.query(snapshot, sql, params, tables)
    return table.select(_ROWS_SCHEMA.names).cast(_ROWS_SCHEMA)


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
    how: list[Range] | Literal["index"] = (
        "index" if lo is None and hi is None else cover(lo, hi, TIER_SHIFTS)
    )
    rows = _rows(reader, snapshot, plan, series, range(len(series)), how, lo, hi, 62)
    table = rows.group_by("sid").aggregate(
        [("count", "sum"), ("first_step", "min"), ("last_step", "max"), ("ts_lo", "min"),
         ("ts_hi", "max")]
    )  # fmt: skip
    out = [Bounds(0, 0, 0, 0, 0)] * len(series)
    for row in table.to_pylist():
        if row["count_sum"]:
            out[row["sid"]] = Bounds(
                row["count_sum"], row["first_step_min"], row["last_step_max"],
                row["ts_lo_min"], row["ts_hi_max"],
            )  # fmt: skip
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
    """Points with ``x_min <= step <= x_max`` of each series: exact when the window widened
    to whole 64-step blocks (``widen``) holds at most ``2 * buckets`` of them, else, over
    that widened window, one row per non-empty bucket ``step >> k`` for the
    largest k giving at least ``buckets`` buckets between the lowest and highest selected
    step of all series (so buckets line up across series). Columns as
    ``steppe.query.series.multi_series`` (x: the lowest step in the bucket)."""
    if buckets < 1:
        raise ValueError(f"buckets must be >= 1, got {buckets}")
    if not series:
        raise ValueError("series must not be empty")
    plan = _Plan(reader, snapshot, series)
    exact_min, exact_max = x_min, x_max
    x_min, x_max = widen(x_min, x_max)
    bounds = _bounds(reader, snapshot, plan, series, x_min, x_max)
    present = [i for i, b in enumerate(bounds) if b.n]
    if not present:
        return MultiSeries("step", None, [_data(s, SERIES_SCHEMA.empty_table()) for s in series])
    lo = min(bounds[i].step_lo for i in present)
    hi = max(bounds[i].step_hi for i in present)
    k = grid_shift(lo, hi, buckets)
    usable = [s for s in TIER_SHIFTS if s <= k]
    how: list[Range] | Literal["points"] = cover(x_min, x_max, usable) if usable else "points"
    exact = [i for i in present if bounds[i].n <= 2 * buckets]
    cut = [i for i in present if bounds[i].n > 2 * buckets]
    found = pa.concat_tables(
        [
            _rows(reader, snapshot, plan, series, exact, "points", exact_min, exact_max, None),
            _rows(reader, snapshot, plan, series, cut, how, x_min, x_max, k),
        ]
    )
    table = _merge(found, set(cut), k)
    sids = table.column("sid")
    return MultiSeries(
        "step", None, [_data(s, table.filter(pc.equal(sids, i))) for i, s in enumerate(series)]
    )


def _merge(rows: pa.Table, cut: set[int], k: int) -> pa.Table:
    """Partial summaries to answers (SERIES_SCHEMA): each point of an exact series as it is, the
    rows of a bucketed series merged per bucket ``first_step >> k``. In Arrow, whose ordered
    hash aggregation of a few thousand groups costs far less than DuckDB's: first is the
    first row by (first_step, first_ts), last the first by (last_step, last_ts) descending;
    min and max skip NaN unless every value is NaN, as in the SQL of steppe.query.series."""
    in_cut = pc.is_in(rows.column("sid"), value_set=pa.array(sorted(cut), pa.int64()))
    out = []
    points = rows.filter(pc.invert(in_cut))
    if points.num_rows:
        points = points.sort_by([("sid", "ascending"), ("first_step", "ascending"),
                                 ("first_ts", "ascending")])  # fmt: skip
        value = points.column("first")
        n = points.num_rows
        out.append(pa.table({
            "sid": points.column("sid"), "bucketed": pa.array([False] * n),
            "x": points.column("first_step"), "min": value, "max": value, "first": value,
            "last": value, "mean": value, "count": pa.array([1] * n, pa.int64()),
            "step": points.column("first_step"), "ts": points.column("first_ts"),
        }))  # fmt: skip
    parts = rows.filter(in_cut)
    if parts.num_rows:
        parts = parts.append_column("bucket", pc.shift_right(parts.column("first_step"), k))
        keys = [("sid", "ascending"), ("bucket", "ascending")]
        parts = parts.sort_by([*keys, ("first_step", "ascending"), ("first_ts", "ascending")])
        if _one_row_each(parts):
            # The usual wide chart: each bucket is one tier row already (no merge needed).
            out.append(_buckets(parts, parts.column("first"), parts.column("last"), False))
            parts = parts.slice(0, 0)
    if parts.num_rows:
        keys = [("sid", "ascending"), ("bucket", "ascending")]
        firsts = (
            parts.group_by(["sid", "bucket"], use_threads=False)
            .aggregate([("first", "first"), ("first_step", "min"), ("count", "sum"),
                        ("sum", "sum"), ("min", "min"), ("max", "max"), ("ts_lo", "min")])
        )  # fmt: skip
        lasts = (
            parts.sort_by([*keys, ("last_step", "descending"), ("last_ts", "descending")])
            .group_by(["sid", "bucket"], use_threads=False)
            .aggregate([("last", "first")])
        )
        out.append(_buckets(firsts, firsts.column("first_first"), lasts.column("last_first"), True))
    if not out:
        return SERIES_SCHEMA.empty_table()
    merged = pa.concat_tables([t.cast(SERIES_SCHEMA) for t in out])
    return merged.sort_by([("sid", "ascending"), ("x", "ascending")])


def _one_row_each(parts: pa.Table) -> bool:
    """Whether no two rows of ``parts`` (sorted by sid, bucket) share a bucket."""
    n = parts.num_rows
    if n < 2:
        return True
    sid, bucket = parts.column("sid"), parts.column("bucket")
    same = pc.and_(
        pc.equal(sid.slice(1), sid.slice(0, n - 1)),
        pc.equal(bucket.slice(1), bucket.slice(0, n - 1)),
    )
    return not pc.any(same).as_py()


def _data(key: SeriesKey, table: pa.Table) -> SeriesData:
    if table.num_rows and bool(table.column("bucketed")[0].as_py()):
        return SeriesData(
            key, True, table.select(["x", "min", "max", "first", "last", "mean", "count"])
        )
    return SeriesData(key, False, table.rename_columns({"first": "value"}).select(["x", "value"]))


def _buckets(
    rows: pa.Table, first: pa.ChunkedArray, last: pa.ChunkedArray, grouped: bool
) -> pa.Table:
    """Answer rows (SERIES_SCHEMA) of bucketed tier rows, one per bucket: ``rows`` as read
    or ``grouped`` by Arrow (columns named ``<column>_<aggregate>``)."""

    def col(name: str, how: str) -> pa.ChunkedArray:
        return rows.column(f"{name}_{how}" if grouped else name)

    count = col("count", "sum")
    x = col("first_step", "min")
    return pa.table({
        "sid": rows.column("sid"), "bucketed": pa.array([True] * rows.num_rows),
        "x": x, "min": col("min", "min"), "max": col("max", "max"), "first": first, "last": last,
        "mean": pc.divide(col("sum", "sum"), pc.cast(count, pa.float64())),
        "count": count, "step": x, "ts": col("ts_lo", "min"),
    })  # fmt: skip
