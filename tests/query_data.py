"""Test data for steppe.query: metrics files in a real data dir layout, a snapshot source
holding files + an Arrow tail + a latest table, and plain-Python reference answers."""

from __future__ import annotations

import math
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from steppe.ingest.layout import (
    LATEST_SCHEMA,
    METRICS_SCHEMA,
    DataDir,
    Snapshot,
    metrics_file_name,
)

#: (run_id, key, step, timestamp_ms, value), the METRICS_SCHEMA column order.
Point = tuple[str, str, int, int, float]


def metrics_table(points: Iterable[Point]) -> pa.Table:
    rows = list(points)
    columns = list(zip(*rows, strict=True)) if rows else [[] for _ in METRICS_SCHEMA.names]
    arrays = [
        pa.array(col, type=field.type) for col, field in zip(columns, METRICS_SCHEMA, strict=True)
    ]
    return pa.table(arrays, schema=METRICS_SCHEMA)


def write_metrics_file(
    data_dir: DataDir, segment: int, points: Iterable[Point], row_group_size: int | None = None
) -> Path:
    """One committed metrics file named as ingest names them (WAL segment range)."""
    data_dir.metrics_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir.metrics_dir / metrics_file_name(segment, segment)
    pq.write_table(metrics_table(points), path, row_group_size=row_group_size)
    return path


def _order(point: Point) -> tuple[int, int]:
    return point[2], point[3]


def history(points: Iterable[Point], run_id: str, key: str) -> list[tuple[int, float, int]]:
    """Reference: every (step, value, timestamp) of one metric, by step then timestamp."""
    chosen = sorted((p for p in points if p[0] == run_id and p[1] == key), key=_order)
    return [(p[2], p[4], p[3]) for p in chosen]


def latest_rows(points: Iterable[Point]) -> dict[tuple[str, str], dict[str, object]]:
    """Reference LATEST_SCHEMA rows: highest step, newest timestamp, then largest value;
    min/max ignore NaN (None when all NaN); count counts every point."""
    groups: dict[tuple[str, str], list[Point]] = {}
    for point in points:
        groups.setdefault((point[0], point[1]), []).append(point)
    out: dict[tuple[str, str], dict[str, object]] = {}
    for (run_id, key), group in sorted(groups.items()):
        last = max(group, key=lambda p: (p[2], p[3], math.inf if math.isnan(p[4]) else p[4]))
        finite = [p[4] for p in group if not math.isnan(p[4])]
        out[run_id, key] = {
            "run_id": run_id,
            "key": key,
            "value": last[4],
            "step": last[2],
            "timestamp": last[3],
            "min": min(finite) if finite else None,
            "max": max(finite) if finite else None,
            "count": len(group),
        }
    return out


def latest_table(points: Iterable[Point]) -> pa.Table:
    rows = list(latest_rows(points).values())
    return pa.Table.from_pylist(rows, schema=LATEST_SCHEMA)


class FixedSource:
    """A SnapshotSource returning the snapshot it holds; records the calling threads so a
    test can check snapshots are taken on the event-loop thread."""

    def __init__(self, snapshot: Snapshot) -> None:
        self.current = snapshot
        self.threads: list[threading.Thread] = []

    def snapshot(self) -> Snapshot:
        self.threads.append(threading.current_thread())
        return self.current


def snapshot_of(
    data_dir: DataDir, files: Sequence[Sequence[Point]], tail: Sequence[Point]
) -> Snapshot:
    """Write each group of ``files`` as one metrics file; the rest is the in-memory tail."""
    paths = tuple(
        write_metrics_file(data_dir, segment, group) for segment, group in enumerate(files, 1)
    )
    everything = [p for group in files for p in group] + list(tail)
    return Snapshot(files=paths, tail=metrics_table(tail), latest=latest_table(everything))


def same_floats(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == b
