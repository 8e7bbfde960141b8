"""Metrics Parquet files: the on-disk format (zstd, delta-packed steps, byte-stream-split
values, sorted by run, key, step, timestamp), sorting a table by series with integer codes,
committing a file atomically, and ``Part``, one committed file and the WAL segments it covers.

Pure functions over Arrow tables and paths; the store (steppe.ingest.store) and the compactor
call them from worker threads.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from steppe.ingest import wire
from steppe.ingest.layout import (
    METRICS_FILE_RE,
    METRICS_SCHEMA,
)
from steppe.ingest.wal import (
    fsync_dir,
)

logger = logging.getLogger("steppe.ingest.metrics_files")

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


def temp_path(final: Path) -> Path:
    # A leading dot and a .tmp suffix: never matches METRICS_FILE_RE, so readers skip it.
    return final.with_name(f".{final.name}.tmp")


def commit_file(write: Callable[[Path], None], final: Path) -> None:
    """Write to a temp name, fsync it, rename it over ``final``, fsync the directory."""
    temp = temp_path(final)
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


def in_step_order(step: pa.Array, timestamp: pa.Array, same: pa.Array | None = None) -> bool:
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
    if not in_step_order(step, timestamp, same):
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

    commit_file(write, path)


def read_metrics_file(path: Path) -> pa.Table:
    return pq.read_table(path, schema=METRICS_SCHEMA)


def read_metrics_file_encoded(path: Path) -> pa.Table:
    """A metrics file as TAIL_SCHEMA columns (the file's own dictionaries, no strings per row)."""
    table = pq.read_table(path, columns=METRICS_SCHEMA.names, read_dictionary=["run_id", "key"])
    return as_dictionary_table(table)
