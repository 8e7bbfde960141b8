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

#: Small row groups: the rows are sorted by series, shift and bucket, so a reader's filters
#: skip all but the few groups holding the rows it wants (a 1M-point series has ~18k rows).
TIER_ROW_GROUP_ROWS = 4096

_SUMMARY = [
    ("count", "sum"),
    ("sum", "sum"),
    ("min", "min"),
    ("max", "max"),
    ("first", "first"),
    ("first_step", "first"),
    ("first_ts", "first"),
    ("last", "last"),
    ("last_step", "last"),
    ("last_ts", "last"),
    ("ts_lo", "min"),
    ("ts_hi", "max"),
]


def compute_tiers(points: pa.Table) -> pa.Table:
    """TIER_SCHEMA rows of ``points`` (METRICS_SCHEMA or TAIL_SCHEMA columns, sorted by
    run_id, key, step, timestamp as metrics files are), sorted by run_id, key, shift, bucket.

    Arrow's ordered hash aggregation (one thread, groups in input order): first/last are the
    values at the lowest/highest (step, timestamp) because the rows are in that order, and
    min/max skip NaN unless every value is NaN, as the series queries do.
    """
    if not points.num_rows:
        return TIER_SCHEMA.empty_table()
    shift0 = TIER_SHIFTS[0]
    step, ts, value = points.column("step"), points.column("timestamp"), points.column("value")
    finest = (
        pa.table(
            {
                "run_id": points.column("run_id"),
                "key": points.column("key"),
                "bucket": pc.shift_right(step, shift0),
                "value": value,
                "step": step,
                "ts": ts,
            }
        )
        .group_by(["run_id", "key", "bucket"], use_threads=False)
        .aggregate(
            [
                ("value", "count"),
                ("value", "sum"),
                ("value", "min"),
                ("value", "max"),
                ("value", "first"),
                ("step", "first"),
                ("ts", "first"),
                ("value", "last"),
                ("step", "last"),
                ("ts", "last"),
                ("ts", "min"),
                ("ts", "max"),
            ]
        )
    )
    names = ["run_id", "key", "bucket", *(name for name, _ in _SUMMARY)]
    finest = finest.rename_columns(names)
    finest = pa.table(
        {name: finest.column(name).cast(pa.string()) if name in ("run_id", "key") else
         finest.column(name) for name in names}
    )  # fmt: skip
    # The index: every series of the file, whole.
    index = (
        finest.group_by(["run_id", "key"], use_threads=False)
        .aggregate(_SUMMARY)
        .rename_columns(["run_id", "key", *(name for name, _ in _SUMMARY)])
    )
    index = index.add_column(2, "bucket", pa.array([0] * index.num_rows, pa.int64()))
    index = index.add_column(2, "shift", pa.array([TIER_INDEX_SHIFT] * index.num_rows, pa.int8()))
    # Tiers only for the series big enough for a reader to want summaries of.
    big = index.filter(pc.greater_equal(index.column("count"), TIER_MIN_POINTS))
    if not big.num_rows:
        return index.select(TIER_SCHEMA.names).cast(TIER_SCHEMA)
    if big.num_rows < index.num_rows:
        finest = finest.join(
            big.select(["run_id", "key"]), ["run_id", "key"], join_type="left semi"
        )
        finest = finest.sort_by(
            [("run_id", "ascending"), ("key", "ascending"), ("bucket", "ascending")]
        )
    tiers = [
        index.select([*names[:2], "shift", *names[2:]]),
        finest.add_column(2, "shift", pa.array([shift0] * finest.num_rows, pa.int8())),
    ]
    finer = finest
    for shift in TIER_SHIFTS[1:]:
        grouped = finer.append_column(
            "coarse", pc.shift_right(finer.column("first_step"), shift)
        ).group_by(["run_id", "key", "coarse"], use_threads=False)
        finer = grouped.aggregate(_SUMMARY).rename_columns(names)
        tiers.append(finer.add_column(2, "shift", pa.array([shift] * finer.num_rows, pa.int8())))
    rows = pa.concat_tables(tiers).sort_by(
        [
            ("run_id", "ascending"),
            ("key", "ascending"),
            ("shift", "ascending"),
            ("bucket", "ascending"),
        ]
    )
    return rows.select(TIER_SCHEMA.names).cast(TIER_SCHEMA)


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
        pq.write_table(tiers, temp, compression="zstd", row_group_size=TIER_ROW_GROUP_ROWS)

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
