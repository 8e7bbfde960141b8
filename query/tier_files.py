"""Which series of a metrics file have pre-aggregated tiers (layout.TIER_SCHEMA) a reader may
trust: a bounded cache keyed by the metrics file's identity (path, size, mtime), checked
against what the tier file says it summarises.

Read-only; never writes or deletes a tier file (the write side owns them).
"""

from __future__ import annotations

import threading
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq

from steppe.ingest.layout import TIER_SOURCE_MTIME, TIER_SOURCE_SIZE, tiers_path

__all__ = ["TierIndex"]

Covered = frozenset[tuple[str, str]]
_NONE: Covered = frozenset()


class TierIndex:
    """``covered(file)``: the (run_id, key) pairs the tiers of ``file`` summarise, or an
    empty set when it has none, or they are stale or unreadable (then read the points).
    Thread-safe; holds at most ``max_files`` entries (oldest dropped first)."""

    def __init__(self, max_files: int = 4096) -> None:
        self._max = max_files
        self._lock = threading.Lock()
        self._known: dict[Path, tuple[tuple[int, int], Covered]] = {}

    def covered(self, metrics_file: Path) -> Covered:
        try:
            stat = metrics_file.stat()
        except FileNotFoundError:
            return _NONE
        identity = (stat.st_size, stat.st_mtime_ns)
        with self._lock:
            known = self._known.get(metrics_file)
        if known is not None and known[0] == identity:
            return known[1]
        found = _read_covered(metrics_file, identity)
        with self._lock:
            if len(self._known) >= self._max:
                self._known.pop(next(iter(self._known)))
            self._known[metrics_file] = (identity, found)
        return found


def _read_covered(metrics_file: Path, identity: tuple[int, int]) -> Covered:
    path = tiers_path(metrics_file)
    try:
        meta = pq.read_metadata(path).metadata or {}
        source = (int(meta.get(TIER_SOURCE_SIZE, -1)), int(meta.get(TIER_SOURCE_MTIME, -1)))
        if source != identity:
            return _NONE  # written for another file of that name: never trust it
        pairs = pq.read_table(path, columns=["run_id", "key"]).group_by(["run_id", "key"])
        table = pairs.aggregate([])
    except (OSError, ValueError):  # missing, half written or damaged: the points still answer
        return _NONE
    runs = pc.cast(table.column("run_id"), "string").to_pylist()
    keys = pc.cast(table.column("key"), "string").to_pylist()
    return frozenset(zip(runs, keys, strict=True))
