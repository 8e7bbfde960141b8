"""The on-disk layout of a steppe data dir: paths and the metrics Arrow schema.

The one module both sides share: ingest writes this layout, query reads it. It holds
no logic beyond naming things; it must not import the rest of ingest.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import pyarrow as pa

from steppe.lock import LOCK_FILE_NAME

#: Columns of every metrics Parquet file and of the in-memory tail, in this order.
#: ``timestamp`` is milliseconds since the Unix epoch (MLflow's unit and name).
METRICS_SCHEMA = pa.schema(
    [
        pa.field("run_id", pa.string(), nullable=False),
        pa.field("key", pa.string(), nullable=False),
        pa.field("step", pa.int64(), nullable=False),
        pa.field("timestamp", pa.int64(), nullable=False),
        pa.field("value", pa.float64(), nullable=False),
    ]
)

#: Per (run_id, key) summary kept up to date as data arrives (MLflow's "latest":
#: highest step, then newest timestamp; min/max ignore NaN; count counts every point).
LATEST_SCHEMA = pa.schema(
    [
        pa.field("run_id", pa.string(), nullable=False),
        pa.field("key", pa.string(), nullable=False),
        pa.field("value", pa.float64(), nullable=False),
        pa.field("step", pa.int64(), nullable=False),
        pa.field("timestamp", pa.int64(), nullable=False),
        pa.field("min", pa.float64()),
        pa.field("max", pa.float64()),
        pa.field("count", pa.int64(), nullable=False),
    ]
)

#: Metrics files: ``metrics/part-<first WAL segment>-<last WAL segment>.parquet``
#: (zero-padded, so lexical order is WAL order). Written to a temp name, fsynced,
#: renamed; immutable afterwards, so outside tools can read them at any time.
METRICS_FILE_RE = re.compile(r"part-(\d{12})-(\d{12})\.parquet")

#: Pre-aggregated tiers of one metrics file: ``tiers/<the metrics file's name>``, one row per
#: (run_id, key, shift, bucket = step >> shift) of that file's points, for each shift in
#: TIER_SHIFTS, for the series with at least TIER_MIN_POINTS points in the file (the others
#: are cheap to read raw), plus one index row (shift TIER_INDEX_SHIFT, bucket 0) per series
#: of the file, big or not, summarising all its points there. Summaries are exact and merge
#: across files and tiers: count, sum, min (NaN only if every value is), max (likewise),
#: first/last (the value at the lowest / highest (step, timestamp)) with their step and
#: timestamp, and the timestamp range. Written after its metrics file and deleted with it;
#: its key-value metadata names the size and mtime of the metrics file it summarises, so a
#: reader never trusts a stale one.
TIER_SHIFTS = (6, 9, 12, 15, 18)
TIER_INDEX_SHIFT = -1
TIER_MIN_POINTS = 4096
TIER_SCHEMA = pa.schema(
    [
        pa.field("run_id", pa.string(), nullable=False),
        pa.field("key", pa.string(), nullable=False),
        pa.field("shift", pa.int8(), nullable=False),
        pa.field("bucket", pa.int64(), nullable=False),
        pa.field("count", pa.int64(), nullable=False),
        pa.field("sum", pa.float64(), nullable=False),
        pa.field("min", pa.float64(), nullable=False),
        pa.field("max", pa.float64(), nullable=False),
        pa.field("first", pa.float64(), nullable=False),
        pa.field("first_step", pa.int64(), nullable=False),
        pa.field("first_ts", pa.int64(), nullable=False),
        pa.field("last", pa.float64(), nullable=False),
        pa.field("last_step", pa.int64(), nullable=False),
        pa.field("last_ts", pa.int64(), nullable=False),
        pa.field("ts_lo", pa.int64(), nullable=False),
        pa.field("ts_hi", pa.int64(), nullable=False),
    ]
)
#: Tier files' key-value metadata: the summarised metrics file's size and st_mtime_ns.
TIER_SOURCE_SIZE = b"steppe.metrics_size"
TIER_SOURCE_MTIME = b"steppe.metrics_mtime_ns"

#: WAL segments: ``wal/<segment number>.wal``.
WAL_FILE_RE = re.compile(r"(\d{12})\.wal")


def metrics_file_name(first_segment: int, last_segment: int) -> str:
    return f"part-{first_segment:012d}-{last_segment:012d}.parquet"


def wal_file_name(segment: int) -> str:
    return f"{segment:012d}.wal"


@dataclass(frozen=True)
class DataDir:
    """Paths inside one data dir. Everything steppe stores lives below ``root``."""

    root: Path

    @classmethod
    def at(cls, path: str | Path) -> DataDir:
        return cls(Path(path).expanduser().resolve())

    @property
    def lock_file(self) -> Path:
        """Held (flock) by the owning server; holds its pid and addresses as JSON."""
        return self.root / LOCK_FILE_NAME

    @property
    def log_file(self) -> Path:
        """Output of a server started in the background by a client."""
        return self.root / "server.log"

    @property
    def catalog_file(self) -> Path:
        """SQLite catalog: experiments, runs, params, tags, stream watermarks."""
        return self.root / "catalog.sqlite"

    @property
    def wal_dir(self) -> Path:
        return self.root / "wal"

    @property
    def metrics_dir(self) -> Path:
        return self.root / "metrics"

    @property
    def tiers_dir(self) -> Path:
        return self.root / "tiers"

    @property
    def latest_file(self) -> Path:
        """LATEST_SCHEMA summary of everything in metrics/, rewritten on each flush."""
        return self.root / "latest.parquet"

    @property
    def artifacts_dir(self) -> Path:
        return self.root / "artifacts"

    def metrics_files(self) -> list[Path]:
        """Live metrics files in WAL order: temp files excluded, and so are files that a
        compacted file covers (they linger for a grace period, or after a crash)."""
        if not self.metrics_dir.is_dir():
            return []
        ranges: list[tuple[int, int, Path]] = []
        for path in self.metrics_dir.iterdir():
            match = METRICS_FILE_RE.fullmatch(path.name)
            if match:
                ranges.append((int(match.group(1)), int(match.group(2)), path))
        live = [
            (first, path)
            for first, last, path in ranges
            if not any(
                (lo, hi) != (first, last) and lo <= first and last <= hi for lo, hi, _ in ranges
            )
        ]
        return [path for _, path in sorted(live)]


def tiers_path(metrics_file: Path) -> Path:
    """Where the tiers of a metrics file (``<root>/metrics/part-*.parquet``) live."""
    return metrics_file.parent.parent / "tiers" / metrics_file.name


@dataclass(frozen=True)
class Snapshot:
    """A consistent view of all acked metrics at one instant.

    ``files`` are committed, immutable metrics files; ``tail`` holds the acked points not
    yet in any of them (METRICS_SCHEMA); ``latest`` summarises files + tail per
    (run_id, key) (LATEST_SCHEMA). A point is in exactly one of files or tail.
    """

    files: tuple[Path, ...]
    tail: pa.Table
    latest: pa.Table


class SnapshotSource(Protocol):
    """What the read side asks the write side for. Call on the server's event-loop thread;
    the returned objects are immutable and may then be used from any thread."""

    def snapshot(self) -> Snapshot: ...
