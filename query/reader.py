"""DuckDB over one ``Snapshot``: the committed Parquet files plus the in-memory tail.

Synchronous and read-only: call it from worker threads, never on the event loop, and never
ask it for a snapshot (snapshots are taken on the loop thread by the caller).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TypedDict

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from steppe.ingest.layout import LATEST_SCHEMA, METRICS_SCHEMA, DataDir, Snapshot

__all__ = [
    "DirectorySnapshot",
    "MetricSummary",
    "Reader",
    "Series",
    "deadline",
]

#: The tail is registered under this name on each query's own cursor.
_TAIL = "tail"

_HISTORY_SCHEMA = pa.schema(
    [("step", pa.int64()), ("value", pa.float64()), ("timestamp", pa.int64())]
)
_EXACT_SCHEMA = pa.schema([("step", pa.int64()), ("value", pa.float64())])
_BOUNDS_CACHE_SIZE = 1024


@contextmanager
def deadline(db: duckdb.DuckDBPyConnection, limit_s: float) -> Iterator[threading.Event]:
    """Interrupt ``db`` once ``limit_s`` has passed, and keep interrupting until the block
    ends (an interrupt that lands between two queries' phases is otherwise lost)."""
    done = threading.Event()
    expired = threading.Event()

    def watch() -> None:
        if done.wait(limit_s):
            return
        expired.set()
        while True:
            db.interrupt()
            if done.wait(0.05):
                return

    watcher = threading.Thread(target=watch, name="steppe-sql-deadline", daemon=True)
    watcher.start()
    try:
        yield expired
    finally:
        done.set()
        watcher.join()


def _arrow(cursor: duckdb.DuckDBPyConnection, sql: str, params: dict[str, object]) -> pa.Table:
    relation = cursor.sql(sql, params=params)
    assert relation is not None  # a SELECT always gives a relation
    table: pa.Table = relation.to_arrow_table()
    return table


class MetricSummary(TypedDict):
    """One (run, key) row of ``Snapshot.latest``: MLflow's latest point plus min/max/count.

    ``min``/``max`` ignore NaN and are None when every value is NaN.
    """

    value: float
    step: int
    timestamp: int
    min: float | None
    max: float | None
    count: int


@dataclass(frozen=True)
class Series:
    """A series answer. Exact: columns step, value (every point, step then timestamp order).
    Bucketed: one row per non-empty bucket with step (first step in the bucket), min, max
    (exact, NaN ignored), first, last (by step then timestamp), mean (NaN if any value is),
    count (every point)."""

    bucketed: bool
    table: pa.Table


# The points of one (run, key), filtered inside each source so DuckDB pushes run_id, key and
# the step window into the Parquet scan (row-group statistics prune) and the Arrow scan. An
# empty tail is left out (no UNION ALL branch to plan and run).
def _points_sql(snapshot: Snapshot, where: str, columns: str = 'step, "timestamp", value') -> str:
    sources = []
    if snapshot.files:
        sources.append(f"SELECT {columns} FROM read_parquet($files) WHERE {where}")
    if snapshot.tail.num_rows or not sources:
        sources.append(f"SELECT {columns} FROM {_TAIL} WHERE {where}")
    return "\nUNION ALL\n".join(sources)


def _point_filter(x_min: int | None, x_max: int | None) -> str:
    where = "run_id = $run_id AND key = $key"
    if x_min is not None:
        where += " AND step >= $x_min"
    if x_max is not None:
        where += " AND step <= $x_max"
    return where


_INT64_MAX = 2**63 - 1

# The count and the step and timestamp ranges of the points in the window: they decide
# exact or bucketed, and fix the bucket grid before the one scan that groups.
_BOUNDS_SQL = """
SELECT count(*) AS n, min(step) AS lo, max(step) AS hi, min("timestamp") AS t_lo,
       max("timestamp") AS t_hi
FROM ({points})
"""

_EXACT_SQL = 'SELECT step, value FROM ({points}) ORDER BY step, "timestamp"'

# One row per non-empty bucket of `buckets` equal step ranges over [lo, hi]. {bucket} and
# {order} are integer expressions chosen in Python (BIGINT when the products fit, else
# HUGEINT or a (step, timestamp) struct) so DuckDB groups and compares plain integers.
# min/max skip NaN so a NaN cannot hide the envelope (DuckDB orders NaN above every number,
# so min needs no filter, and NaN = NaN, so nullif drops it for max); the mean propagates
# NaN so a bucket holding one still shows it.
_BUCKETS_SQL = """
SELECT min(step) AS step,
       coalesce(min(value), 'NaN'::DOUBLE) AS "min",
       coalesce(max(nullif(value, 'NaN'::DOUBLE)), 'NaN'::DOUBLE) AS "max",
       arg_min(value, {order}) AS "first",
       arg_max(value, {order}) AS "last",
       avg(value) AS mean, count(*) AS "count"
FROM ({points})
GROUP BY {bucket}
ORDER BY step
"""


@dataclass(frozen=True)
class _Bounds:
    n: int
    lo: int
    hi: int
    t_lo: int
    t_hi: int

    def merge(self, other: _Bounds) -> _Bounds:
        if not other.n:
            return self
        if not self.n:
            return other
        return _Bounds(
            self.n + other.n,
            min(self.lo, other.lo),
            max(self.hi, other.hi),
            min(self.t_lo, other.t_lo),
            max(self.t_hi, other.t_hi),
        )


_NO_POINTS = _Bounds(0, 0, 0, 0, 0)


def _bucket_sql(bounds: _Bounds, buckets: int, params: dict[str, object]) -> tuple[str, str]:
    """The GROUP BY and first/last ordering expressions for this grid; binds what they use."""
    span = bounds.hi - bounds.lo + 1
    params.update(lo=bounds.lo, span=span, buckets=buckets)
    if (span - 1) * buckets <= _INT64_MAX:
        bucket = "(step - $lo) * $buckets // $span"
    else:
        bucket = "(step::HUGEINT - $lo) * $buckets // $span"
    t_width = bounds.t_hi - bounds.t_lo + 1
    if t_width == 1:
        return bucket, "step"  # one timestamp: step alone is the (step, timestamp) order
    if span * t_width > _INT64_MAX:
        return bucket, '(step, "timestamp")'
    # One BIGINT orders by step then timestamp: (step - lo) * t_width + (timestamp - t_lo).
    params.update(t_lo=bounds.t_lo, t_width=t_width)
    return bucket, '(step - $lo) * $t_width + ("timestamp" - $t_lo)'


# MLflow's latest: highest step, then newest timestamp, then largest value (the order in
# which MLflow's SQL store replaces its latest_metrics row).
_LATEST_SQL = """
SELECT run_id, key, latest.value AS value, latest.step AS step,
       latest."timestamp" AS "timestamp", "min", "max", "count"
FROM (
    SELECT run_id, key,
           max({'step': step, 'timestamp': "timestamp", 'value': value}) AS latest,
           min(value) FILTER (WHERE NOT isnan(value)) AS "min",
           max(value) FILTER (WHERE NOT isnan(value)) AS "max",
           count(*) AS "count"
    FROM read_parquet($files)
    GROUP BY run_id, key
)
ORDER BY run_id, key
"""


class Reader:
    """Answers metric queries over a ``Snapshot`` with one in-memory DuckDB database.

    Thread-safe: every query runs on its own cursor (a DuckDB connection of its own, where
    the snapshot's tail is registered), so worker threads may call concurrently.

        reader = Reader()
        table = reader.metric_history(source.snapshot(), run_id, "loss")
        reader.close()
    """

    def __init__(self, *, threads: int | None = None, memory_limit: str | None = None) -> None:
        config: dict[str, str | bool | int | float | list[str]] = {}
        if threads is not None:
            config["threads"] = threads
        if memory_limit is not None:
            config["memory_limit"] = memory_limit
        self._db = duckdb.connect(":memory:", config=config)
        # Metrics files are immutable once committed, so their footers can be cached.
        self._db.execute("SET parquet_metadata_cache = true")
        self._lock = threading.Lock()
        self._closed = False
        # (files, filter, params) -> _Bounds of those files' matching points; oldest dropped.
        self._bounds_cache: dict[tuple[object, ...], _Bounds] = {}

    def close(self) -> None:
        """Close the database. Queries still running on other threads fail."""
        with self._lock:
            if not self._closed:
                self._closed = True
                self._db.close()

    @contextmanager
    def _cursor(self, snapshot: Snapshot) -> Iterator[duckdb.DuckDBPyConnection]:
        # Creating a cursor touches the parent connection: serialise that, not the query.
        with self._lock:
            if self._closed:
                raise RuntimeError("Reader is closed")
            cursor = self._db.cursor()
        try:
            cursor.register(_TAIL, snapshot.tail)
            yield cursor
        finally:
            cursor.close()

    def _query(self, snapshot: Snapshot, sql: str, params: dict[str, object]) -> pa.Table:
        return self.query(snapshot, sql, params)

    def query(
        self,
        snapshot: Snapshot,
        sql: str,
        params: Mapping[str, object],
        tables: Mapping[str, pa.Table] | None = None,
        *,
        time_limit_s: float | None = None,
    ) -> pa.Table:
        """Run steppe's own ``sql`` (never user SQL: see steppe.query.sql) on a cursor where
        the snapshot's tail is ``tail``, ``$files`` lists its files (bound only when the
        snapshot has files and ``sql`` uses it) and each of ``tables`` is registered under
        its name. Past ``time_limit_s`` it is interrupted: ``TimeoutError``."""
        params = dict(params)
        if snapshot.files and "$files" in sql:
            params["files"] = [str(path) for path in snapshot.files]
        with self._cursor(snapshot) as cursor:
            for name, extra in (tables or {}).items():
                cursor.register(name, extra)
            if time_limit_s is None:
                return _arrow(cursor, sql, params)
            with deadline(cursor, time_limit_s) as expired:
                try:
                    return _arrow(cursor, sql, params)
                except duckdb.InterruptException:
                    if expired.is_set():
                        raise TimeoutError(
                            f"exceeded the time limit of {time_limit_s:g} s"
                        ) from None
                    raise

    def metric_history(self, snapshot: Snapshot, run_id: str, key: str) -> pa.Table:
        """Every point of one metric: columns step, value, timestamp, ordered by step then
        timestamp (NaN and +/-inf included)."""
        points = _points_sql(snapshot, _point_filter(None, None))
        sql = f'SELECT step, value, "timestamp" FROM ({points}) ORDER BY step, "timestamp"'
        table = self._query(snapshot, sql, {"run_id": run_id, "key": key})
        return table.cast(_HISTORY_SCHEMA)

    def series(
        self,
        snapshot: Snapshot,
        run_id: str,
        key: str,
        buckets: int,
        x_min: int | None = None,
        x_max: int | None = None,
    ) -> Series:
        """Points with ``x_min <= step <= x_max``: exact when there are at most
        ``2 * buckets`` of them, else one row per non-empty bucket of ``buckets`` equal step
        ranges (see ``Series``)."""
        if buckets < 1:
            raise ValueError(f"buckets must be >= 1, got {buckets}")
        params: dict[str, object] = {"run_id": run_id, "key": key}
        if x_min is not None:
            params["x_min"] = x_min
        if x_max is not None:
            params["x_max"] = x_max
        where = _point_filter(x_min, x_max)
        bounds = self._bounds(snapshot, where, params)
        if bounds.n <= 2 * buckets:
            sql = _EXACT_SQL.format(points=_points_sql(snapshot, where))
            table = self._query(snapshot, sql, params) if bounds.n else _EXACT_SCHEMA.empty_table()
            return Series(bucketed=False, table=table.cast(_EXACT_SCHEMA))
        bucket, order = _bucket_sql(bounds, buckets, params)
        sql = _BUCKETS_SQL.format(points=_points_sql(snapshot, where), bucket=bucket, order=order)
        return Series(bucketed=True, table=self._query(snapshot, sql, params))

    def _bounds(self, snapshot: Snapshot, where: str, params: dict[str, object]) -> _Bounds:
        """Count and ranges of the matching points: the files' part is cached (they are
        immutable, so a snapshot's file list names their content), the tail's is computed."""
        ident = (snapshot.files, where, tuple(sorted(params.items())))
        with self._lock:
            cached = self._bounds_cache.get(ident)
        if cached is None:
            cached = _NO_POINTS
            if snapshot.files:
                files_only = Snapshot(snapshot.files, snapshot.tail.slice(0, 0), snapshot.latest)
                cached = self._bounds_query(files_only, where, params)
            with self._lock:
                if len(self._bounds_cache) >= _BOUNDS_CACHE_SIZE:
                    self._bounds_cache.pop(next(iter(self._bounds_cache)))
                self._bounds_cache[ident] = cached
        if not snapshot.tail.num_rows:
            return cached
        tail_only = Snapshot((), snapshot.tail, snapshot.latest)
        return cached.merge(self._bounds_query(tail_only, where, params))

    def _bounds_query(self, snapshot: Snapshot, where: str, params: dict[str, object]) -> _Bounds:
        sql = _BOUNDS_SQL.format(points=_points_sql(snapshot, where, 'step, "timestamp"'))
        row = self._query(snapshot, sql, params).to_pylist()[0]
        if not row["n"]:
            return _NO_POINTS
        return _Bounds(row["n"], row["lo"], row["hi"], row["t_lo"], row["t_hi"])

    def latest_metrics(
        self, snapshot: Snapshot, run_ids: Sequence[str]
    ) -> dict[str, dict[str, MetricSummary]]:
        """run_id -> key -> latest summary, from ``snapshot.latest``; runs without metrics
        are absent. Keys are in sorted order."""
        latest = snapshot.latest
        if not run_ids or latest.num_rows == 0:
            return {}
        mask = pc.is_in(latest.column("run_id"), value_set=pa.array(run_ids, pa.string()))
        rows = latest.filter(mask).sort_by([("run_id", "ascending"), ("key", "ascending")])
        out: dict[str, dict[str, MetricSummary]] = {}
        columns = {name: rows.column(name).to_pylist() for name in LATEST_SCHEMA.names}
        for i in range(rows.num_rows):
            out.setdefault(columns["run_id"][i], {})[columns["key"][i]] = MetricSummary(
                value=columns["value"][i],
                step=columns["step"][i],
                timestamp=columns["timestamp"][i],
                min=columns["min"][i],
                max=columns["max"][i],
                count=columns["count"][i],
            )
        return out

    def metric_keys(self, snapshot: Snapshot, run_id: str) -> list[str]:
        """The metric keys a run has logged, sorted."""
        latest = snapshot.latest
        keys = latest.filter(pc.equal(latest.column("run_id"), run_id)).column("key")
        return sorted(keys.to_pylist())


def compute_latest(files: Sequence[Path]) -> pa.Table:
    """The LATEST_SCHEMA summary of these metrics files, computed with DuckDB."""
    if not files:
        return LATEST_SCHEMA.empty_table()
    with duckdb.connect(":memory:") as db:
        relation = db.sql(_LATEST_SQL, params={"files": [str(path) for path in files]})
        assert relation is not None  # a SELECT always gives a relation
        table: pa.Table = relation.to_arrow_table()
    return table.cast(LATEST_SCHEMA)


class DirectorySnapshot:
    """A ``SnapshotSource`` over a data dir on its own, for when no server is running.

    Committed metrics files, an empty tail, and ``latest.parquet`` when it is at least as
    new as the newest metrics file (else the summary is computed from the files and cached
    until they change). It does file I/O in ``snapshot()``: not for use on a server's loop.

        source = DirectorySnapshot("~/.steppe")
        Reader().metric_history(source.snapshot(), run_id, "loss")
    """

    def __init__(self, data_dir: DataDir | str | Path) -> None:
        self._dir = data_dir if isinstance(data_dir, DataDir) else DataDir.at(data_dir)
        self._lock = threading.Lock()
        self._cached: tuple[tuple[tuple[str, int], ...], pa.Table] | None = None

    def snapshot(self) -> Snapshot:
        files = tuple(self._dir.metrics_files())
        with self._lock:
            latest = self._latest(files)
        return Snapshot(files=files, tail=METRICS_SCHEMA.empty_table(), latest=latest)

    def _latest(self, files: tuple[Path, ...]) -> pa.Table:
        stamps = tuple((path.name, path.stat().st_mtime_ns) for path in files)
        newest = max((mtime for _, mtime in stamps), default=0)
        latest_file = self._dir.latest_file
        try:
            if latest_file.stat().st_mtime_ns >= newest:
                return _conform(pq.read_table(latest_file), LATEST_SCHEMA)
        except FileNotFoundError:
            pass  # no summary written yet: compute it below
        if self._cached is None or self._cached[0] != stamps:
            self._cached = (stamps, compute_latest(files))
        return self._cached[1]


def _conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    return table.select(schema.names).cast(schema)
