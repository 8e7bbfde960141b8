"""MetricStore: the acked tail in memory and its flushes to Parquet, the state machine of the
write side (append -> WAL group commit -> ack -> tail -> flush -> part).

Owns the WAL and the metrics files of one data dir and runs on the server's event loop; Parquet
writing, fsyncs and recovery reads run in worker threads. It does not validate input or speak gRPC.
Its pieces live beside it: the file format in steppe.ingest.metrics_files, the latest-value
algebra in steppe.ingest.latest, start-up recovery in steppe.ingest.recovery (their public
names are re-exported here).
Points stay dictionary-encoded (wire.DICT_METRICS_SCHEMA) from decode to Parquet: series are
sorted and grouped by integer codes, never by comparing strings per point.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Container, Sequence
from dataclasses import dataclass

import pyarrow as pa

from steppe import stream_ids
from steppe.ingest.catalog import StreamWatermarks
from steppe.ingest.latest import (
    LATEST_SEGMENT_KEY,
    empty_latest,
    fold_latest,
    points_as_latest,
    read_latest_file,
    summarize_points,
    write_latest_file,
)
from steppe.ingest.layout import (
    METRICS_SCHEMA,
    DataDir,
    Snapshot,
    metrics_file_name,
)
from steppe.ingest.metrics_files import (
    TAIL_SCHEMA,
    Part,
    as_dictionary_table,
    read_metrics_file,
    read_metrics_file_encoded,
    sort_metrics,
    write_metrics_file,
)
from steppe.ingest.recovery import MAX_SEQ, RESERVED_STREAM_PREFIX, Chunk, recover
from steppe.ingest.tiers import try_write_tiers
from steppe.ingest.wal import (
    Position,
    WalFailed,
    WriteAheadLog,
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

#: How long the watermark of an idle stream is kept (see MetricStore.expire_streams).
DEFAULT_STREAM_RETENTION_S = 7 * 86_400.0
#: After a restart, every stream keeps its watermark at least this long (or the retention,
#: if shorter), however long the server was down: its clients reconnect within seconds.
_RESTART_GRACE_S = 3600.0
#: Default byte bound on the tail plus in-flight batches (see MetricStore). Points cost about
#: 32 bytes in the tail (dictionary-encoded) and 64 in flight (table + WAL payload); a
#: flush briefly holds a sorted copy of what it writes on top.
MAX_TAIL_BYTES = 192 << 20
#: Unfolded latest summaries (rows) kept before folding them into the running summary, which
#: otherwise waits for a snapshot or for them to outnumber its own rows.
_FOLD_AFTER_ROWS = 4096


def _now_ms() -> int:
    return int(time.time() * 1000)


class StoreClosed(RuntimeError):
    """The store is not open (not yet opened, or closed)."""


@dataclass
class _Inflight:
    position: Position
    stream_id: str
    seq: int
    table: pa.Table
    future: asyncio.Future[None]
    #: The table plus the WAL payload (held until the group commit writes it).
    nbytes: int


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
    undoes any crash point: see ``recover``.

        store = MetricStore(DataDir.at("data"), catalog)
        await store.open()
        await store.append("stream", 1, table, payload)
        snap = store.snapshot()
    """

    def __init__(
        self,
        data_dir: DataDir,
        catalog: StreamWatermarks,
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
        self._chunks: list[Chunk] = []
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
        self._latest = empty_latest()
        self._unfolded: list[pa.Table] = []
        self._unfolded_rows = 0
        self._latest_flushed = empty_latest()
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
        recovered = await asyncio.to_thread(recover, self._dir, self._catalog)
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
                chunk = Chunk(group[0].position.segment, table, watermarks, summary)
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
        try_write_tiers(points, path)
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
