"""Cross-rank reads: what MLflow's routes (runs/get, search, get-history, bulk-interval) show
for a run that several ranks wrote. Read-only; it never writes the catalog or the data dir.

For a run whose writers have two or more ranks (a distributed job), a key logged by several
ranks reads, under its bare name, as the cross-rank mean per step (each rank's point at the
step, MLflow's latest rule, of the newest attempt that logged the step), and each rank's own
series as the extra key ``<key>/rank_<n>``. Every other run reads as it was logged.

    index = rank_index(catalog)
    if run_id in index.multi:
        sql, params, tables = history_source(snapshot, index, [run_id], "loss/rank_1")
"""

from __future__ import annotations

import functools
import re
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from steppe.ingest.catalog import Catalog
from steppe.ingest.layout import LATEST_SCHEMA, Snapshot
from steppe.query.reader import TAIL, MetricSummary, Reader

__all__ = [
    "RANK_KEY_RE",
    "WRITERS_TABLE",
    "RankIndex",
    "history_source",
    "index_of",
    "latest_metrics",
    "latest_table",
    "rank_index",
    "ranked_source",
    "split_key",
    "with_ranked_latest",
]

#: ``<key>/rank_<n>``: rank n's own series of a key in a multi-rank run.
RANK_KEY_RE = re.compile(r"(?P<key>.+)/rank_(?P<rank>\d{1,9})")
_WRITERS = "rank_writers"
#: The name ranked sources read writers (writer_id, rank, attempt) under.
WRITERS_TABLE = _WRITERS
_WRITERS_SCHEMA = pa.schema(
    [("writer_id", pa.int32()), ("rank", pa.int32()), ("attempt", pa.int32())]
)


@dataclass(frozen=True)
class RankIndex:
    """The runs written by several ranks (``multi``) and every writer's rank and attempt."""

    version: int
    multi: frozenset[str]
    writers: pa.Table
    #: run_id -> the ranks of its writers, sorted (runs with ranked writers only)
    ranks: Mapping[str, tuple[int, ...]] = field(default_factory=dict)


_cache_lock = threading.Lock()
_cache: dict[int, RankIndex] = {}


def rank_index(catalog: Catalog) -> RankIndex:
    """The index at the catalog's current version (rebuilt when it moves)."""
    version = catalog.version
    with _cache_lock:
        cached = _cache.get(id(catalog))
        if cached is not None and cached.version == version:
            return cached
    writers = pa.table(
        {
            "writer_id": [w.writer_id for w in catalog.list_writers()],
            "rank": [w.rank for w in catalog.list_writers()],
            "attempt": [w.attempt for w in catalog.list_writers()],
        },
        schema=_WRITERS_SCHEMA,
    )
    members = [(m.run_id, m.writer_id) for m in catalog.list_run_writers()]
    index = index_of(version, writers, members)
    with _cache_lock:
        if len(_cache) > 16:
            _cache.clear()
        _cache[id(catalog)] = index
    return index


def index_of(version: int, writers: pa.Table, members: Sequence[tuple[str, int]]) -> RankIndex:
    """The index of ``writers`` (writer_id, rank, attempt columns) and the (run_id,
    writer_id) pairs of runs and their writers."""
    ranks = dict(
        zip(
            writers.column("writer_id").to_pylist(), writers.column("rank").to_pylist(), strict=True
        )
    )
    by_run: dict[str, set[int]] = {}
    for run_id, writer_id in members:
        rank = ranks.get(writer_id)
        if rank is not None:
            by_run.setdefault(run_id, set()).add(rank)
    multi = frozenset(run_id for run_id, found in by_run.items() if len(found) > 1)
    table = writers.select(_WRITERS_SCHEMA.names).cast(_WRITERS_SCHEMA)
    return RankIndex(version, multi, table, {r: tuple(sorted(f)) for r, f in by_run.items()})


def split_key(key: str) -> tuple[str, int | None]:
    """("loss", 3) for "loss/rank_3"; (key, None) for a bare key."""
    match = RANK_KEY_RE.fullmatch(key)
    if match is None:
        return key, None
    return match.group("key"), int(match.group("rank"))


@functools.lru_cache(maxsize=65536)
def _has_writer(path: str) -> bool:
    # Files are immutable once committed, so a path's schema never changes.
    return "writer" in pq.read_schema(path).names


def _points(snapshot: Snapshot, where: str) -> str:
    """Points (run_id, key, step, timestamp, value, writer) matching ``where``, from the
    files (``$files``) and the tail; files written before writers existed give NULL."""
    columns = 'run_id, key, step, "timestamp", value'
    sources = []
    if snapshot.files:
        if any(_has_writer(str(path)) for path in snapshot.files):
            sources.append(
                f"SELECT {columns}, writer FROM read_parquet($files, union_by_name = true) "
                f"WHERE {where}"
            )
        else:
            sources.append(
                f"SELECT {columns}, NULL::INTEGER AS writer FROM read_parquet($files) WHERE {where}"
            )
    writer = "writer" if "writer" in snapshot.tail.column_names else "NULL::INTEGER AS writer"
    sources.append(f"SELECT {columns}, {writer} FROM {TAIL} WHERE {where}")
    return "\nUNION ALL\n".join(sources)


def _kept(snapshot: Snapshot, where: str) -> str:
    """CTEs ``kept`` (points with rank, of the newest attempt per run, key and step) and
    ``mean`` (per run, key and step: the mean of each rank's point there)."""
    return f"""
        pts AS (
            SELECT p.run_id, p.key, p.step, p."timestamp", p.value, w.rank,
                   coalesce(w.attempt, 0) AS attempt
            FROM ({_points(snapshot, where)}) p LEFT JOIN {_WRITERS} w ON p.writer = w.writer_id
        ),
        kept AS (
            SELECT * EXCLUDE (newest) FROM (
                SELECT *, max(attempt) OVER (PARTITION BY run_id, key, step) AS newest FROM pts
            ) WHERE attempt = newest
        ),
        per_rank AS (
            SELECT run_id, key, step, rank,
                   max({{'timestamp': "timestamp", 'value': value}}) AS pt
            FROM kept GROUP BY run_id, key, step, rank
        ),
        mean AS (
            SELECT run_id, key, step, max(pt."timestamp") AS "timestamp", avg(pt.value) AS value
            FROM per_rank GROUP BY run_id, key, step
        )
    """


def _run_list(run_ids: Sequence[str], params: dict[str, object]) -> str:
    marks = []
    for i, run_id in enumerate(run_ids):
        params[f"rr{i}"] = run_id
        marks.append(f"$rr{i}")
    return ", ".join(marks)


#: How the ``rank`` of a ranked source combines ranks at a step (each rank's point there).
ACROSS = {"mean": "avg(pt.value)", "min": "min(pt.value)", "max": "max(pt.value)"}


def ranked_source(
    snapshot: Snapshot, run_ids: Sequence[str], key: str, rank: int | str, prefix: str = "h"
) -> tuple[str, dict[str, object]]:
    """A SELECT of (run_id, step, timestamp, value) of ``key`` in these runs: one rank's
    points (``rank`` an int; newest attempt per step), or across ranks per step ("mean",
    "min", "max" of each rank's point there). Parameters are named with ``prefix``; register
    ``writers_table`` under WRITERS_TABLE (Reader.query)."""
    params: dict[str, object] = {f"{prefix}key": key}
    marks = []
    for i, run_id in enumerate(run_ids):
        params[f"{prefix}r{i}"] = run_id
        marks.append(f"${prefix}r{i}")
    where = f"key = ${prefix}key AND run_id IN ({', '.join(marks)})"
    if isinstance(rank, int):
        params[f"{prefix}rank"] = rank
        select = f'SELECT run_id, step, "timestamp", value FROM kept WHERE rank = ${prefix}rank'
    else:
        select = (
            f'SELECT run_id, step, max(pt."timestamp") AS "timestamp", {ACROSS[rank]} AS value '
            "FROM per_rank GROUP BY run_id, step"
        )
    return f"SELECT * FROM (WITH {_kept(snapshot, where)} {select})", params


def history_source(
    snapshot: Snapshot, index: RankIndex, run_ids: Sequence[str], key: str
) -> tuple[str, dict[str, object], dict[str, pa.Table]]:
    """A SELECT of (run_id, step, timestamp, value) for ``key`` of these multi-rank runs as
    MLflow reads them (the mean for a bare key, one rank's points for ``<key>/rank_<n>``),
    its parameters and the tables to register (Reader.query)."""
    base, rank = split_key(key)
    sql, params = ranked_source(snapshot, run_ids, base, "mean" if rank is None else rank)
    return sql, params, {_WRITERS: index.writers}


def latest_table(
    reader: Reader, snapshot: Snapshot, index: RankIndex, run_ids: Sequence[str]
) -> pa.Table:
    """LATEST_SCHEMA rows of these multi-rank runs as MLflow reads them: per bare key the
    latest of its mean series, per rank its ``<key>/rank_<n>`` (MLflow's latest rule)."""
    if not run_ids:
        return LATEST_SCHEMA.empty_table()
    params: dict[str, object] = {}
    where = f"run_id IN ({_run_list(run_ids, params)})"
    summary = """max({'step': step, 'timestamp': "timestamp", 'value': value}) AS latest,
                 min(value) FILTER (WHERE NOT isnan(value)) AS "min",
                 max(value) FILTER (WHERE NOT isnan(value)) AS "max", count(*) AS "count" """
    sql = f"""
        WITH {_kept(snapshot, where)},
        rows AS (
            SELECT run_id, key, {summary} FROM mean GROUP BY run_id, key
            UNION ALL
            SELECT run_id, key || '/rank_' || CAST(rank AS VARCHAR) AS key, {summary}
            FROM kept WHERE rank IS NOT NULL GROUP BY run_id, key, rank
        )
        SELECT run_id, key, latest.value AS value, latest.step AS step,
               latest."timestamp" AS "timestamp", "min", "max", "count"
        FROM rows ORDER BY run_id, key
    """
    table = reader.query(snapshot, sql, params, {_WRITERS: index.writers})
    return table.cast(LATEST_SCHEMA)


def latest_metrics(
    reader: Reader, snapshot: Snapshot, index: RankIndex, run_ids: Sequence[str]
) -> dict[str, dict[str, MetricSummary]]:
    """run_id -> key -> summary for the multi-rank runs among ``run_ids`` (the others are
    absent: read them from the snapshot's latest as usual)."""
    multi = [run_id for run_id in run_ids if run_id in index.multi]
    out: dict[str, dict[str, MetricSummary]] = {}
    for row in latest_table(reader, snapshot, index, multi).to_pylist():
        out.setdefault(row["run_id"], {})[row["key"]] = MetricSummary(
            value=row["value"],
            step=row["step"],
            timestamp=row["timestamp"],
            min=row["min"],
            max=row["max"],
            count=row["count"],
        )
    return out


def with_ranked_latest(
    reader: Reader, snapshot: Snapshot, index: RankIndex, latest: pa.Table
) -> pa.Table:
    """``latest`` (a snapshot's LATEST_SCHEMA summary) with every multi-rank run's rows
    replaced by their MLflow reading (for search filters and order_by)."""
    if not index.multi:
        return latest
    multi = sorted(index.multi)
    keep = pc.invert(pc.is_in(latest.column("run_id"), value_set=pa.array(multi, pa.string())))
    return pa.concat_tables([latest.filter(keep), latest_table(reader, snapshot, index, multi)])
