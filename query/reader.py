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
from typing import Literal, TypedDict

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from steppe.ingest.layout import LATEST_SCHEMA, METRICS_SCHEMA, DataDir, Snapshot
from steppe.query.tier_files import TierIndex

__all__ = [
    "NO_POINTS",
    "TAIL",
    "Bounds",
    "DirectorySnapshot",
    "MetricSummary",
    "Reader",
    "Window",
    "deadline",
    "points_sql",
    "window_sql",
]

#: The tail is registered under this name on each query's own cursor.
TAIL = "tail"

_HISTORY_SCHEMA = pa.schema(
    [("step", pa.int64()), ("value", pa.float64()), ("timestamp", pa.int64())]
)
_BOUNDS_CACHE_SIZE = 8192


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


# The points of a snapshot, filtered inside each source so DuckDB pushes the run_id, key and
# window predicates into the Parquet scan (row-group statistics prune) and the Arrow scan.
# An empty tail is left out (no UNION ALL branch to plan and run). The one builder of
# steppe's points SQL: every query over metrics (series, history, MLflow's routes) uses it.
def points_sql(snapshot: Snapshot, where: str, columns: str = 'step, "timestamp", value') -> str:
    """``SELECT columns`` of the points matching ``where``, from the files (bound as
    ``$files`` by ``Reader.query``) and the tail (registered as ``tail``)."""
    sources = []
    if snapshot.files:
        sources.append(f"SELECT {columns} FROM read_parquet($files) WHERE {where}")
    if snapshot.tail.num_rows or not sources:
        sources.append(f"SELECT {columns} FROM {TAIL} WHERE {where}")
    return "\nUNION ALL\n".join(sources)


# Count and step/timestamp ranges per series of the points in a window: they decide exact or
# bucketed, and fix the bucket grid, before the one scan that groups.
_BOUNDS_SQL = """
SELECT run_id, key, count(*) AS n, min(step) AS step_lo, max(step) AS step_hi,
       min("timestamp") AS t_lo, max("timestamp") AS t_hi
FROM ({points})
GROUP BY run_id, key
"""

_STARTS_SQL = 'SELECT run_id, min("timestamp") AS t0 FROM ({points}) GROUP BY run_id'


@dataclass(frozen=True)
class Bounds:
    """Count and ranges of one series' points in a window (all 0 when there are none)."""

    n: int
    step_lo: int
    step_hi: int
    t_lo: int
    t_hi: int

    def merge(self, other: Bounds) -> Bounds:
        if not other.n:
            return self
        if not self.n:
            return other
        return Bounds(
            self.n + other.n,
            min(self.step_lo, other.step_lo),
            max(self.step_hi, other.step_hi),
            min(self.t_lo, other.t_lo),
            max(self.t_hi, other.t_hi),
        )


NO_POINTS = Bounds(0, 0, 0, 0, 0)

#: A window on one column of the points: (column, lowest, highest), inclusive, None = open.
Window = tuple[Literal["step", "timestamp"], int | None, int | None]


def window_sql(window: Window, params: dict[str, object], prefix: str) -> str:
    """`` AND column >= $lo AND column <= $hi`` for the window's closed ends (binds them)."""
    column, lo, hi = window
    sql = ""
    if lo is not None:
        params[f"{prefix}lo"] = lo
        sql += f' AND "{column}" >= ${prefix}lo'
    if hi is not None:
        params[f"{prefix}hi"] = hi
        sql += f' AND "{column}" <= ${prefix}hi'
    return sql


def _in_list(prefix: str, values: Sequence[str], params: dict[str, object]) -> str:
    names = []
    for index, value in enumerate(values):
        params[f"{prefix}{index}"] = value
        names.append(f"${prefix}{index}")
    return ", ".join(names)


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
        # (files, run_id, key, window) -> Bounds of those files' points of that series in
        # that window, and (files, run_id, "t0") -> the run's first timestamp in them.
        self._bounds_cache: dict[tuple[object, ...], Bounds] = {}
        #: Which series of each metrics file have trusted pre-aggregated tiers.
        self.tiers = TierIndex()

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
            cursor.register(TAIL, snapshot.tail)
            yield cursor
        finally:
            cursor.close()

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
        points = points_sql(snapshot, "run_id = $run_id AND key = $key")
        sql = f'SELECT step, value, "timestamp" FROM ({points}) ORDER BY step, "timestamp"'
        table = self.query(snapshot, sql, {"run_id": run_id, "key": key})
        return table.cast(_HISTORY_SCHEMA)

    def series_bounds(
        self, snapshot: Snapshot, series: Sequence[tuple[str, str]], window: Window
    ) -> list[Bounds]:
        """``Bounds`` of each (run_id, key) over the points in ``window``. The files' part is
        cached (they are immutable, so a snapshot's file list names their content) and
        computed for every uncached series in one query; the tail's is computed each time."""
        idents = [(snapshot.files, run_id, key, window) for run_id, key in series]
        with self._lock:
            found = {i: self._bounds_cache.get(i) for i in idents}
        missing = [ident[1:3] for ident, got in found.items() if got is None]
        if missing:
            files_only = Snapshot(snapshot.files, snapshot.tail.slice(0, 0), snapshot.latest)
            computed = self._bounds_query(files_only, missing, window) if snapshot.files else {}
            with self._lock:
                for run_id, key in missing:
                    ident = (snapshot.files, run_id, key, window)
                    found[ident] = self._cache(ident, computed.get((run_id, key), NO_POINTS))
        out = [found[ident] or NO_POINTS for ident in idents]
        if not snapshot.tail.num_rows:
            return out
        tail_only = Snapshot((), snapshot.tail, snapshot.latest)
        tail = self._bounds_query(tail_only, series, window)
        return [b.merge(tail.get(s, NO_POINTS)) for b, s in zip(out, series, strict=True)]

    def run_starts(self, snapshot: Snapshot, run_ids: Sequence[str]) -> dict[str, int]:
        """The first timestamp of each run (any key); runs without points are absent.
        Cached for the files like ``series_bounds``."""
        idents = [(snapshot.files, run_id, "t0") for run_id in run_ids]
        with self._lock:
            found = {i: self._bounds_cache.get(i) for i in idents}
        missing = [ident[1] for ident, got in found.items() if got is None]
        if missing and snapshot.files:
            files_only = Snapshot(snapshot.files, snapshot.tail.slice(0, 0), snapshot.latest)
            computed = self._starts_query(files_only, missing)
        else:
            computed = {}
        with self._lock:
            for run_id in missing:
                t0 = computed.get(run_id)
                bounds = NO_POINTS if t0 is None else Bounds(1, 0, 0, t0, t0)
                found[(snapshot.files, run_id, "t0")] = self._cache(
                    (snapshot.files, run_id, "t0"), bounds
                )
        starts = {i[1]: b.t_lo for i, b in found.items() if b is not None and b.n}
        if snapshot.tail.num_rows:
            tail_only = Snapshot((), snapshot.tail, snapshot.latest)
            for run_id, t0 in self._starts_query(tail_only, list(run_ids)).items():
                starts[run_id] = min(starts.get(run_id, t0), t0)
        return starts

    def _cache(self, ident: tuple[object, ...], bounds: Bounds) -> Bounds:
        # Called with self._lock held. Oldest entry dropped first.
        if len(self._bounds_cache) >= _BOUNDS_CACHE_SIZE:
            self._bounds_cache.pop(next(iter(self._bounds_cache)))
        self._bounds_cache[ident] = bounds
        return bounds

    def _bounds_query(
        self, snapshot: Snapshot, series: Sequence[tuple[str, str]], window: Window
    ) -> dict[tuple[str, str], Bounds]:
        params: dict[str, object] = {}
        runs = _in_list("r", sorted({run_id for run_id, _ in series}), params)
        keys = _in_list("k", sorted({key for _, key in series}), params)
        where = f"run_id IN ({runs}) AND key IN ({keys})" + window_sql(window, params, "w")
        columns = 'run_id, key, step, "timestamp"'
        sql = _BOUNDS_SQL.format(points=points_sql(snapshot, where, columns))
        return {
            (row["run_id"], row["key"]): Bounds(
                row["n"], row["step_lo"], row["step_hi"], row["t_lo"], row["t_hi"]
            )
            for row in self.query(snapshot, sql, params).to_pylist()
        }

    def _starts_query(self, snapshot: Snapshot, run_ids: Sequence[str]) -> dict[str, int]:
        params: dict[str, object] = {}
        where = f"run_id IN ({_in_list('r', sorted(set(run_ids)), params)})"
        sql = _STARTS_SQL.format(points=points_sql(snapshot, where, 'run_id, "timestamp"'))
        return {row["run_id"]: row["t0"] for row in self.query(snapshot, sql, params).to_pylist()}

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
