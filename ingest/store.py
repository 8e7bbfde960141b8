"""MetricStore: the acked tail in memory, Parquet flushes, the per-series latest summary, recovery.

Owns the WAL and the metrics files of one data dir and runs on the server's event loop; Parquet
writing, fsyncs and recovery reads run in worker threads. It does not validate input or speak gRPC.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

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
    "LATEST_SEGMENT_KEY",
    "MetricStore",
    "Part",
    "StoreClosed",
    "fold_latest",
    "points_as_latest",
    "read_latest_file",
    "sort_metrics",
    "write_latest_file",
    "write_metrics_file",
]

logger = logging.getLogger("steppe.ingest.store")

#: Key-value metadata of latest.parquet: the last WAL segment the summary covers.
LATEST_SEGMENT_KEY = b"steppe.last_segment"
#: Rows per Parquet row group: big enough for good compression and few footers, small
#: enough that DuckDB parallelises over a 1M-row flush and prunes by run_id/key statistics.
ROW_GROUP_ROWS = 256 * 1024
_SORT_KEYS = [
    ("run_id", "ascending"),
    ("key", "ascending"),
    ("step", "ascending"),
    ("timestamp", "ascending"),
]
_PARQUET_OPTIONS: dict[str, object] = {
    "compression": "zstd",
    "use_dictionary": ["run_id", "key"],
    "column_encoding": {
        "step": "DELTA_BINARY_PACKED",
        "timestamp": "DELTA_BINARY_PACKED",
        "value": "BYTE_STREAM_SPLIT",
    },
    "write_statistics": True,
    "sorting_columns": [pq.SortingColumn(i) for i in range(4)],
}


class StoreClosed(RuntimeError):
    """The store is not open (not yet opened, or closed)."""


@dataclass(frozen=True)
class Part:
    """A committed metrics file covering WAL segments ``first..last``."""

    first: int
    last: int
    path: Path
    size: int

    @classmethod
    def at(cls, path: Path) -> Part | None:
        match = METRICS_FILE_RE.match(path.name)
        if match is None:
            return None
        return cls(int(match.group(1)), int(match.group(2)), path, path.stat().st_size)

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


def sort_metrics(table: pa.Table) -> pa.Table:
    """Sorted by (run_id, key, step, timestamp); stable, so equal points keep arrival order."""
    return table.take(pc.sort_indices(table, sort_keys=_SORT_KEYS))


def write_metrics_file(table: pa.Table, path: Path) -> None:
    """Durably write an already sorted METRICS_SCHEMA table as an immutable metrics file."""
    _commit_file(
        lambda temp: pq.write_table(table, temp, row_group_size=ROW_GROUP_ROWS, **_PARQUET_OPTIONS),
        path,
    )


def read_metrics_file(path: Path) -> pa.Table:
    return pq.read_table(path, schema=METRICS_SCHEMA)


# -- latest summary -----------------------------------------------------------------------


def _empty_latest() -> pa.Table:
    return LATEST_SCHEMA.empty_table()


def points_as_latest(points: pa.Table) -> pa.Table:
    """Each point as a one-point summary (min/max null for NaN), in arrival order."""
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

    Latest is the row with the highest step, then the newest timestamp, then the later
    arrival: a stable sort on (step, timestamp) keeps arrival order among ties, and an
    ordered (single-threaded) group-by takes the last row of each series.
    """
    parts = [p for p in parts if p.num_rows]
    if not parts:
        return _empty_latest()
    rows = pa.concat_tables(parts)
    rows = rows.take(
        pc.sort_indices(rows, sort_keys=[("step", "ascending"), ("timestamp", "ascending")])
    )
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


@dataclass(frozen=True)
class _Chunk:
    """Acked points of one WAL segment, applied together; ``watermarks`` = highest seq per
    stream among them."""

    segment: int
    table: pa.Table
    watermarks: dict[str, int]


@dataclass
class _Inflight:
    position: Position
    stream_id: str
    seq: int
    table: pa.Table
    future: asyncio.Future[None]


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
        latest = fold_latest([latest, points_as_latest(read_metrics_file(part.path))])
    write_latest_file(latest, data_dir.latest_file, max_segment)
    logger.info("rebuilt %s from %d metrics file(s)", data_dir.latest_file.name, len(newer))
    return latest


def _recover(data_dir: DataDir, catalog: Catalog) -> _Recovered:
    """Blocking recovery of the on-disk state (see MetricStore for the protocol)."""
    data_dir.metrics_dir.mkdir(parents=True, exist_ok=True)
    data_dir.wal_dir.mkdir(parents=True, exist_ok=True)
    _temp_path(data_dir.latest_file).unlink(missing_ok=True)
    parts = _live_parts(data_dir.metrics_dir)
    max_segment = max((p.last for p in parts), default=0)
    latest = _recover_latest(data_dir, parts, max_segment)
    watermarks = catalog.stream_watermarks()
    segments = list_segments(data_dir.wal_dir)

    # Segments already in Parquet only contribute watermarks: a crash may have hit between
    # the file's rename and the watermark save. Save first, then delete them.
    flushed = [(n, path) for n, path in segments if n <= max_segment]
    held: dict[str, int] = {}
    for _, path in flushed:
        for payload in read_segment(path):
            stream_id, seq = wire.batch_position(payload)
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
            watermarks[batch.stream_id] = held[batch.stream_id] = batch.seq
            tables.append(decoded.table)
        if held:
            table = pa.concat_tables(tables).combine_chunks() if len(tables) > 1 else tables[0]
            recovered.chunks.append(_Chunk(number, table, held))
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
    ) -> None:
        self._dir = data_dir
        self._catalog = catalog
        self._flush_rows = flush_rows
        self._flush_interval_s = flush_interval_s
        #: Backpressure bound on acked-but-unflushed plus in-flight points (DESIGN 8).
        self._max_tail_rows = max_tail_rows or 4 * flush_rows
        self._state = "new"
        self._wal: WriteAheadLog | None = None
        self._parts: list[Part] = []
        self._chunks: list[_Chunk] = []
        self._tail_rows = 0
        self._tail_cache: pa.Table | None = None
        self._inflight: deque[_Inflight] = deque()
        self._inflight_rows = 0
        self._watermarks: dict[str, int] = {}
        self._latest = _empty_latest()
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
        self._chunks = recovered.chunks
        self._tail_rows = sum(c.table.num_rows for c in self._chunks)
        self._latest = fold_latest(
            [self._latest_flushed, *(points_as_latest(c.table) for c in self._chunks)]
        )
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
        position = wal.append(payload)
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._inflight.append(_Inflight(position, stream_id, seq, table, future))
        self._inflight_rows += table.num_rows
        self._watermarks[stream_id] = max(self._watermarks.get(stream_id, 0), seq)
        return future

    def barrier(self) -> asyncio.Future[None]:
        """Resolves when everything appended so far is durable and applied."""
        return self._open_wal().sync()

    async def wait_for_room(self) -> None:
        """Backpressure: wait while the unflushed tail is at its bound (a flush frees it)."""
        while (
            self._tail_rows + self._inflight_rows >= self._max_tail_rows
            and self._state == "open"
            and self._failed is None
        ):
            self._flush_wanted.set()
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._room_waiters.append(waiter)
            await waiter

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
                table = tables[0] if len(tables) == 1 else pa.concat_tables(tables).combine_chunks()
                watermarks: dict[str, int] = {}
                for entry in group:
                    watermarks[entry.stream_id] = max(watermarks.get(entry.stream_id, 0), entry.seq)
                self._chunks.append(_Chunk(group[0].position.segment, table, watermarks))
                start = i
        rows = sum(entry.table.num_rows for entry in ready)
        self._inflight_rows -= rows
        self._tail_rows += rows
        self._tail_cache = None
        if rows:
            new_points = pa.concat_tables([entry.table for entry in ready])
            self._latest = fold_latest([self._latest, points_as_latest(new_points)])
        for entry in ready:
            if not entry.future.done():
                entry.future.set_result(None)
        if self._tail_rows >= self._flush_rows:
            self._flush_wanted.set()

    def _on_wal_failure(self, exc: BaseException) -> None:
        self._failed = exc
        while self._inflight:
            entry = self._inflight.popleft()
            if not entry.future.done():
                entry.future.set_exception(exc)
        self._wake_room_waiters()

    def _wake_room_waiters(self) -> None:
        waiters, self._room_waiters = self._room_waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    # -- read path ------------------------------------------------------------------------

    def snapshot(self) -> Snapshot:
        """Files + tail + latest at this instant (call on the loop; the result is immutable)."""
        if self._tail_cache is None:
            self._tail_cache = (
                pa.concat_tables([c.table for c in self._chunks])
                if self._chunks
                else METRICS_SCHEMA.empty_table()
            )
        return Snapshot(tuple(p.path for p in self._parts), self._tail_cache, self._latest)

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
            points = pa.concat_tables([c.table for c in chunks])
            part, latest_flushed = await asyncio.to_thread(self._write_part, points, first, last)
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

    def _write_part(self, points: pa.Table, first: int, last: int) -> tuple[Part, pa.Table]:
        # Worker thread. Reads self._latest_flushed, which only the (serialised) flush replaces.
        path = self._dir.metrics_dir / metrics_file_name(first, last)
        write_metrics_file(sort_metrics(points), path)
        latest = fold_latest([self._latest_flushed, points_as_latest(points)])
        return Part(first, last, path, path.stat().st_size), latest

    async def _flush_loop(self) -> None:
        while self._state == "open":
            timeout = max(0.0, self._last_flush + self._flush_interval_s - time.monotonic())
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._flush_wanted.wait(), timeout)
            self._flush_wanted.clear()
            if self._state != "open":
                return
            due = self._tail_rows >= self._flush_rows or (
                time.monotonic() - self._last_flush >= self._flush_interval_s
            )
            if self._tail_rows + self._inflight_rows >= self._max_tail_rows:
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
