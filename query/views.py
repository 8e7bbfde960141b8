"""The public SQL schema: the catalog as Arrow tables and the views over one snapshot.

``experiments``, ``runs``, ``params`` and ``tags`` come from the catalog (rebuilt only when
``catalog.version`` moves); ``metrics`` and ``latest_metrics`` from a ``Snapshot``. Read-only:
nothing here writes to the catalog or the data dir.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import pyarrow as pa

from steppe.errors import InvalidParameterValue
from steppe.ingest.catalog import Catalog, ExperimentRecord, RunRecord
from steppe.ingest.layout import Snapshot
from steppe.ingest.models_catalog import ModelRepository
from steppe.ingest.sqlite_catalog import SqliteCatalog
from steppe.query import ranks
from steppe.query.reader import Reader
from steppe.query.search import (
    RunGrouping,
    RunSearch,
    compile_count,
    compile_groups,
    compile_search,
)

__all__ = [
    "EXPERIMENTS_SCHEMA",
    "LATEST_METRICS_COLUMNS",
    "METRICS_COLUMNS",
    "PARAMS_SCHEMA",
    "PUBLIC_VIEWS",
    "RUNS_SCHEMA",
    "TAGS_SCHEMA",
    "CatalogTables",
    "CatalogView",
    "count_matching_runs",
    "experiment_keys",
    "group_matching_runs",
    "open_catalog_read_only",
    "register_views",
]

#: The views user SQL may read, in the order README.md documents them.
PUBLIC_VIEWS = (
    "experiments",
    "runs",
    "params",
    "tags",
    "metrics",
    "latest_metrics",
    "writers",
    "metrics_by_step",
    "logged_models",
    "registered_models",
    "model_versions",
)

#: Times are milliseconds since the Unix epoch, as everywhere in steppe (``epoch_ms(t)`` in SQL
#: turns one into a TIMESTAMP).
EXPERIMENTS_SCHEMA = pa.schema(
    [
        ("experiment_id", pa.string()),
        ("name", pa.string()),
        ("artifact_location", pa.string()),
        ("lifecycle_stage", pa.string()),
        ("creation_time", pa.int64()),
        ("last_update_time", pa.int64()),
    ]
)
RUNS_SCHEMA = pa.schema(
    [
        ("run_id", pa.string()),
        ("experiment_id", pa.string()),
        ("run_name", pa.string()),
        ("status", pa.string()),
        ("start_time", pa.int64()),
        ("end_time", pa.int64()),
        ("lifecycle_stage", pa.string()),
        ("artifact_uri", pa.string()),
        ("user_id", pa.string()),
    ]
)
PARAMS_SCHEMA = pa.schema([("run_id", pa.string()), ("key", pa.string()), ("value", pa.string())])
TAGS_SCHEMA = PARAMS_SCHEMA
#: Column order of the ``metrics`` view (the files' order is STORED_METRICS_SCHEMA's): a point,
#: then its writer's rank (NULL for a single-process run), host and attempt.
METRICS_COLUMNS = ("run_id", "key", "step", "value", "timestamp", "rank", "host", "attempt")
#: The writers as the catalog keeps them (one row per client process), joined to the points
#: by their ``writer`` column; internal (user SQL reads the ``writers`` view).
WRITERS_SCHEMA = pa.schema(
    [
        ("writer_id", pa.int32()),
        ("rank", pa.int32()),
        ("local_rank", pa.int32()),
        ("world_size", pa.int32()),
        ("node_rank", pa.int32()),
        ("host", pa.string()),
        ("pid", pa.int64()),
        ("attempt", pa.int32()),
        ("launcher", pa.string()),
        ("opened", pa.int64()),
    ]
)
RUN_WRITERS_SCHEMA = pa.schema(
    [
        ("run_id", pa.string()),
        ("writer_id", pa.int32()),
        ("status", pa.string()),
        ("joined", pa.int64()),
        ("ended", pa.int64()),
        ("last_seen", pa.int64()),
    ]
)
LATEST_METRICS_COLUMNS = ("run_id", "key", "value", "step", "timestamp", "min", "max", "count")

#: Internal names on a connection; user SQL cannot name them (steppe.query.sql checks).
_TAIL = "__steppe_tail"
_LATEST = "__steppe_latest"
_POINTS = "__steppe_points"
_WRITERS = "__steppe_writers"
_RUN_WRITERS = "__steppe_run_writers"

_METRICS_SQL = f"""
CREATE VIEW metrics AS
SELECT p.run_id, p.key, p.step, p.value, p."timestamp", w.rank, w.host, w.attempt
FROM {_POINTS} p LEFT JOIN {_WRITERS} w ON p.writer = w.writer_id
"""

# One row per run and writer: the catalog's membership (joined by start_run, its status) and
# what its points say (last step, newest point). Writers that logged to a run they never
# joined (Client().log_metric) have a NULL status.
_WRITERS_VIEW_SQL = f"""
CREATE VIEW writers AS
WITH logged AS (
    SELECT run_id, writer AS writer_id, max(step) AS last_step,
           max("timestamp") AS last_logged, count(*) AS points
    FROM {_POINTS} WHERE writer IS NOT NULL GROUP BY run_id, writer
)
SELECT coalesce(m.run_id, l.run_id) AS run_id, w.writer_id AS writer, w.rank, w.local_rank,
       w.world_size, w.node_rank, w.host, w.pid, w.attempt, w.launcher, m.status,
       coalesce(m.joined, w.opened) AS opened,
       greatest(m.last_seen, l.last_logged) AS last_seen, m.ended,
       l.last_step, l.last_logged, coalesce(l.points, 0) AS points
FROM {_RUN_WRITERS} m
FULL OUTER JOIN logged l ON m.run_id = l.run_id AND m.writer_id = l.writer_id
JOIN {_WRITERS} w ON w.writer_id = coalesce(m.writer_id, l.writer_id)
"""

# Per run, key and step, across its writers: each writer's point there (its latest, MLflow's
# rule), of the newest attempt that logged the step (an elastic restart's re-logged steps
# replace the earlier attempt's). Population std; NaN propagates to mean and std.
_METRICS_BY_STEP_SQL = """
CREATE VIEW metrics_by_step AS
WITH per_writer AS (
    SELECT run_id, key, step, any_value(rank) AS rank, coalesce(any_value(attempt), 0) AS attempt,
           arg_max(value, {'t': "timestamp", 'v': value}) AS value, max("timestamp") AS "timestamp"
    FROM metrics GROUP BY run_id, key, step, rank, host, attempt
), ranked AS (
    SELECT *, max(attempt) OVER (PARTITION BY run_id, key, step) AS newest FROM per_writer
)
SELECT run_id, key, step, count(*) AS n_ranks, avg(value) AS mean, min(value) AS "min",
       max(value) AS "max", stddev_pop(value) AS std, arg_min(rank, value) AS rank_of_min,
       arg_max(rank, value) AS rank_of_max,
       max("timestamp") - min("timestamp") AS timestamp_skew_ms, max(attempt) AS attempt
FROM ranked WHERE attempt = newest
GROUP BY run_id, key, step
"""


@dataclass(frozen=True)
class CatalogView:
    """The catalog at one version: Arrow tables for SQL and the records they came from."""

    version: int
    experiments: pa.Table
    runs: pa.Table
    params: pa.Table
    tags: pa.Table
    records: Mapping[str, RunRecord]
    #: logged_models, registered_models, model_versions (steppe.ingest.models_catalog)
    models: Mapping[str, pa.Table] = field(default_factory=lambda: _model_tables(None))
    #: writers (WRITERS_SCHEMA) and their part in runs (RUN_WRITERS_SCHEMA)
    writers: pa.Table = field(default_factory=WRITERS_SCHEMA.empty_table)
    run_writers: pa.Table = field(default_factory=RUN_WRITERS_SCHEMA.empty_table)

    @classmethod
    def empty(cls) -> CatalogView:
        """No experiments and no runs (a data dir without a catalog file yet)."""
        return cls(
            version=-1,
            experiments=EXPERIMENTS_SCHEMA.empty_table(),
            runs=RUNS_SCHEMA.empty_table(),
            params=PARAMS_SCHEMA.empty_table(),
            tags=TAGS_SCHEMA.empty_table(),
            records={},
        )

    def rank_index(self) -> ranks.RankIndex:
        """Which runs several ranks wrote (steppe.query.ranks), from this view's tables."""
        members = zip(
            self.run_writers.column("run_id").to_pylist(),
            self.run_writers.column("writer_id").to_pylist(),
            strict=True,
        )
        return ranks.index_of(self.version, self.writers, list(members))

    def tables(self) -> dict[str, pa.Table]:
        return {
            "experiments": self.experiments,
            "runs": self.runs,
            "params": self.params,
            "tags": self.tags,
            **self.models,
        }


_INT = pa.int64()
_STR = pa.string()
MODEL_SCHEMAS = {
    "logged_models": pa.schema(
        [(n, _STR) for n in ("model_id", "experiment_id", "name", "status", "model_type")]
        + [("source_run_id", _STR), ("artifact_uri", _STR)]
        + [("creation_time", _INT), ("last_update_time", _INT)]
    ),
    "registered_models": pa.schema(
        [("name", _STR), ("description", _STR), ("creation_time", _INT), ("last_update_time", _INT)]
    ),
    "model_versions": pa.schema(
        [("name", _STR), ("version", _INT)]
        + [(n, _STR) for n in ("source", "run_id", "model_id", "current_stage", "status")]
        + [("creation_time", _INT), ("last_update_time", _INT)]
    ),
}


def _rows(schema: pa.Schema, records: Sequence[object]) -> pa.Table:
    return pa.table(
        {name: [getattr(r, name) for r in records] for name in schema.names}, schema=schema
    )


def _model_tables(catalog: Catalog | None) -> dict[str, pa.Table]:
    """The models part of the catalog (empty for a catalog that keeps none)."""
    if not isinstance(catalog, SqliteCatalog):
        return {name: schema.empty_table() for name, schema in MODEL_SCHEMAS.items()}
    repository = catalog.models
    experiment_ids = [e.experiment_id for e in catalog.list_experiments()]
    try:
        return _model_rows(repository, experiment_ids)
    except sqlite3.OperationalError:  # a read-only catalog file older than the models tables
        return _model_tables(None)


def _model_rows(repository: ModelRepository, experiment_ids: list[str]) -> dict[str, pa.Table]:
    return {
        "logged_models": _rows(
            MODEL_SCHEMAS["logged_models"], repository.list_logged_models(experiment_ids)
        ),
        "registered_models": _rows(
            MODEL_SCHEMAS["registered_models"], repository.list_registered_models()
        ),
        "model_versions": _rows(MODEL_SCHEMAS["model_versions"], repository.list_model_versions()),
    }


def _writer_tables(catalog: Catalog) -> tuple[pa.Table, pa.Table]:
    try:
        writers = catalog.list_writers()
        members = catalog.list_run_writers()
    except sqlite3.OperationalError:  # a read-only catalog file older than the writers tables
        return WRITERS_SCHEMA.empty_table(), RUN_WRITERS_SCHEMA.empty_table()
    writer_rows = {
        "writer_id": [w.writer_id for w in writers],
        "rank": [w.rank for w in writers],
        "local_rank": [w.local_rank for w in writers],
        "world_size": [w.world_size for w in writers],
        "node_rank": [w.node_rank for w in writers],
        "host": [w.host for w in writers],
        "pid": [w.pid for w in writers],
        "attempt": [w.attempt for w in writers],
        "launcher": [w.launcher for w in writers],
        "opened": [w.opened_ms for w in writers],
    }
    member_rows = {
        "run_id": [m.run_id for m in members],
        "writer_id": [m.writer_id for m in members],
        "status": [m.status for m in members],
        "joined": [m.opened_ms for m in members],
        "ended": [m.ended_ms for m in members],
        "last_seen": [m.last_seen_ms for m in members],
    }
    return (
        pa.table(writer_rows, schema=WRITERS_SCHEMA),
        pa.table(member_rows, schema=RUN_WRITERS_SCHEMA),
    )


def _experiments_table(experiments: list[ExperimentRecord]) -> pa.Table:
    return pa.Table.from_pylist(
        [
            {
                "experiment_id": e.experiment_id,
                "name": e.name,
                "artifact_location": e.artifact_location,
                "lifecycle_stage": e.lifecycle_stage,
                "creation_time": e.creation_time,
                "last_update_time": e.last_update_time,
            }
            for e in experiments
        ],
        schema=EXPERIMENTS_SCHEMA,
    )


def _runs_tables(runs: list[RunRecord]) -> tuple[pa.Table, pa.Table, pa.Table]:
    columns: dict[str, list[object]] = {name: [] for name in RUNS_SCHEMA.names}
    for run in runs:
        for name in RUNS_SCHEMA.names:
            columns[name].append(getattr(run, name))
    runs_table = pa.table(columns, schema=RUNS_SCHEMA)

    def pairs(field: str) -> pa.Table:
        rows = [
            (run.run_id, key, value)
            for run in runs
            for key, value in sorted(getattr(run, field).items())
        ]
        return pa.table(
            [pa.array([r[i] for r in rows], pa.string()) for i in range(3)],
            schema=PARAMS_SCHEMA,
        )

    return runs_table, pairs("params"), pairs("tags")


def matching_run_ids(
    reader: Reader,
    snapshot: Snapshot,
    view: CatalogView,
    search: RunSearch,
    *,
    time_limit_s: float | None = None,
) -> list[str]:
    """Run ids that ``search`` selects, in its order: the one place both HTTP APIs
    (steppe's and MLflow's runs/search) run the compiled filter over these views. Past
    ``time_limit_s`` (user SQL's limit) the search stops with InvalidParameterValue."""
    sql, params = compile_search(search)
    try:
        found = _search(reader, snapshot, view, sql, params, time_limit_s)
    except TimeoutError as exc:
        raise InvalidParameterValue(
            "filter", "<the filter>", f"the search {exc}: narrow the filter or the experiments"
        ) from None
    run_ids: list[str] = found.column("run_id").to_pylist()
    return run_ids


def count_matching_runs(
    reader: Reader,
    snapshot: Snapshot,
    view: CatalogView,
    search: RunSearch,
    *,
    time_limit_s: float | None = None,
) -> int:
    """How many runs ``search`` selects, all pages together (the runs table's "12 of 3,400")."""
    sql, params = compile_count(search)
    found = _timed(reader, snapshot, view, sql, params, time_limit_s)
    n: int = found.column("n")[0].as_py()
    return n


def group_matching_runs(
    reader: Reader,
    snapshot: Snapshot,
    view: CatalogView,
    search: RunSearch,
    grouping: RunGrouping,
    *,
    time_limit_s: float | None = None,
) -> tuple[list[dict[str, object]], bool]:
    """The groups of the runs ``search`` selects (``RunGrouping``), and whether there were
    more than ``grouping.limit``: [{"value", "count", "metrics": {key: {count, mean, std,
    min, max}}}], ordered by value with the runs that lack it last."""
    sql, params = compile_groups(search, grouping)
    rows = _timed(reader, snapshot, view, sql, params, time_limit_s).to_pylist()
    groups: list[dict[str, object]] = []
    for row in rows[: grouping.limit]:
        metrics = {
            metric.key: {
                stat: row[f"{stat}_{index}"] for stat in ("count", "mean", "std", "min", "max")
            }
            for index, metric in enumerate(grouping.metrics)
        }
        groups.append({"value": row["value"], "count": row["runs"], "metrics": metrics})
    return groups, len(rows) > grouping.limit


def experiment_keys(
    view: CatalogView, latest: pa.Table, experiment_id: str
) -> dict[str, list[str]]:
    """Every param key, user tag key (not ``mlflow.*``) and metric key of an experiment's runs,
    each sorted: the runs table's column chooser. Arrow compute over the cached view."""
    import pyarrow.compute as pc

    runs = view.runs.filter(pc.equal(view.runs["experiment_id"], experiment_id))["run_id"]

    def keys(table: pa.Table) -> list[str]:
        if table.num_rows == 0 or len(runs) == 0:
            return []
        chosen = table.filter(pc.is_in(table["run_id"], value_set=runs))
        found: list[str] = pc.unique(chosen["key"]).to_pylist()
        return sorted(found)

    tags = [k for k in keys(view.tags) if not k.startswith("mlflow.")]
    return {"params": keys(view.params), "tags": tags, "metrics": keys(latest)}


def _timed(
    reader: Reader,
    snapshot: Snapshot,
    view: CatalogView,
    sql: str,
    params: dict[str, object],
    time_limit_s: float | None,
) -> pa.Table:
    try:
        return _search(reader, snapshot, view, sql, params, time_limit_s)
    except TimeoutError as exc:
        raise InvalidParameterValue(
            "filter", "<the filter>", f"the search {exc}: narrow the filter or the experiments"
        ) from None


def _search(
    reader: Reader,
    snapshot: Snapshot,
    view: CatalogView,
    sql: str,
    params: dict[str, object],
    time_limit_s: float | None,
) -> pa.Table:
    return reader.query(
        snapshot,
        sql,
        params,
        {
            "runs": view.runs,
            "params": view.params,
            "tags": view.tags,
            # Runs several ranks wrote filter and sort on what MLflow reads of them.
            "latest_metrics": ranks.with_ranked_latest(
                reader, snapshot, view.rank_index(), snapshot.latest
            ),
        },
        time_limit_s=time_limit_s,
    )


class CatalogTables:
    """The catalog as Arrow tables, rebuilt when ``catalog.version`` changes.

    Thread-safe; callers share one per catalog:

        tables = CatalogTables(catalog)
        view = tables.current()
        view.runs.num_rows
    """

    def __init__(self, catalog: Catalog) -> None:
        self._catalog = catalog
        self._lock = threading.Lock()
        self._cached: CatalogView | None = None

    def current(self) -> CatalogView:
        with self._lock:
            # Read the version first: a write racing the rebuild leaves a stale version on
            # newer data, so the next call rebuilds again; never the other way round.
            version = self._catalog.version
            if self._cached is None or self._cached.version != version:
                runs = self._catalog.list_runs()
                runs_table, params, tags = _runs_tables(runs)
                writers, run_writers = _writer_tables(self._catalog)
                self._cached = CatalogView(
                    version=version,
                    experiments=_experiments_table(self._catalog.list_experiments()),
                    runs=runs_table,
                    params=params,
                    tags=tags,
                    records={run.run_id: run for run in runs},
                    models=_model_tables(self._catalog),
                    writers=writers,
                    run_writers=run_writers,
                )
            return self._cached


def register_views(
    conn: duckdb.DuckDBPyConnection, snapshot: Snapshot, catalog: CatalogView
) -> None:
    """Create the public views on ``conn`` (a fresh database of its own: the views are
    database-wide). ``metrics`` reads the snapshot's files (read_parquet of the explicit
    list, never a glob) UNION ALL its in-memory tail."""
    for name, table in catalog.tables().items():
        conn.register(name, table)
    conn.register(_TAIL, snapshot.tail)
    conn.register(_LATEST, snapshot.latest)
    conn.register(_WRITERS, catalog.writers)
    conn.register(_RUN_WRITERS, catalog.run_writers)
    points = _with_writer(conn.table(_TAIL))
    if snapshot.files:
        files = conn.read_parquet([str(path) for path in snapshot.files], union_by_name=True)
        points = _with_writer(files).union(points)
    points.create_view(_POINTS)
    conn.execute(_METRICS_SQL)
    conn.execute(_WRITERS_VIEW_SQL)
    conn.execute(_METRICS_BY_STEP_SQL)
    latest_columns = ", ".join(f'"{name}"' for name in LATEST_METRICS_COLUMNS)
    conn.table(_LATEST).select(latest_columns).create_view("latest_metrics")


def _with_writer(points: duckdb.DuckDBPyRelation) -> duckdb.DuckDBPyRelation:
    """The point columns and ``writer`` (NULL where the source predates writers)."""
    writer = "writer" if "writer" in points.columns else "CAST(NULL AS INTEGER) AS writer"
    return points.select(f'run_id, key, step, "timestamp", value, {writer}')


def open_catalog_read_only(path: Path) -> Catalog:
    """The catalog file at ``path``, opened without any write (no server owns it)."""
    return SqliteCatalog(path, read_only=True)
