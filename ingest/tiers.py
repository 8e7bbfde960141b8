"""Pre-aggregated tiers of a metrics file (layout.TIER_SCHEMA), written beside it when the
store flushes or the compactor merges, so a wide chart reads thousands of summary rows, not
millions of points.

Pure functions over an already sorted points table; called from the same worker threads that
write the metrics file. A tier file is an optimisation: failing to write one loses nothing
(readers fall back to the points), so callers log and go on.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from steppe.ingest.layout import (
    TIER_INDEX_SHIFT,
    TIER_MIN_POINTS,
    TIER_SCHEMA,
    TIER_SHIFTS,
    TIER_SOURCE_MTIME,
    TIER_SOURCE_SIZE,
    tiers_path,
)
from steppe.ingest.metrics_files import commit_file

__all__ = ["compute_tiers", "remove_tiers", "try_write_tiers", "write_tiers"]

logger = logging.getLogger("steppe.ingest.tiers")

#: The reader (query/tier_files.py) loads a tier file whole into its cache, so row groups
#: are for outside tools only; large ones write faster (a 1M-point series has ~18k rows).
TIER_ROW_GROUP_ROWS = 65536
#: Dictionaries only where values repeat (the float summaries of noisy curves never do, and
#: trying costs a third of the write); the integer columns rise or barely change within a
#: series, which delta encoding packs smaller and faster than zstd alone.
_DICTIONARY_COLUMNS = ["run_id", "key", "shift"]
_DELTA_COLUMNS = {
    name: "DELTA_BINARY_PACKED"
    for name in (
        "bucket",
        "count",
        "first_step",
        "first_ts",
        "last_step",
        "last_ts",
        "ts_lo",
        "ts_hi",
    )
}


def _runs(starts: np.ndarray, n: int) -> np.ndarray:
    """Index one past the end of each run beginning at ``starts`` (ascending, starts[0] = 0)."""
    ends = np.empty_like(starts)
    ends[:-1] = starts[1:]
    ends[-1] = n
    return ends


def _summarise(level: dict[str, np.ndarray], starts: np.ndarray) -> dict[str, np.ndarray]:
    """The summaries of consecutive runs of ``level``'s rows (points or finer buckets) that
    begin at ``starts``: counts and sums add, min/max skip NaN (np.fmin/fmax: NaN only when
    every value is), first/last come from the run's first/last row (rows are in (step,
    timestamp) order within a series)."""
    last = _runs(starts, len(level["series"])) - 1
    with np.errstate(invalid="ignore", over="ignore"):  # inf - inf is NaN, as in SQL's sum
        total = np.add.reduceat(level["sum"], starts)
    return {
        "series": level["series"][starts],
        "count": np.add.reduceat(level["count"], starts),
        "sum": total,
        "min": np.fmin.reduceat(level["min"], starts),
        "max": np.fmax.reduceat(level["max"], starts),
        "first": level["first"][starts],
        "first_step": level["first_step"][starts],
        "first_ts": level["first_ts"][starts],
        "last": level["last"][last],
        "last_step": level["last_step"][last],
        "last_ts": level["last_ts"][last],
        "ts_lo": np.minimum.reduceat(level["ts_lo"], starts),
        "ts_hi": np.maximum.reduceat(level["ts_hi"], starts),
    }


def _starts(series: np.ndarray, bucket: np.ndarray | None) -> np.ndarray:
    """Where a new series (or, given ``bucket``, a new bucket of the same series) begins."""
    change = series[1:] != series[:-1]
    if bucket is not None:
        change |= bucket[1:] != bucket[:-1]
    return np.concatenate(([0], np.flatnonzero(change) + 1))


#: Points summarised per numpy pass: the 2^6 buckets are computed a batch at a time, so the
#: transient arrays stay a few MiB however large the file (a bucket cut by a batch boundary
#: is two partial rows, merged exactly in the next pass).
TIER_BATCH_ROWS = 1 << 18


def _codes(column: pa.Array) -> np.ndarray:
    """Integer codes of one batch's string or dictionary column (equal strings, equal codes)."""
    if not pa.types.is_dictionary(column.type):
        column = pc.dictionary_encode(column)
    codes: np.ndarray = column.indices.to_numpy(zero_copy_only=False)
    return codes


def _finest(
    batch: pa.RecordBatch, first_series: int, same_as_before: bool, shift: int
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The 2^shift buckets of one batch of sorted points (series numbered from
    ``first_series``, which the batch's first row continues when ``same_as_before``), and the
    rows where a new series begins."""
    n = batch.num_rows
    run_codes, key_codes = _codes(batch.column("run_id")), _codes(batch.column("key"))
    step = batch.column("step").to_numpy(zero_copy_only=False)
    ts = batch.column("timestamp").to_numpy(zero_copy_only=False)
    value = batch.column("value").to_numpy(zero_copy_only=False)
    series_change = (run_codes[1:] != run_codes[:-1]) | (key_codes[1:] != key_codes[:-1])
    new_series = np.flatnonzero(series_change) + 1
    bucket = step >> shift
    series_change |= bucket[1:] != bucket[:-1]
    starts = np.concatenate(([0], np.flatnonzero(series_change) + 1))
    series_starts = new_series if same_as_before else np.concatenate(([0], new_series))
    base = first_series - (1 if same_as_before else 0)
    series = base + np.searchsorted(series_starts, starts, side="right")
    if not same_as_before:
        series -= 1
    last = _runs(starts, n) - 1
    with np.errstate(invalid="ignore", over="ignore"):  # inf - inf is NaN, as in SQL's sum
        total = np.add.reduceat(value, starts)
    level = {
        "series": series.astype(np.int64),
        "count": np.diff(np.append(starts, n)).astype(np.int64),
        "sum": total,
        "min": np.fmin.reduceat(value, starts),
        "max": np.fmax.reduceat(value, starts),
        "first": value[starts],
        "first_step": step[starts],
        "first_ts": ts[starts],
        "last": value[last],
        "last_step": step[last],
        "last_ts": ts[last],
        "ts_lo": np.minimum.reduceat(ts, starts),
        "ts_hi": np.maximum.reduceat(ts, starts),
    }
    return level, series_starts


def compute_tiers(points: pa.Table) -> pa.Table:
    """TIER_SCHEMA rows of ``points`` (METRICS_SCHEMA or TAIL_SCHEMA columns, sorted by
    run_id, key, step, timestamp as metrics files are), sorted by run_id, key, shift, bucket.

    numpy segment reductions (``reduceat``) over the sorted arrays: the 2^6 buckets from the
    points, a batch at a time, and each coarser level from the one below it (a bucket of 2^s
    steps is a run of consecutive finer buckets, since the rows are in series and step
    order). first/last are the values at the lowest/highest (step, timestamp) for the same
    reason, and min/max skip NaN unless every value is NaN, as the series queries do.
    """
    if not points.num_rows:
        return TIER_SCHEMA.empty_table()
    shift0 = TIER_SHIFTS[0]
    parts: list[dict[str, np.ndarray]] = []
    run_names: list[str] = []  # per series, in order
    key_names: list[str] = []
    previous: tuple[str, str] | None = None
    for offset in range(0, points.num_rows, TIER_BATCH_ROWS):
        # One batch per TIER_BATCH_ROWS rows however many chunks the table has (a flush of
        # many small appends is thousands of chunks; a pass per chunk would cost per chunk).
        batch = points.slice(offset, TIER_BATCH_ROWS).combine_chunks().to_batches()[0]
        head = (batch.column("run_id")[0].as_py(), batch.column("key")[0].as_py())
        same = head == previous
        level, series_starts = _finest(batch, len(run_names), same, shift0)
        parts.append(level)
        at = pa.array(series_starts, pa.int64())
        run_names += pc.take(batch.column("run_id"), at).cast(pa.string()).to_pylist()
        key_names += pc.take(batch.column("key"), at).cast(pa.string()).to_pylist()
        previous = (batch.column("run_id")[-1].as_py(), batch.column("key")[-1].as_py())
    joined = {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}
    # Buckets cut by a batch boundary come in two rows: merge them.
    finest = _summarise(joined, _starts(joined["series"], joined["first_step"] >> shift0))
    # The index: every series of the file, whole.
    index = _summarise(finest, _starts(finest["series"], None))
    levels = [(TIER_INDEX_SHIFT, np.zeros(len(index["series"]), np.int64), index)]
    # Tiers only for the series big enough for a reader to want summaries of.
    big = index["count"] >= TIER_MIN_POINTS
    if big.any():
        if not big.all():
            keep = big[finest["series"]]
            finest = {name: column[keep] for name, column in finest.items()}
        levels.append((shift0, finest["first_step"] >> shift0, finest))
        finer = finest
        for shift in TIER_SHIFTS[1:]:
            finer = _summarise(finer, _starts(finer["series"], finer["first_step"] >> shift))
            levels.append((shift, finer["first_step"] >> shift, finer))
    shifts = np.concatenate([np.full(len(lv["series"]), s, np.int8) for s, _, lv in levels])
    buckets = np.concatenate([b for _, b, _ in levels])
    series_of = np.concatenate([lv["series"] for _, _, lv in levels])
    order = np.lexsort((buckets, shifts, series_of))
    series_of = pa.array(series_of[order])
    columns: dict[str, pa.Array] = {
        "run_id": pa.array(run_names, pa.string()).take(series_of),
        "key": pa.array(key_names, pa.string()).take(series_of),
        "shift": pa.array(shifts[order]),
        "bucket": pa.array(buckets[order]),
    }
    for name in TIER_SCHEMA.names[4:]:
        columns[name] = pa.array(np.concatenate([lv[name] for _, _, lv in levels])[order])
    return pa.table(columns).select(TIER_SCHEMA.names).cast(TIER_SCHEMA)


def write_tiers(points: pa.Table, metrics_file: Path) -> Path | None:
    """Write the tiers (and index) of the committed ``metrics_file`` holding ``points``
    (sorted); None when it holds no points (no file is written)."""
    tiers = compute_tiers(points)
    if not tiers.num_rows:
        return None
    stat = metrics_file.stat()
    tiers = tiers.replace_schema_metadata(
        {TIER_SOURCE_SIZE: str(stat.st_size), TIER_SOURCE_MTIME: str(stat.st_mtime_ns)}
    )
    final = tiers_path(metrics_file)
    final.parent.mkdir(parents=True, exist_ok=True)

    def write(temp: Path) -> None:
        pq.write_table(
            tiers,
            temp,
            compression="zstd",
            row_group_size=TIER_ROW_GROUP_ROWS,
            use_dictionary=_DICTIONARY_COLUMNS,
            column_encoding=_DELTA_COLUMNS,
        )

    commit_file(write, final)
    return final


def remove_tiers(metrics_file: Path) -> None:
    """Delete the tiers of ``metrics_file`` (with it: a tier file never outlives its data)."""
    tiers_path(metrics_file).unlink(missing_ok=True)


def try_write_tiers(points: pa.Table, metrics_file: Path) -> None:
    """``write_tiers``, logging a failure instead of raising (readers use the points)."""
    try:
        write_tiers(points, metrics_file)
    except Exception:  # an optimisation only: the metrics file is committed and complete
        logger.exception("could not write the tiers of %s", metrics_file.name)
        remove_tiers(metrics_file)
