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
]

#: The tail is registered under this name on each query's own cursor.
_TAIL = "tail"

_HISTORY_SCHEMA = pa.schema(
    [("step", pa.int64()), ("value", pa.float64()), ("timestamp", pa.int64())]
)
_EXACT_SCHEMA = pa.schema([("step", pa.int64()), ("value", pa.float64())])


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
# the step window into the Parquet scan (row-group statistics prune) and the Arrow scan.
def _points_sql(snapshot: Snapshot, where: str) -> str:
    sources = []
    if snapshot.files:
        sources.append(f'SELECT step, "timestamp", value FROM read_parquet($files) WHERE {where}')
    sources.append(f'SELECT step, "timestamp", value FROM {_TAIL} WHERE {where}')
    return "\nUNION ALL\n".join(sources)


def _point_filter(x_min: int | None, x_max: int | None) -> str:
    where = "run_id = $run_id AND key = $key"
    if x_min is not None:
        where += " AND step >= $x_min"
    if x_max is not None:
        where += " AND step <= $x_max"
    return where


# One query answers both shapes. bounds is one row (count, first and last step in the
# window); the exact branch keeps every point when count <= exact_limit, otherwise the
# bucketed branch groups them into `buckets` equal step ranges. HUGEINT keeps the bucket
# arithmetic exact for any int64 steps. min/max skip NaN so a NaN cannot hide the envelope;
# the mean propagates NaN so a bucket holding one still shows it.
_SERIES_SQL = """
WITH pts AS ({points}),
bounds AS (
    SELECT count(*) AS n, min(step)::HUGEINT AS lo, max(step)::HUGEINT AS hi FROM pts
)
SELECT false AS bucketed, step, value AS "min", value AS "max", value AS "first",
       value AS "last", value AS mean, 1::BIGINT AS "count", "timestamp" AS ts
FROM pts, bounds
WHERE bounds.n <= $exact_limit
UNION ALL
SELECT true, min(step),
       coalesce(min(value) FILTER (WHERE NOT isnan(value)), 'NaN'::DOUBLE),
       coalesce(max(value) FILTER (WHERE NOT isnan(value)), 'NaN'::DOUBLE),
       arg_min(value, (step, "timestamp")),
       arg_max(value, (step, "timestamp")),
       avg(value), count(*), min("timestamp")
FROM pts, bounds
WHERE bounds.n > $exact_limit
GROUP BY (step::HUGEINT - bounds.lo) * $buckets // (bounds.hi - bounds.lo + 1)
ORDER BY step, ts
"""

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
    ) -> pa.Table:
        """Run steppe's own ``sql`` (never user SQL: see steppe.query.sql) on a cursor where
        the snapshot's tail is ``tail``, ``$files`` lists its files (bound only when the
        snapshot has files and ``sql`` uses it) and each of ``tables`` is registered under
        its name."""
        params = dict(params)
        if snapshot.files and "$files" in sql:
            params["files"] = [str(path) for path in snapshot.files]
        with self._cursor(snapshot) as cursor:
            for name, extra in (tables or {}).items():
                cursor.register(name, extra)
            relation = cursor.sql(sql, params=params)
            assert relation is not None  # a SELECT always gives a relation
            table: pa.Table = relation.to_arrow_table()
            return table

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
        params: dict[str, object] = {
            "run_id": run_id,
            "key": key,
            "exact_limit": 2 * buckets,
            "buckets": buckets,
        }
        if x_min is not None:
            params["x_min"] = x_min
        if x_max is not None:
            params["x_max"] = x_max
        sql = _SERIES_SQL.format(points=_points_sql(snapshot, _point_filter(x_min, x_max)))
        table = self._query(snapshot, sql, params)
        bucketed = table.num_rows > 0 and bool(table.column("bucketed")[0].as_py())
        if not bucketed:
            exact = pa.table([table.column("step"), table.column("first")], names=["step", "value"])
            return Series(bucketed=False, table=exact.cast(_EXACT_SCHEMA))
        return Series(
            bucketed=True,
            table=table.select(["step", "min", "max", "first", "last", "mean", "count"]),
        )

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
