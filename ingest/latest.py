"""The per-series latest summary: MLflow's latest value of each (run, key), computed from a
batch, folded across batches and files, and kept in ``latest.parquet``.

MLflow's rule, in one place: the highest step, then the newest timestamp, then the largest
value (NaN above every number). Summaries are LATEST_SCHEMA tables; ``fold_latest`` is
associative, so the store folds them in any grouping.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from steppe.ingest.layout import (
    LATEST_SCHEMA,
    METRICS_SCHEMA,
)
from steppe.ingest.metrics_files import (
    as_dictionary_table,
    commit_file,
    in_step_order,
)

logger = logging.getLogger("steppe.ingest.latest")

#: Key-value metadata of latest.parquet: the last WAL segment the summary covers.
LATEST_SEGMENT_KEY = b"steppe.last_segment"
#: Batches whose dictionaries allow at most this many series are summarised slice by slice
#: after a sort by series; larger ones by a hash group-by.
_FEW_SERIES = 64


def empty_latest() -> pa.Table:
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
        if (series_sorted or in_step_order(step, timestamp)) and not _tied_at(
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
    in_order = series_sorted or in_step_order(step, timestamp)
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
        return empty_latest()
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
        return empty_latest()
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
    commit_file(lambda temp: pq.write_table(table, temp, compression="zstd"), path)
