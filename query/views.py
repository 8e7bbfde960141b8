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
from steppe.ingest.sql_catalog import SqlCatalog
from steppe.ingest.sqlite_catalog import SqliteCatalog
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
#: Column order of the ``metrics`` view (the files' order is METRICS_SCHEMA's).
METRICS_COLUMNS = ("run_id", "key", "step", "value", "timestamp")
LATEST_METRICS_COLUMNS = ("run_id", "key", "value", "step", "timestamp", "min", "max", "count")

#: Internal names on a connection; user SQL cannot name them (steppe.query.sql checks).
_TAIL = "__steppe_tail"
_LATEST = "__steppe_latest"


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
    if not isinstance(catalog, SqlCatalog):
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
            "latest_metrics": snapshot.latest,
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
                self._cached = CatalogView(
                    version=version,
                    experiments=_experiments_table(self._catalog.list_experiments()),
                    runs=runs_table,
                    params=params,
                    tags=tags,
                    records={run.run_id: run for run in runs},
                    models=_model_tables(self._catalog),
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
    columns = ", ".join(f'"{name}"' for name in METRICS_COLUMNS)
    tail = conn.table(_TAIL)
    points = (
        conn.read_parquet([str(path) for path in snapshot.files]).union(tail)
        if snapshot.files
        else tail
    )
    points.select(columns).create_view("metrics")
    latest_columns = ", ".join(f'"{name}"' for name in LATEST_METRICS_COLUMNS)
    conn.table(_LATEST).select(latest_columns).create_view("latest_metrics")


def open_catalog_read_only(path: Path) -> Catalog:
    """The catalog file at ``path``, opened without any write (no server owns it)."""
    return SqliteCatalog(path, read_only=True)
