"""The tier files of metrics files (layout.TIER_SCHEMA) held in memory for the read side: which
series each metrics file holds (its index rows), which have pre-aggregated tiers, and those
rows, sliced by series and shift. A cache bounded in bytes, keyed by the metrics file's
identity (path, size, mtime) and checked against what the tier file says it summarises.

Read-only; never writes or deletes a tier file (the write side owns them).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from steppe.ingest.layout import (
    TIER_INDEX_SHIFT,
    TIER_SHIFTS,
    TIER_SOURCE_MTIME,
    TIER_SOURCE_SIZE,
    tiers_path,
)

__all__ = ["ROW_COLUMNS", "FileTiers", "TierIndex"]

Pairs = frozenset[tuple[str, str]]

#: The summary columns of a tier row (TIER_SCHEMA without run_id, key, shift, bucket).
ROW_COLUMNS = [
    "count", "sum", "min", "max", "first", "first_step", "first_ts", "last", "last_step",
    "last_ts", "ts_lo", "ts_hi",
]  # fmt: skip


@dataclass(frozen=True)
class FileTiers:
    """One metrics file's tier rows, by (run_id, key, shift)."""

    #: Every (run_id, key) with points in the metrics file.
    present: Pairs
    #: Those with tier rows at every shift of TIER_SHIFTS.
    tiered: Pairs
    #: bucket plus ROW_COLUMNS, sorted by run_id, key, shift, bucket.
    table: pa.Table
    slices: dict[tuple[str, str, int], tuple[int, int]]

    def rows(
        self, run_id: str, key: str, shift: int, first: int | None, last: int | None
    ) -> pa.Table | None:
        """ROW_COLUMNS of the series' rows at ``shift`` with first <= bucket <= last."""
        found = self.slices.get((run_id, key, shift))
        if found is None:
            return None
        rows = self.table.slice(*found)
        if first is not None or last is not None:
            # A series' rows at one shift are sorted by bucket: two binary searches, no mask.
            bucket = rows.column("bucket").to_numpy()
            start = 0 if first is None else int(np.searchsorted(bucket, first, side="left"))
            stop = len(bucket) if last is None else int(np.searchsorted(bucket, last, "right"))
            rows = rows.slice(start, max(0, stop - start))
        return rows.select(ROW_COLUMNS)


class TierIndex:
    """``of(file)``: the ``FileTiers`` of a metrics file, or None when it has no tier file a
    reader may trust (none, stale or unreadable: then read its points). Thread-safe; holds
    at most ``max_bytes`` of tier rows (least recently used files dropped first)."""

    def __init__(self, max_bytes: int = 128 << 20) -> None:
        self._max_bytes = max_bytes
        self._bytes = 0
        self._lock = threading.Lock()
        self._known: dict[Path, tuple[tuple[int, int], FileTiers | None]] = {}

    def of(self, metrics_file: Path) -> FileTiers | None:
        try:
            stat = metrics_file.stat()
        except FileNotFoundError:
            return None
        identity = (stat.st_size, stat.st_mtime_ns)
        with self._lock:
            known = self._known.pop(metrics_file, None)
            if known is not None:
                self._known[metrics_file] = known  # now the most recently used
        if known is not None and known[0] == identity:
            return known[1]
        found = _read(metrics_file, identity)
        size = _size(found)
        with self._lock:
            old = self._known.pop(metrics_file, None)
            if old is not None:
                self._bytes -= _size(old[1])
            while self._known and self._bytes + size > self._max_bytes:
                oldest = next(iter(self._known))
                self._bytes -= _size(self._known.pop(oldest)[1])
            self._known[metrics_file] = (identity, found)
            self._bytes += size
        return found


def _size(tiers: FileTiers | None) -> int:
    return 0 if tiers is None else tiers.table.nbytes + 200 * len(tiers.slices)


def _read(metrics_file: Path, identity: tuple[int, int]) -> FileTiers | None:
    path = tiers_path(metrics_file)
    try:
        meta = pq.read_metadata(path).metadata or {}
        source = (int(meta.get(TIER_SOURCE_SIZE, -1)), int(meta.get(TIER_SOURCE_MTIME, -1)))
        if source != identity:
            return None  # written for another file of that name: never trust it
        table = pq.read_table(path)
    except (OSError, ValueError):  # missing, half written or damaged: the points still answer
        return None
    groups = table.group_by(["run_id", "key", "shift"], use_threads=False).aggregate(
        [("bucket", "count")]
    )
    slices: dict[tuple[str, str, int], tuple[int, int]] = {}
    offset = 0
    runs = pc.cast(groups.column("run_id"), "string").to_pylist()
    keys = pc.cast(groups.column("key"), "string").to_pylist()
    shifts = groups.column("shift").to_pylist()
    for run_id, key, shift, n in zip(
        runs, keys, shifts, groups.column("bucket_count").to_pylist(), strict=True
    ):
        slices[(run_id, key, shift)] = (offset, n)
        offset += n
    present = frozenset((r, k) for r, k, s in slices if s == TIER_INDEX_SHIFT)
    tiered = frozenset((r, k) for r, k, s in slices if s == TIER_SHIFTS[-1])
    rows = table.select(["bucket", *ROW_COLUMNS]).combine_chunks()
    return FileTiers(present, tiered, rows, slices)
