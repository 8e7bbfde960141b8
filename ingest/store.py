"""MetricStore: the acked tail in memory, Parquet flushes, the per-series latest summary, recovery.

Owns the WAL and the metrics files of one data dir and runs on the server's event loop; Parquet
writing, fsyncs and recovery reads run in worker threads. It does not validate input or speak gRPC.
Points stay dictionary-encoded (wire.DICT_METRICS_SCHEMA) from decode to Parquet: series are
sorted and grouped by integer codes, never by comparing strings per point.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import time
from collections import deque
from collections.abc import Callable, Container, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from steppe import stream_ids
from steppe.errors import InvalidParameterValue
from steppe.ingest import wire
from steppe.ingest.catalog import Catalog
from steppe.ingest.layout import (
    LATEST_SCHEMA,
    METRICS_FILE_RE,
    METRICS_SCHEMA,
    DataDir,
    Snapshot,
    metrics_file_name,
)
from steppe.ingest.wal import (
    Position,
    WalFailed,
    WriteAheadLog,
    fsync_dir,
    list_segments,
    read_segment,
)

__all__ = [
    "DEFAULT_STREAM_RETENTION_S",
    "LATEST_SEGMENT_KEY",
    "MAX_SEQ",
    "MAX_TAIL_BYTES",
    "RESERVED_STREAM_PREFIX",
    "TAIL_SCHEMA",
    "MetricStore",
    "Part",
    "StoreClosed",
    "as_dictionary_table",
    "fold_latest",
    "points_as_latest",
    "read_latest_file",
    "read_metrics_file",
    "read_metrics_file_encoded",
    "sort_metrics",
    "summarize_points",
    "write_latest_file",
    "write_metrics_file",
]

logger = logging.getLogger("steppe.ingest.store")

#: The highest seq a stream may use: watermarks are stored as SQLite (signed 64-bit) INTEGERs.
MAX_SEQ = 2**63 - 1
#: Stream ids with this prefix belong to the server; a client batch on one is refused.
RESERVED_STREAM_PREFIX = "steppe-server-"
#: The server's own streams count from 1 and could not reach this in millennia: a higher
#: seq on one came from a client of an older steppe (which did not refuse them).
_MAX_RESERVED_SEQ = 2**62
#: How long the watermark of an idle stream is kept (see MetricStore.expire_streams).
DEFAULT_STREAM_RETENTION_S = 7 * 86_400.0
#: After a restart, every stream keeps its watermark at least this long (or the retention,
#: if shorter), however long the server was down: its clients reconnect within seconds.
_RESTART_GRACE_S = 3600.0
#: Key-value metadata of latest.parquet: the last WAL segment the summary covers.
LATEST_SEGMENT_KEY = b"steppe.last_segment"
#: Rows per Parquet row group: big enough for good compression and few footers, small
#: enough that DuckDB parallelises over a 1M-row flush and prunes by run_id/key statistics.
ROW_GROUP_ROWS = 256 * 1024
#: Rows per data page. BYTE_STREAM_SPLIT puts each byte of the values in its own stream; at
#: the writer's default (20,000 rows) a zstd block mixes the random low bytes with the
#: compressible sign/exponent bytes, so noisy float curves cost ~7.06 bytes/value instead
#: of ~6.92 at 128k rows (measured on benchmarks/throughput.py's curves).
PAGE_ROWS = 128 * 1024
#: In-memory schema of tail chunks and of sorted flush output (see wire.DICT_METRICS_SCHEMA).
TAIL_SCHEMA = wire.DICT_METRICS_SCHEMA
#: A row group's dictionary page holds the whole Arrow dictionary it is given; above this
#: many entries the writer gets only the entries that row group uses.
_COMPACT_DICTIONARY_ABOVE = 1024
#: Default byte bound on the tail plus in-flight batches (see MetricStore). Points cost about
#: 32 bytes in the tail (dictionary-encoded) and 64 in flight (table + WAL payload); a
#: flush briefly holds a sorted copy of what it writes on top.
MAX_TAIL_BYTES = 192 << 20
#: Unfolded latest summaries (rows) kept before folding them into the running summary, which
#: otherwise waits for a snapshot or for them to outnumber its own rows.
_FOLD_AFTER_ROWS = 4096
#: Batches whose dictionaries allow at most this many series are summarised slice by slice
#: after a sort by series; larger ones by a hash group-by.
_FEW_SERIES = 64
#: Per-batch series lookup tables are dense (one entry per run x key pair) up to this size.
_DENSE_SERIES_LIMIT = 4096
_PARQUET_OPTIONS: dict[str, object] = {
    "compression": "zstd",
    "compression_level": 3,
    "use_dictionary": ["run_id", "key"],
    "column_encoding": {
        "step": "DELTA_BINARY_PACKED",
        "timestamp": "DELTA_BINARY_PACKED",
        "value": "BYTE_STREAM_SPLIT",
    },
    "write_statistics": True,
    "sorting_columns": [pq.SortingColumn(i) for i in range(4)],
    "max_rows_per_page": PAGE_ROWS,
    "data_page_size": 16 << 20,
    # Plain Parquet strings on read (no Arrow schema saying "dictionary"): pandas, DuckDB
    # and pyarrow see the same types as for a file written from string columns.
    "store_schema": False,
}


def _now_ms() -> int:
    return int(time.time() * 1000)


class StoreClosed(RuntimeError):
    """The store is not open (not yet opened, or closed)."""


@dataclass(frozen=True)
class Part:
    """A committed metrics file covering WAL segments ``first..last``."""

    first: int
    last: int
    path: Path
    size: int
    #: Points in the file (-1: unknown, its footer was unreadable).
    rows: int = -1

    @classmethod
    def at(cls, path: Path) -> Part | None:
        """The part a committed file name describes (reads the footer: not on the loop)."""
        match = METRICS_FILE_RE.fullmatch(path.name)
        if match is None:
            return None
        try:
            rows = pq.read_metadata(path).num_rows
        except Exception as exc:  # a damaged file is still a part; it is never compacted
            logger.warning("cannot read the footer of %s: %s", path.name, exc)
            rows = -1
        return cls(int(match.group(1)), int(match.group(2)), path, path.stat().st_size, rows)

    def covers(self, other: Part) -> bool:
        return self is not other and self.first <= other.first and other.last <= self.last


# -- files --------------------------------------------------------------------------------


def _temp_path(final: Path) -> Path:
    # A leading dot and a .tmp suffix: never matches METRICS_FILE_RE, so readers skip it.
    return final.with_name(f".{final.name}.tmp")


def _commit_file(write: Callable[[Path], None], final: Path) -> None:
    """Write to a temp name, fsync it, rename it over ``final``, fsync the directory."""
    temp = _temp_path(final)
    try:
        write(temp)
        fd = os.open(temp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temp, final)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    fsync_dir(final.parent)


def as_dictionary_table(table: pa.Table) -> pa.Table:
    """``table`` (METRICS_SCHEMA or TAIL_SCHEMA columns) with run_id and key dictionary-encoded."""
    if table.schema.equals(TAIL_SCHEMA):
        return table
    columns = []
    for target in TAIL_SCHEMA:
        column = table.column(target.name)
        if pa.types.is_dictionary(target.type) and not pa.types.is_dictionary(column.type):
            column = pc.dictionary_encode(column)
        columns.append(column.cast(target.type))
    return pa.Table.from_arrays(columns, schema=TAIL_SCHEMA)


def _is_sorted(values: pa.Array) -> bool:
    if len(values) < 2:
        return True
    return not pc.any(pc.less(values.slice(1), values.slice(0, len(values) - 1))).as_py()


def _in_step_order(step: pa.Array, timestamp: pa.Array, same: pa.Array | None = None) -> bool:
    """Whether consecutive rows never go back in (step, timestamp); with ``same``, only
    pairs whose ``same`` is true (the same series) count."""
    n = len(step)
    if n < 2:
        return True
    s0, s1 = step.slice(0, n - 1), step.slice(1)
    back = pc.or_(
        pc.less(s1, s0),
        pc.and_(pc.equal(s1, s0), pc.less(timestamp.slice(1), timestamp.slice(0, n - 1))),
    )
    if same is not None:
        back = pc.and_(back, same)
    return not pc.any(back).as_py()


def _series_codes(
    batches: Sequence[pa.RecordBatch],
) -> tuple[list[pa.Array], list[tuple[str, str]]]:
    """For each batch an int32 array of series ids (one per row) and, per id, its
    (run_id, key): ids are shared across batches whatever their dictionaries."""
    series: dict[tuple[str, str], int] = {}
    ids: list[pa.Array] = []
    for batch in batches:
        run, key = batch.column(0), batch.column(1)
        runs, keys = run.dictionary.to_pylist(), key.dictionary.to_pylist()
        nr, nk = len(runs), len(keys)
        if nr == 1 or nk == 1 or nr * nk <= _DENSE_SERIES_LIMIT:
            # Client batches: one run, a few keys. Pairs a batch does not use get ids too,
            # which only costs an unused entry.
            lut = pa.array(
                [series.setdefault((r, k), len(series)) for r in runs for k in keys], pa.int32()
            )
            if nr == 1:
                code = key.indices
            elif nk == 1:
                code = run.indices
            else:
                code = pc.add(pc.multiply(run.indices, nk), key.indices)
            ids.append(pc.take(lut, code))
        else:
            code = pc.add(
                pc.multiply(run.indices.cast(pa.int64()), nk), key.indices.cast(pa.int64())
            )
            used = pc.unique(code)
            lut = pa.array(
                [
                    series.setdefault((runs[c // nk], keys[c % nk]), len(series))
                    for c in used.to_pylist()
                ],
                pa.int32(),
            )
            ids.append(pc.take(lut, pc.index_in(code, used)))
    return ids, list(series)


def sort_metrics(table: pa.Table) -> pa.Table:
    """Sorted by (run_id, key, step, timestamp); stable, so equal points keep arrival order.

    Returns TAIL_SCHEMA columns with one sorted dictionary per column. Series are ranked
    once (a Python sort of the distinct (run_id, key) pairs), rows are sorted by the
    int32 rank, and the usual case (each series already in step order, as loggers send
    it) needs no comparison of step or timestamp beyond one linear check.
    """
    table = as_dictionary_table(table)
    batches = [b for b in table.to_batches() if b.num_rows]
    if not batches:
        return TAIL_SCHEMA.empty_table()
    ids, names = _series_codes(batches)
    order = sorted(range(len(names)), key=names.__getitem__)
    rank_of_id = [0] * len(names)
    for rank, series_id in enumerate(order):
        rank_of_id[series_id] = rank
    rank_lut = pa.array(rank_of_id, pa.int32())
    rank = pa.concat_arrays([pc.take(rank_lut, i) for i in ids])
    step = pa.chunked_array([b.column(2) for b in batches], pa.int64())
    timestamp = pa.chunked_array([b.column(3) for b in batches], pa.int64())
    value = pa.chunked_array([b.column(4) for b in batches], pa.float64())
    if not _is_sorted(rank):
        perm = pc.sort_indices(rank)  # stable
        rank, step, timestamp = rank.take(perm), step.take(perm), timestamp.take(perm)
        value = value.take(perm)
    n = len(rank)
    same = pc.equal(rank.slice(1), rank.slice(0, n - 1)) if n > 1 else None
    if not _in_step_order(step, timestamp, same):
        perm = pc.sort_indices(
            pa.table({"rank": rank, "step": step, "timestamp": timestamp}),
            sort_keys=[("rank", "ascending"), ("step", "ascending"), ("timestamp", "ascending")],
        )
        rank, step, timestamp = rank.take(perm), step.take(perm), timestamp.take(perm)
        value = value.take(perm)
    # One sorted dictionary per column; each rank points at its run's and key's entry.
    ranked = [names[series_id] for series_id in order]
    runs = sorted({r for r, _ in ranked})
    keys = sorted({k for _, k in ranked})
    run_at = {r: i for i, r in enumerate(runs)}
    key_at = {k: i for i, k in enumerate(keys)}
    run_lut = pa.array([run_at[r] for r, _ in ranked], pa.int32())
    key_lut = pa.array([key_at[k] for _, k in ranked], pa.int32())
    return pa.Table.from_arrays(
        [
            pa.DictionaryArray.from_arrays(pc.take(run_lut, rank), pa.array(runs, pa.string())),
            pa.DictionaryArray.from_arrays(pc.take(key_lut, rank), pa.array(keys, pa.string())),
            step,
            timestamp,
            value,
        ],
        schema=TAIL_SCHEMA,
    )


def _compact_dictionaries(table: pa.Table) -> pa.Table:
    """``table`` with each large dictionary cut down to the entries its rows use (the
    Parquet writer stores a row group's Arrow dictionary whole)."""
    columns = []
    changed = False
    for column in table.columns:
        if (
            pa.types.is_dictionary(column.type)
            and column.num_chunks == 1
            and len(column.chunk(0).dictionary) > _COMPACT_DICTIONARY_ABOVE
        ):
            chunk = column.chunk(0)
            used = pc.unique(chunk.indices)
            used = used.take(pc.sort_indices(used))
            column = pa.chunked_array(
                [
                    pa.DictionaryArray.from_arrays(
                        pc.index_in(chunk.indices, used), chunk.dictionary.take(used)
                    )
                ]
            )
            changed = True
        columns.append(column)
    return pa.Table.from_arrays(columns, schema=table.schema) if changed else table


def write_metrics_file(table: pa.Table, path: Path) -> None:
    """Durably write an already sorted table (METRICS_SCHEMA or TAIL_SCHEMA columns) as an
    immutable metrics file, one row group at a time."""

    def write(temp: Path) -> None:
        with pq.ParquetWriter(temp, table.schema, **_PARQUET_OPTIONS) as writer:
            for offset in range(0, table.num_rows, ROW_GROUP_ROWS):
                group = _compact_dictionaries(table.slice(offset, ROW_GROUP_ROWS))
                writer.write_table(group, row_group_size=ROW_GROUP_ROWS)

    _commit_file(write, path)


def read_metrics_file(path: Path) -> pa.Table:
    return pq.read_table(path, schema=METRICS_SCHEMA)


def read_metrics_file_encoded(path: Path) -> pa.Table:
    """A metrics file as TAIL_SCHEMA columns (the file's own dictionaries, no strings per row)."""
    table = pq.read_table(path, columns=METRICS_SCHEMA.names, read_dictionary=["run_id", "key"])
    return as_dictionary_table(table)


# -- latest summary -----------------------------------------------------------------------


def _empty_latest() -> pa.Table:
    return LATEST_SCHEMA.empty_table()


def _nan_to_null(values: pa.Array) -> pa.Array:
    return pc.if_else(pc.is_nan(values), pa.scalar(None, pa.float64()), values)


def _float_or_none(scalar: pa.Scalar) -> float | None:
    value = scalar.as_py()
    return None if value is None or math.isnan(value) else float(value)


def _summarize_batch(batch: pa.RecordBatch, series_sorted: bool) -> pa.Table:
    run, key = batch.column(0), batch.column(1)
    step, timestamp, value = batch.column(2), batch.column(3), batch.column(4)
    nr, nk = len(run.dictionary), len(key.dictionary)
    if nr == 1 and nk == 1:
        # One series (the bulk path): no grouping at all.
        if (series_sorted or _in_step_order(step, timestamp)) and not _tied_at(
            step, timestamp, len(step) - 1
        ):
            last = len(step) - 1
        else:
            # Ties on (step, timestamp) go to the largest value (NaN above all), as in MLflow.
            at = pc.equal(step, pc.max(step))
            at = pc.and_(at, pc.equal(timestamp, pc.max(pc.filter(timestamp, at))))
            tied = pc.indices_nonzero(at)
            last = tied[pc.sort_indices(value.take(tied))[-1].as_py()].as_py()
        low_high = pc.min_max(value)
        return pa.Table.from_arrays(
            [
                pa.array([run.dictionary[0].as_py()], pa.string()),
                pa.array([key.dictionary[0].as_py()], pa.string()),
                pa.array([value[last].as_py()], pa.float64()),
                pa.array([step[last].as_py()], pa.int64()),
                pa.array([timestamp[last].as_py()], pa.int64()),
                pa.array([_float_or_none(low_high["min"])], pa.float64()),
                pa.array([_float_or_none(low_high["max"])], pa.float64()),
                pa.array([len(step)], pa.int64()),
            ],
            schema=LATEST_SCHEMA,
        )
    if nr == 1:
        code = key.indices
    elif nk == 1:
        code = run.indices
    else:
        code = pc.add(pc.multiply(run.indices.cast(pa.int64()), nk), key.indices.cast(pa.int64()))
    in_order = series_sorted or _in_step_order(step, timestamp)
    if in_order and nr * nk <= _FEW_SERIES:
        few = _summarize_few_in_order(run, key, code, step, timestamp, value)
        if few is not None:
            return few
        in_order = False
    rows = pa.table({"code": code, "step": step, "timestamp": timestamp, "value": value})
    if not in_order or _any_adjacent_tie(step, timestamp):
        rows = rows.take(pc.sort_indices(rows, sort_keys=_LATEST_ORDER))
    # Rows are in (step, timestamp, value) order within each series, so an ordered
    # (single-threaded) group-by's "last" is the latest point.
    grouped = rows.group_by(["code"], use_threads=False).aggregate(
        [
            ("value", "last"),
            ("step", "last"),
            ("timestamp", "last"),
            ("value", "min"),
            ("value", "max"),
            ("step", "count"),
        ]
    )
    run_index, key_index = _split_codes(grouped["code"], len(run.dictionary), len(key.dictionary))
    return pa.Table.from_arrays(
        [
            run.dictionary.take(run_index),
            key.dictionary.take(key_index),
            grouped["value_last"],
            grouped["step_last"],
            grouped["timestamp_last"],
            _nan_to_null(grouped["value_min"]),
            _nan_to_null(grouped["value_max"]),
            grouped["step_count"],
        ],
        schema=LATEST_SCHEMA,
    )


#: MLflow's latest: the highest step, then the newest timestamp, then the largest value
#: (NaN above every number, as Arrow and DuckDB sort it).
_LATEST_ORDER = [("step", "ascending"), ("timestamp", "ascending"), ("value", "ascending")]


def _tied_at(step: pa.Array, timestamp: pa.Array, i: int) -> bool:
    """Whether row ``i - 1`` has the same (step, timestamp) as row ``i``."""
    return bool(
        i >= 1
        and step[i].as_py() == step[i - 1].as_py()
        and timestamp[i].as_py() == timestamp[i - 1].as_py()
    )


def _any_adjacent_tie(step: pa.Array, timestamp: pa.Array) -> bool:
    n = len(step)
    if n < 2:
        return False
    same = pc.and_(
        pc.equal(step.slice(1), step.slice(0, n - 1)),
        pc.equal(timestamp.slice(1), timestamp.slice(0, n - 1)),
    )
    return bool(pc.any(same).as_py())


def _split_codes(codes: pa.Array, nr: int, nk: int) -> tuple[pa.Array, pa.Array]:
    """(run index, key index) of series codes made as run_index * nk + key_index."""
    codes = codes.cast(pa.int64())
    if nr == 1:
        return pa.repeat(pa.scalar(0, pa.int64()), len(codes)), codes
    if nk == 1:
        return codes, pa.repeat(pa.scalar(0, pa.int64()), len(codes))
    run_index = pc.divide(codes, nk)
    return run_index, pc.subtract(codes, pc.multiply(run_index, nk))


def _summarize_few_in_order(
    run: pa.DictionaryArray,
    key: pa.DictionaryArray,
    code: pa.Array,
    step: pa.Array,
    timestamp: pa.Array,
    value: pa.Array,
) -> pa.Table | None:
    """None if a series' latest (step, timestamp) is tied (the caller sorts by value)."""
    # Each series' rows run in (step, timestamp) order, so its latest point is its last
    # row. A stable sort by series code (an integer radix sort) makes each series one
    # slice: last row, count and a NaN-skipping min_max per slice. About half the cost
    # of a hash group-by for the few series (keys) of a client batch.
    perm = pc.sort_indices(code)
    runs = pc.run_end_encode(code.take(perm))
    ends = runs.run_ends.to_pylist()
    ordered_value = value.take(perm)
    lows: list[float | None] = []
    highs: list[float | None] = []
    counts: list[int] = []
    start = 0
    for end in ends:
        low_high = pc.min_max(ordered_value.slice(start, end - start))
        lows.append(_float_or_none(low_high["min"]))
        highs.append(_float_or_none(low_high["max"]))
        counts.append(end - start)
        start = end
    last = perm.take(pa.array([end - 1 for end in ends], pa.int64()))
    # Within a series rows are in (step, timestamp) order, so a tie on its latest point
    # shows as the slice's last two rows.
    if any(c > 1 for c in counts):
        before = perm.take(
            pa.array([end - (2 if c > 1 else 1) for end, c in zip(ends, counts, strict=True)])
        )
        tie = pc.and_(
            pc.and_(
                pc.equal(step.take(last), step.take(before)),
                pc.equal(timestamp.take(last), timestamp.take(before)),
            ),
            pc.not_equal(last, before),
        )
        if pc.any(tie).as_py():
            return None
    run_index, key_index = _split_codes(runs.values, len(run.dictionary), len(key.dictionary))
    return pa.Table.from_arrays(
        [
            run.dictionary.take(run_index),
            key.dictionary.take(key_index),
            value.take(last),
            step.take(last),
            timestamp.take(last),
            pa.array(lows, pa.float64()),
            pa.array(highs, pa.float64()),
            pa.array(counts, pa.int64()),
        ],
        schema=LATEST_SCHEMA,
    )


def summarize_points(points: pa.Table, *, series_sorted: bool = False) -> pa.Table:
    """LATEST_SCHEMA summaries of ``points`` (METRICS_SCHEMA or TAIL_SCHEMA columns, in
    arrival order): at most one row per series per record batch, in arrival order, ready
    for ``fold_latest``. ``series_sorted``: each series' rows already run in (step,
    timestamp) order within every batch (a metrics file), so no check is needed.

    Linear in the points, never a string comparison: a single-series batch (the bulk
    path) takes a few vector passes; a batch of a few series in step order (a client's
    interleaved keys) one integer sort by series code; anything else an ordered hash
    group-by on that code (after a (step, timestamp) sort if the batch goes back in time).
    """
    points = as_dictionary_table(points)
    parts = [_summarize_batch(b, series_sorted) for b in points.to_batches() if b.num_rows]
    if not parts:
        return _empty_latest()
    return parts[0] if len(parts) == 1 else pa.concat_tables(parts)


def points_as_latest(points: pa.Table) -> pa.Table:
    """Each point as a one-point summary (min/max null for NaN), in arrival order."""
    points = points.cast(METRICS_SCHEMA)
    value = points["value"]
    not_nan = pc.if_else(pc.is_nan(value), pa.scalar(None, pa.float64()), value)
    ones = pa.repeat(pa.scalar(1, pa.int64()), points.num_rows)
    return pa.Table.from_arrays(
        [
            points["run_id"],
            points["key"],
            value,
            points["step"],
            points["timestamp"],
            not_nan,
            not_nan,
            ones,
        ],
        schema=LATEST_SCHEMA,
    )


def fold_latest(parts: Sequence[pa.Table]) -> pa.Table:
    """Combine LATEST_SCHEMA summaries given oldest first into one row per (run_id, key).

    Latest is the row with the highest step, then the newest timestamp, then the largest
    value (MLflow's order): a sort on (step, timestamp, value) and an ordered
    (single-threaded) group-by takes the last row of each series.
    """
    parts = [p for p in parts if p.num_rows]
    if not parts:
        return _empty_latest()
    rows = pa.concat_tables(parts)
    rows = rows.take(pc.sort_indices(rows, sort_keys=_LATEST_ORDER))
    grouped = rows.group_by(["run_id", "key"], use_threads=False).aggregate(
        [
            ("value", "last"),
            ("step", "last"),
            ("timestamp", "last"),
            ("min", "min"),
            ("max", "max"),
            ("count", "sum"),
        ]
    )
    return pa.Table.from_arrays(
        [
            grouped[name]
            for name in (
                "run_id",
                "key",
                "value_last",
                "step_last",
                "timestamp_last",
                "min_min",
                "max_max",
                "count_sum",
            )
        ],
        schema=LATEST_SCHEMA,
    )


def read_latest_file(path: Path) -> tuple[pa.Table, int] | None:
    """(summary, last segment covered) from latest.parquet, or None if absent/unreadable."""
    if not path.exists():
        return None
    try:
        table = pq.read_table(path, schema=LATEST_SCHEMA)
        metadata = pq.read_schema(path).metadata or {}
        last = int(metadata[LATEST_SEGMENT_KEY])
    except Exception as exc:  # a damaged summary is rebuilt from the metrics files
        logger.warning("ignoring unreadable %s (%s); rebuilding it", path.name, exc)
        return None
    return table.replace_schema_metadata(None), last


def write_latest_file(table: pa.Table, path: Path, last_segment: int) -> None:
    table = table.replace_schema_metadata({LATEST_SEGMENT_KEY: str(last_segment).encode()})
    _commit_file(lambda temp: pq.write_table(table, temp, compression="zstd"), path)


# -- recovery -----------------------------------------------------------------------------


@dataclass
class _Chunk:
    """Acked points of one WAL segment, applied together (TAIL_SCHEMA, one record batch per
    WAL record); ``watermarks`` = highest seq per stream among them; ``summary`` = their
    unfolded LATEST_SCHEMA summaries (see summarize_points)."""

    segment: int
    table: pa.Table
    watermarks: dict[str, int]
    summary: pa.Table
    #: METRICS_SCHEMA copy made by the first snapshot that needs it (queries see strings).
    expanded: pa.Table | None = None
    #: Memory held: the table, plus the expanded copy once made.
    nbytes: int = 0

    def __post_init__(self) -> None:
        self.nbytes = self.table.nbytes

    def as_metrics(self) -> pa.Table:
        if self.expanded is None:
            self.expanded = self.table.cast(METRICS_SCHEMA)
            self.nbytes += self.expanded.nbytes
        return self.expanded


@dataclass
class _Inflight:
    position: Position
    stream_id: str
    seq: int
    table: pa.Table
    future: asyncio.Future[None]
    #: The table plus the WAL payload (held until the group commit writes it).
    nbytes: int


@dataclass
class _Recovered:
    parts: list[Part]
    latest_flushed: pa.Table
    latest_segment: int
    watermarks: dict[str, int]
    chunks: list[_Chunk] = field(default_factory=list)
    next_segment: int = 1
    #: Lowest replayed segment (the next flush covers it even if it held no points).
    first_unflushed: int = 1 << 62


def _live_parts(metrics_dir: Path) -> list[Part]:
    """Committed parts, minus temp files and parts a compaction already replaced (a crash
    can leave both the merged file and its inputs; the merged one covers their range)."""
    parts: list[Part] = []
    for path in metrics_dir.iterdir():
        if path.name.endswith(".tmp"):
            path.unlink(missing_ok=True)
            continue
        part = Part.at(path)
        if part is not None:
            parts.append(part)
    live = []
    for part in parts:
        if any(other.covers(part) for other in parts):
            logger.info("removing %s: a compacted file covers it", part.path.name)
            part.path.unlink(missing_ok=True)
        else:
            live.append(part)
    return sorted(live, key=lambda p: p.first)


def _recover_latest(data_dir: DataDir, parts: list[Part], max_segment: int) -> pa.Table:
    existing = read_latest_file(data_dir.latest_file)
    if existing is not None and existing[1] == max_segment:
        return existing[0]
    if (
        existing is not None
        and existing[1] < max_segment
        and all(p.last <= existing[1] or p.first > existing[1] for p in parts)
    ):
        # A crash between a file's rename and the summary's rewrite: fold in the newer files.
        latest, newer = existing[0], [p for p in parts if p.first > existing[1]]
    else:
        latest, newer = _empty_latest(), parts
    if not parts and existing is None:
        return latest
    for part in newer:
        points = read_metrics_file_encoded(part.path)
        latest = fold_latest([latest, summarize_points(points, series_sorted=True)])
    write_latest_file(latest, data_dir.latest_file, max_segment)
    logger.info("rebuilt %s from %d metrics file(s)", data_dir.latest_file.name, len(newer))
    return latest


def _storable_seq(stream_id: str, seq: object, where: str, warned: set[str]) -> bool:
    """Whether a recovered (stream id, seq) may become a watermark. An older steppe acked
    batches with a seq past MAX_SEQ (SQLite cannot store it, so every flush failed) and
    client batches on the server's own stream ids; their points are kept, but such a seq
    never becomes a watermark: a resend of it is refused at the door (never stored twice),
    and the server's own seqs keep counting from their real watermark."""
    limit = _MAX_RESERVED_SEQ if stream_id.startswith(RESERVED_STREAM_PREFIX) else MAX_SEQ
    if isinstance(seq, int) and not isinstance(seq, bool) and 0 <= seq <= limit:
        return True
    if stream_id in warned:
        return False
    warned.add(stream_id)  # one warning per stream, however many records
    logger.warning(
        "%s: ignoring seq %r of stream %r as a watermark (out of range; written by an older "
        "steppe); its points are kept",
        where,
        seq,
        stream_id,
    )
    return False


def _recover(data_dir: DataDir, catalog: Catalog) -> _Recovered:
    """Blocking recovery of the on-disk state (see MetricStore for the protocol)."""
    data_dir.metrics_dir.mkdir(parents=True, exist_ok=True)
    data_dir.wal_dir.mkdir(parents=True, exist_ok=True)
    _temp_path(data_dir.latest_file).unlink(missing_ok=True)
    parts = _live_parts(data_dir.metrics_dir)
    max_segment = max((p.last for p in parts), default=0)
    latest = _recover_latest(data_dir, parts, max_segment)
    warned: set[str] = set()
    watermarks = {
        stream_id: seq
        for stream_id, seq in catalog.stream_watermarks().items()
        if _storable_seq(stream_id, seq, "catalog", warned)
    }
    segments = list_segments(data_dir.wal_dir)

    # Segments already in Parquet only contribute watermarks: a crash may have hit between
    # the file's rename and the watermark save. Save first, then delete them.
    flushed = [(n, path) for n, path in segments if n <= max_segment]
    held: dict[str, int] = {}
    for _, path in flushed:
        for payload in read_segment(path):
            stream_id, seq = wire.batch_position(payload)
            if _storable_seq(stream_id, seq, path.name, warned):
                held[stream_id] = max(held.get(stream_id, 0), seq)
    if held:
        catalog.save_stream_watermarks(held)
        for stream_id, seq in held.items():
            watermarks[stream_id] = max(watermarks.get(stream_id, 0), seq)
    for _, path in flushed:
        path.unlink(missing_ok=True)
    if flushed:
        fsync_dir(data_dir.wal_dir)

    recovered = _Recovered(parts, latest, max_segment, watermarks)
    for number, path in segments:
        if number <= max_segment:
            continue
        recovered.first_unflushed = min(recovered.first_unflushed, number)
        tables: list[pa.Table] = []
        held = {}
        for payload in read_segment(path):
            batch = wire.parse_metric_batch(payload)
            if batch.seq <= watermarks.get(batch.stream_id, 0):
                # Never written twice by a live server; guards exactly-once regardless.
                logger.warning(
                    "WAL %s: dropping duplicate %s/%d", path.name, batch.stream_id, batch.seq
                )
                continue
            try:
                decoded = wire.decode_metric_batch(batch, max_points=1 << 62)
            except InvalidParameterValue as exc:  # validated before it was logged: corrupt
                logger.error("WAL %s: skipping undecodable record: %s", path.name, exc)
                continue
            if _storable_seq(batch.stream_id, batch.seq, path.name, warned):
                watermarks[batch.stream_id] = held[batch.stream_id] = batch.seq
            tables.append(as_dictionary_table(decoded.table))
        if tables:
            table = pa.concat_tables(tables) if len(tables) > 1 else tables[0]
            recovered.chunks.append(_Chunk(number, table, held, summarize_points(table)))
    recovered.next_segment = max([max_segment, *(n for n, _ in segments)]) + 1
    recovered.first_unflushed = min(recovered.first_unflushed, recovered.next_segment)
    return recovered


# -- the store ----------------------------------------------------------------------------


class MetricStore:
    """The write side's view of all metrics: committed files plus the acked in-memory tail.

    Lifecycle: ``await open()`` (recovers), then ``append`` / ``snapshot`` / ``flush`` on the
    event loop, then ``await close()`` (flushes). ``append`` returns a future that resolves
    once the batch is fsynced in the WAL *and* applied to the tail, latest and watermarks,
    independently of whoever awaits it (a dropped stream loses no applied data).

    The tail keeps each batch dictionary-encoded (TAIL_SCHEMA); a snapshot expands a chunk
    to METRICS_SCHEMA strings the first time one needs it. Applying a batch summarises it
    (summarize_points: a few rows, linear in its points) before its future resolves, and a
    snapshot folds those summaries into ``latest``, so ``latest`` always covers exactly the
    files plus the tail it is returned with. Backpressure (``wait_for_room``) bounds the
    tail plus in-flight batches by points and by bytes.

    Flush protocol (each step durable before the next): rotate the WAL so the flush covers
    exactly segments [a..b]; write ``metrics/part-a-b.parquet`` (temp, fsync, rename, fsync
    dir) and swap it in for its tail chunks in one loop step; save the stream watermarks in
    the catalog; rewrite latest.parquet (recording b); delete WAL segments <= b. Recovery
    undoes any crash point: see ``_recover``.

        store = MetricStore(DataDir.at("data"), catalog)
        await store.open()
        await store.append("stream", 1, table, payload)
        snap = store.snapshot()
    """

    def __init__(
        self,
        data_dir: DataDir,
        catalog: Catalog,
        *,
        flush_rows: int = 1_000_000,
        flush_interval_s: float = 10.0,
        max_tail_rows: int | None = None,
        max_tail_bytes: int = MAX_TAIL_BYTES,
        stream_retention_s: float = DEFAULT_STREAM_RETENTION_S,
    ) -> None:
        self._dir = data_dir
        self._retention_ms = int(stream_retention_s * 1000)
        self._catalog = catalog
        self._flush_rows = flush_rows
        self._flush_interval_s = flush_interval_s
        #: Backpressure bounds on acked-but-unflushed plus in-flight points (DESIGN 8), in
        #: points and in bytes (tail tables, their expanded copies, unwritten WAL payloads).
        #: A flush starts at flush_rows or at half the byte bound, whichever comes first.
        self._max_tail_rows = max_tail_rows or 2 * flush_rows
        self._max_tail_bytes = max_tail_bytes
        self._state = "new"
        self._wal: WriteAheadLog | None = None
        self._parts: list[Part] = []
        self._chunks: list[_Chunk] = []
        self._tail_rows = 0
        self._tail_bytes = 0
        self._tail_cache: pa.Table | None = None
        self._inflight: deque[_Inflight] = deque()
        self._inflight_rows = 0
        self._inflight_bytes = 0
        self._watermarks: dict[str, int] = {}
        #: When each expirable stream (an id with its creation time) last sent a batch, ms.
        self._last_ms: dict[str, int] = {}
        #: Folded summary of every applied point, plus summaries applied since the last fold
        #: (folded on the next snapshot, or once they outnumber the folded rows).
        self._latest = _empty_latest()
        self._unfolded: list[pa.Table] = []
        self._unfolded_rows = 0
        self._latest_flushed = _empty_latest()
        self._latest_segment = 0
        self._first_unflushed = 1
        self._unsaved_watermarks: dict[str, int] = {}
        self._flush_lock = asyncio.Lock()
        self._flush_wanted = asyncio.Event()
        self._last_flush = time.monotonic()
        self._flusher: asyncio.Task[None] | None = None
        self._failed: BaseException | None = None
        self._room_waiters: list[asyncio.Future[None]] = []
        #: Called on the loop after each flush that wrote a file (the compactor's nudge).
        self.on_flushed: Callable[[], None] | None = None

    # -- lifecycle ------------------------------------------------------------------------

    async def open(self) -> None:
        """Recover files, latest, watermarks and the WAL tail; start the periodic flusher."""
        if self._state != "new":
            raise StoreClosed(f"store is {self._state}")
        recovered = await asyncio.to_thread(_recover, self._dir, self._catalog)
        self._parts = recovered.parts
        self._latest_flushed = recovered.latest_flushed
        self._latest_segment = recovered.latest_segment
        self._watermarks = recovered.watermarks
        saved_ms = await asyncio.to_thread(self._catalog.stream_last_ms)
        floor = (
            _now_ms() - self._retention_ms + min(self._retention_ms, int(_RESTART_GRACE_S * 1e3))
        )
        self._last_ms = {
            stream_id: max(saved_ms.get(stream_id, 0), floor)
            for stream_id in self._watermarks
            if stream_ids.created_ms(stream_id) is not None
        }
        self._chunks = recovered.chunks
        self._tail_rows = sum(c.table.num_rows for c in self._chunks)
        self._tail_bytes = sum(c.nbytes for c in self._chunks)
        self._latest = fold_latest([self._latest_flushed, *(c.summary for c in self._chunks)])
        self._wal = WriteAheadLog(
            self._dir.wal_dir,
            recovered.next_segment,
            on_durable=self._on_durable,
            on_failure=self._on_wal_failure,
        )
        self._first_unflushed = recovered.first_unflushed
        if self._chunks:
            logger.info("replayed %d points from the WAL", self._tail_rows)
        self._state = "open"
        self._last_flush = time.monotonic()
        self._flusher = asyncio.get_running_loop().create_task(
            self._flush_loop(), name="steppe-flusher"
        )

    async def close(self) -> None:
        """Flush the tail to Parquet and close the WAL. Idempotent."""
        if self._state != "open":
            self._state = "closed"
            return
        self._state = "closing"
        self._flush_wanted.set()
        if self._flusher is not None:
            await self._flusher
        try:
            await self.flush()
        except Exception:  # the WAL still holds every acked point; the next open replays it
            logger.exception("final flush failed; the WAL keeps the points for the next start")
        assert self._wal is not None
        await self._wal.close()
        self._state = "closed"
        self._wake_room_waiters()

    # -- write path -----------------------------------------------------------------------

    def watermark(self, stream_id: str) -> int:
        """Highest seq of ``stream_id`` held or in flight (a resend at or below it is a dup)."""
        return self._watermarks.get(stream_id, 0)

    def append(
        self, stream_id: str, seq: int, table: pa.Table, payload: bytes
    ) -> asyncio.Future[None]:
        """Log a validated batch; the future resolves when it is durable and visible."""
        wal = self._open_wal()
        table = as_dictionary_table(table)
        position = wal.append(payload)
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        nbytes = table.nbytes + len(payload)
        self._inflight.append(_Inflight(position, stream_id, seq, table, future, nbytes))
        self._inflight_rows += table.num_rows
        self._inflight_bytes += nbytes
        self._watermarks[stream_id] = max(self._watermarks.get(stream_id, 0), seq)
        if stream_id in self._last_ms or stream_ids.created_ms(stream_id) is not None:
            self._last_ms[stream_id] = _now_ms()
        return future

    def forgotten(self, stream_id: str) -> bool:
        """Whether a batch on ``stream_id`` may belong to a stream whose watermark expired:
        the server does not know it and its id says it was opened longer than the retention
        ago. Such a batch is refused: the server cannot tell which of its batches it stored."""
        if stream_id in self._watermarks:
            return False
        created = stream_ids.created_ms(stream_id)
        return created is not None and created < _now_ms() - self._retention_ms

    @property
    def stream_retention_s(self) -> float:
        return self._retention_ms / 1000

    @property
    def known_streams(self) -> int:
        """Streams whose watermark the store holds (in memory and in the catalog)."""
        return len(self._watermarks)

    async def expire_streams(self, live: Container[str] = ()) -> int:
        """Forget the watermarks of streams idle longer than the retention; returns how many.

        Only ids that carry their creation time (steppe.stream_ids) expire, and only once
        both that time and their last batch are older than the retention, so an expired
        stream coming back is always recognised by ``forgotten`` (the same id time against
        the same clock) and refused, never stored twice. Streams in ``live`` (a call is
        writing them) or with points not yet in Parquet are kept. Other ids are kept forever.
        """
        if self._state != "open":
            return 0
        horizon = _now_ms() - self._retention_ms
        pending = set(self._unsaved_watermarks)
        pending.update(entry.stream_id for entry in self._inflight)
        for chunk in self._chunks:
            pending.update(chunk.watermarks)
        expired = [
            stream_id
            for stream_id, last in self._last_ms.items()
            if last < horizon
            and stream_id not in pending
            and stream_id not in live
            and (stream_ids.created_ms(stream_id) or 0) < horizon
        ]
        if not expired:
            return 0
        # Forgotten in memory first (one loop step), so from now on a batch on one of them
        # is refused; the catalog rows follow.
        for stream_id in expired:
            del self._last_ms[stream_id]
            self._watermarks.pop(stream_id, None)
        await asyncio.to_thread(self._catalog.expire_stream_watermarks, expired)
        logger.info("forgot the watermarks of %d idle stream(s)", len(expired))
        return len(expired)

    def barrier(self) -> asyncio.Future[None]:
        """Resolves when everything appended so far is durable and applied."""
        return self._open_wal().sync()

    async def wait_for_room(self) -> None:
        """Backpressure: wait while the unflushed tail is at its bound (a flush frees it)."""
        while self._over_bound() and self._state == "open" and self._failed is None:
            self._flush_wanted.set()
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._room_waiters.append(waiter)
            await waiter

    def _over_bound(self) -> bool:
        return (
            self._tail_rows + self._inflight_rows >= self._max_tail_rows
            or self._tail_bytes + self._inflight_bytes >= self._max_tail_bytes
        )

    def _flush_due(self) -> bool:
        return self._tail_rows >= self._flush_rows or self._tail_bytes >= self._max_tail_bytes // 2

    def _open_wal(self) -> WriteAheadLog:
        if self._failed is not None:
            raise WalFailed(str(self._failed))
        if self._state != "open" or self._wal is None:
            raise StoreClosed(f"metric store is {self._state}")
        return self._wal

    def _on_durable(self, lsn: int) -> None:
        # Called by the WAL on the loop after each group fsync, before sync() waiters wake,
        # so a barrier implies the tail holds everything appended before it.
        ready: list[_Inflight] = []
        while self._inflight and self._inflight[0].position.lsn <= lsn:
            ready.append(self._inflight.popleft())
        if not ready:
            return
        try:
            self._apply(ready)
        except BaseException as exc:
            for entry in ready:
                if not entry.future.done():
                    entry.future.set_exception(exc)
            raise

    def _apply(self, ready: list[_Inflight]) -> None:
        start = 0
        for i in range(1, len(ready) + 1):
            if i == len(ready) or ready[i].position.segment != ready[start].position.segment:
                group = ready[start:i]
                tables = [entry.table for entry in group]
                # Zero-copy: the chunk keeps each record's batch (and its dictionaries).
                table = tables[0] if len(tables) == 1 else pa.concat_tables(tables)
                watermarks: dict[str, int] = {}
                for entry in group:
                    watermarks[entry.stream_id] = max(watermarks.get(entry.stream_id, 0), entry.seq)
                summary = summarize_points(table)
                chunk = _Chunk(group[0].position.segment, table, watermarks, summary)
                self._chunks.append(chunk)
                self._tail_bytes += chunk.nbytes
                self._unfolded.append(summary)
                self._unfolded_rows += summary.num_rows
                start = i
        rows = sum(entry.table.num_rows for entry in ready)
        self._inflight_rows -= rows
        self._inflight_bytes -= sum(entry.nbytes for entry in ready)
        self._tail_rows += rows
        self._tail_cache = None
        if self._unfolded_rows > max(_FOLD_AFTER_ROWS, self._latest.num_rows):
            self._fold_latest()
        for entry in ready:
            if not entry.future.done():
                entry.future.set_result(None)
        if self._flush_due():
            self._flush_wanted.set()

    def _on_wal_failure(self, exc: BaseException) -> None:
        self._failed = exc
        while self._inflight:
            entry = self._inflight.popleft()
            if not entry.future.done():
                entry.future.set_exception(exc)
        self._wake_room_waiters()

    @property
    def failure(self) -> str | None:
        """Why the WAL cannot write (appends are refused from then on), or None."""
        return None if self._failed is None else f"{type(self._failed).__name__}: {self._failed}"

    def _wake_room_waiters(self) -> None:
        waiters, self._room_waiters = self._room_waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    # -- read path ------------------------------------------------------------------------

    def snapshot(self) -> Snapshot:
        """Files + tail + latest at this instant (call on the loop; the result is immutable)."""
        self._fold_latest()
        if self._tail_cache is None:
            expanded = []
            for chunk in self._chunks:
                before = chunk.nbytes
                expanded.append(chunk.as_metrics())
                self._tail_bytes += chunk.nbytes - before
            self._tail_cache = (
                pa.concat_tables(expanded) if expanded else METRICS_SCHEMA.empty_table()
            )
            if self._flush_due():
                self._flush_wanted.set()
        return Snapshot(tuple(p.path for p in self._parts), self._tail_cache, self._latest)

    def latest(self) -> pa.Table:
        """The latest summary at this instant (LATEST_SCHEMA), without expanding the tail:
        for the write path, which must never pay for a read snapshot."""
        self._fold_latest()
        return self._latest

    def _fold_latest(self) -> None:
        if self._unfolded:
            self._latest = fold_latest([self._latest, *self._unfolded])
            self._unfolded = []
            self._unfolded_rows = 0

    @property
    def tail_rows(self) -> int:
        return self._tail_rows

    @property
    def parts(self) -> tuple[Part, ...]:
        """Committed metrics files in segment order."""
        return tuple(self._parts)

    @property
    def latest_segment(self) -> int:
        """Last WAL segment that latest.parquet covers (files up to it are settled)."""
        return self._latest_segment

    def replace_parts(self, old: Sequence[Part], new: Part) -> None:
        """Swap compacted ``old`` parts for ``new`` in one loop step (the compactor's commit)."""
        missing = [p.path.name for p in old if p not in self._parts]
        if missing:
            raise RuntimeError(f"cannot replace parts no longer live: {missing}")
        gone = set(map(id, old))
        self._parts = sorted(
            [p for p in self._parts if id(p) not in gone] + [new], key=lambda p: p.first
        )

    # -- flush ----------------------------------------------------------------------------

    async def flush(self) -> None:
        """Move every point acked so far into a Parquet file (see the class docstring)."""
        async with self._flush_lock:
            await self._flush_locked()

    async def _flush_locked(self) -> None:
        wal = self._wal
        if wal is None or self._failed is not None:
            raise (
                StoreClosed("metric store is not open")
                if wal is None
                else WalFailed(str(self._failed))
            )
        last = wal.rotate() if wal.segment_has_records else wal.segment - 1
        first = self._first_unflushed
        if first > last:
            return
        # Every record of segments <= last was appended before the rotation; once they are
        # durable, _on_durable has put them all in self._chunks.
        await wal.sync()
        chunks = [c for c in self._chunks if c.segment <= last]
        rows = sum(c.table.num_rows for c in chunks)
        for chunk in chunks:
            for stream_id, seq in chunk.watermarks.items():
                self._unsaved_watermarks[stream_id] = max(
                    self._unsaved_watermarks.get(stream_id, 0), seq
                )
        if rows:
            part, latest_flushed = await asyncio.to_thread(
                self._write_part,
                [c.table for c in chunks],
                [c.summary for c in chunks],
                first,
                last,
            )
            # The swap: in one loop step the points leave the tail and appear in the files,
            # so a snapshot sees each of them exactly once.
            flushed = set(map(id, chunks))
            self._chunks = [c for c in self._chunks if id(c) not in flushed]
            self._parts = sorted([*self._parts, part], key=lambda p: p.first)
            self._tail_rows -= rows
            self._tail_cache = None
            self._latest_flushed = latest_flushed
        else:
            self._chunks = [c for c in self._chunks if c.segment > last]
        self._tail_bytes -= sum(c.nbytes for c in chunks)
        expanded = any(c.expanded is not None for c in chunks)
        del chunks  # the flushed points: free them now, not after the steps below
        if expanded:
            # Snapshots expanded them on this thread; see _write_part.
            pa.default_memory_pool().release_unused()
        self._first_unflushed = last + 1
        self._last_flush = time.monotonic()
        self._wake_room_waiters()
        if self._unsaved_watermarks:
            saving = dict(self._unsaved_watermarks)
            await asyncio.to_thread(self._catalog.save_stream_watermarks, saving)
            for stream_id, seq in saving.items():
                if self._unsaved_watermarks.get(stream_id) == seq:
                    del self._unsaved_watermarks[stream_id]
        if rows:
            await asyncio.to_thread(
                write_latest_file, self._latest_flushed, self._dir.latest_file, last
            )
            self._latest_segment = last
        await asyncio.to_thread(wal.delete_segments, last)
        if rows:
            logger.debug("flushed %d points to %s", rows, metrics_file_name(first, last))
            if self.on_flushed is not None:
                self.on_flushed()

    def _write_part(
        self, tables: list[pa.Table], summaries: list[pa.Table], first: int, last: int
    ) -> tuple[Part, pa.Table]:
        # Worker thread. Reads self._latest_flushed, which only the (serialised) flush replaces.
        path = self._dir.metrics_dir / metrics_file_name(first, last)
        points = sort_metrics(pa.concat_tables(tables))
        write_metrics_file(points, path)
        rows = points.num_rows
        del points
        latest = fold_latest([self._latest_flushed, *summaries])
        # The sorted copy was this thread's: hand its pages back to the OS now rather than
        # when the allocator gets round to it (mimalloc keeps freed pages for a while).
        pa.default_memory_pool().release_unused()
        return Part(first, last, path, path.stat().st_size, rows), latest

    async def _flush_loop(self) -> None:
        while self._state == "open":
            timeout = max(0.0, self._last_flush + self._flush_interval_s - time.monotonic())
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._flush_wanted.wait(), timeout)
            self._flush_wanted.clear()
            if self._state != "open":
                return
            due = self._flush_due() or (
                time.monotonic() - self._last_flush >= self._flush_interval_s
            )
            if self._over_bound():
                due = True
            if not due:
                continue
            try:
                await self.flush()
            except Exception:  # points stay in the tail and the WAL; retried next interval
                logger.exception("flush failed; retrying in %.1f s", self._flush_interval_s)
                self._last_flush = time.monotonic()
            else:
                self._last_flush = time.monotonic()
