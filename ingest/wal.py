"""Write-ahead log: framed, checksummed records in numbered segment files, group-committed.

Appends are buffered on the event loop; one write+fsync in a worker thread makes every record
appended before it durable. It never decodes payloads and never touches disk on the loop.
"""

from __future__ import annotations

import asyncio
import logging
import os
import struct
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from steppe.ingest.layout import WAL_FILE_RE, wal_file_name

__all__ = [
    "HEADER",
    "MAGIC",
    "MAX_RECORD_BYTES",
    "Position",
    "WalFailed",
    "WriteAheadLog",
    "encode_record",
    "fsync_dir",
    "list_segments",
    "read_segment",
]

logger = logging.getLogger("steppe.ingest.wal")

#: Record = MAGIC | payload length (u32 LE) | crc32 over (length bytes + payload) | payload.
#: The magic finds garbage, the length finds a torn tail, the crc finds a torn or rotten body.
MAGIC = b"STW1"
HEADER = struct.Struct("<4sII")
_LENGTH = struct.Struct("<I")
#: Far above any gRPC message we accept; a larger length field means a corrupt header.
MAX_RECORD_BYTES = 1 << 30


class WalFailed(RuntimeError):
    """A WAL write or fsync failed: nothing appended after the last durable record is safe,
    so the log refuses further appends (retrying an fsync after an error can lie)."""


@dataclass(frozen=True)
class Position:
    """Where an appended record went: its log sequence number and segment."""

    lsn: int
    segment: int


def encode_record(payload: bytes) -> bytes:
    """The header for ``payload`` (the payload follows it on disk unchanged)."""
    length = _LENGTH.pack(len(payload))
    return HEADER.pack(MAGIC, len(payload), zlib.crc32(payload, zlib.crc32(length)))


def list_segments(directory: Path) -> list[tuple[int, Path]]:
    """(segment number, path) of every segment file, in segment order."""
    if not directory.is_dir():
        return []
    found = []
    for path in directory.iterdir():
        match = WAL_FILE_RE.fullmatch(path.name)
        if match:
            found.append((int(match.group(1)), path))
    return sorted(found)


def read_segment(path: Path) -> Iterator[bytes]:
    """Payloads of one segment in order. A torn or corrupt record ends the segment: it and
    everything after it are skipped with a warning (only an unacked tail can be torn)."""
    data = path.read_bytes()
    view = memoryview(data)
    offset = 0
    while offset < len(data):
        problem = None
        if len(data) - offset < HEADER.size:
            problem = f"a torn header ({len(data) - offset} bytes)"
        else:
            magic, length, crc = HEADER.unpack_from(data, offset)
            start = offset + HEADER.size
            if magic != MAGIC:
                problem = "a bad magic number"
            elif length > MAX_RECORD_BYTES or start + length > len(data):
                problem = f"a torn record (header says {length} bytes)"
            else:
                payload = view[start : start + length]
                if zlib.crc32(payload, zlib.crc32(_LENGTH.pack(length))) != crc:
                    problem = "a checksum mismatch"
        if problem is not None:
            logger.warning(
                "WAL segment %s: %s at offset %d; skipping the last %d bytes of the segment "
                "(everything before them is recovered)",
                path.name,
                problem,
                offset,
                len(data) - offset,
            )
            return
        yield bytes(payload)
        offset = start + length


def fsync_dir(directory: Path) -> None:
    """Make renames, creations and deletions in ``directory`` durable."""
    fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _iov_max() -> int:
    try:
        return max(1, min(os.sysconf("SC_IOV_MAX"), 1024))
    except (AttributeError, ValueError, OSError):  # no sysconf or no such name: POSIX minimum
        return 16


#: Buffers per writev call.
_IOV_MAX = _iov_max()


def _write_all(fd: int, buffers: list[bytes]) -> None:
    """Write ``buffers`` in order with gathered writes (no joined copy of a group commit)."""
    views = [memoryview(b) for b in buffers if b]
    if not hasattr(os, "writev"):
        views = [memoryview(b"".join(views))] if views else []
    i = 0
    while i < len(views):
        written = (
            os.writev(fd, views[i : i + _IOV_MAX])
            if hasattr(os, "writev")
            else os.write(fd, views[i])
        )
        while written:
            size = len(views[i])
            if written < size:
                views[i] = views[i][written:]
                break
            written -= size
            i += 1


_fdatasync: Callable[[int], None] = getattr(os, "fdatasync", os.fsync)


class WriteAheadLog:
    """Appends records to ``directory/<segment>.wal``, starting at ``first_segment``.

    ``append`` is synchronous and cheap (it only buffers); a commit task frames (crc32),
    writes and fsyncs everything buffered in one worker-thread call, then calls
    ``on_durable(lsn)`` (on the loop) with the highest durable LSN before resolving
    ``sync()`` waiters. Segments only change on ``rotate()``, which the store calls at the
    start of a flush.

        wal = WriteAheadLog(path, first_segment=1)
        pos = wal.append(payload)
        await wal.sync()            # pos.lsn is now on disk
    """

    def __init__(
        self,
        directory: Path,
        first_segment: int,
        *,
        on_durable: Callable[[int], None] | None = None,
        on_failure: Callable[[BaseException], None] | None = None,
    ) -> None:
        self._dir = directory
        self._segment = first_segment
        self._segment_records = 0
        self._on_durable = on_durable
        self._on_failure = on_failure
        self._loop = asyncio.get_running_loop()
        #: (segment, payload) appended since the last commit started.
        self._pending: list[tuple[int, bytes]] = []
        self._last_lsn = 0
        self._durable_lsn = 0
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []
        self._committer: asyncio.Task[None] | None = None
        self._failed: WalFailed | None = None
        self._closed = False
        # Touched only by the commit thread, one call at a time (and by close() after it).
        self._fds: dict[int, int] = {}
        #: Number of group commits (write + fsync rounds) so far.
        self.commits = 0
        directory.mkdir(parents=True, exist_ok=True)

    @property
    def segment(self) -> int:
        """The segment new appends go to."""
        return self._segment

    @property
    def segment_has_records(self) -> bool:
        return self._segment_records > 0

    @property
    def last_lsn(self) -> int:
        return self._last_lsn

    @property
    def durable_lsn(self) -> int:
        return self._durable_lsn

    def append(self, payload: bytes) -> Position:
        """Buffer one record; it is durable once ``durable_lsn >= position.lsn``."""
        if self._failed is not None:
            raise self._failed
        if self._closed:
            raise WalFailed("the write-ahead log is closed")
        if len(payload) > MAX_RECORD_BYTES:
            raise ValueError(f"WAL record of {len(payload)} bytes exceeds {MAX_RECORD_BYTES}")
        self._last_lsn += 1
        self._segment_records += 1
        # The record header (a crc32 over the payload) is computed by the commit thread.
        self._pending.append((self._segment, payload))
        self._kick()
        return Position(self._last_lsn, self._segment)

    def rotate(self) -> int:
        """Seal the current segment and return its number; later appends go to the next one."""
        sealed = self._segment
        self._segment += 1
        self._segment_records = 0
        return sealed

    def sync(self) -> asyncio.Future[None]:
        """A future resolved once every record appended so far is durable."""
        future: asyncio.Future[None] = self._loop.create_future()
        if self._failed is not None:
            future.set_exception(self._failed)
        elif self._durable_lsn >= self._last_lsn:
            future.set_result(None)
        else:
            self._waiters.append((self._last_lsn, future))
        return future

    def _kick(self) -> None:
        if self._committer is None or self._committer.done():
            self._committer = self._loop.create_task(self._commit_loop(), name="steppe-wal-commit")

    async def _commit_loop(self) -> None:
        # Group commit: while one write+fsync runs in its thread, appends keep buffering;
        # the next round takes all of them at once.
        while self._pending and self._failed is None:
            batch, self._pending = self._pending, []
            upto = self._last_lsn
            open_segment = self._segment
            try:
                await asyncio.to_thread(self._write_and_sync, batch, open_segment)
            except Exception as exc:  # any I/O error poisons the log; see WalFailed
                self._fail(exc)
                return
            self.commits += 1
            self._durable_lsn = upto
            if self._on_durable is not None:
                try:
                    self._on_durable(upto)
                except Exception as exc:  # the owner could not apply durable records: stop
                    self._fail(exc)
                    return
            still_waiting = []
            for lsn, future in self._waiters:
                if lsn <= upto:
                    if not future.done():
                        future.set_result(None)
                else:
                    still_waiting.append((lsn, future))
            self._waiters = still_waiting

    def _write_and_sync(self, batch: list[tuple[int, bytes]], open_segment: int) -> None:
        created = False
        touched: list[int] = []
        by_segment: dict[int, list[bytes]] = {}
        for segment, payload in batch:
            by_segment.setdefault(segment, []).extend((encode_record(payload), payload))
        for segment, parts in by_segment.items():
            fd = self._fds.get(segment)
            if fd is None:
                # O_EXCL: a segment number is never reused, so an existing file is a bug.
                fd = os.open(
                    self._dir / wal_file_name(segment),
                    os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC,
                    0o644,
                )
                self._fds[segment] = fd
                created = True
            _write_all(fd, parts)
            touched.append(fd)
        for fd in touched:
            _fdatasync(fd)
        if created:
            fsync_dir(self._dir)
        for segment in [s for s in self._fds if s < open_segment]:
            os.close(self._fds.pop(segment))

    def _fail(self, exc: BaseException) -> None:
        logger.critical("write-ahead log failed; refusing further appends", exc_info=exc)
        failed = WalFailed(f"write-ahead log failure: {type(exc).__name__}: {exc}")
        failed.__cause__ = exc
        self._failed = failed
        for _, future in self._waiters:
            if not future.done():
                future.set_exception(failed)
        self._waiters = []
        if self._on_failure is not None:
            self._on_failure(failed)

    def delete_segments(self, upto: int) -> list[int]:
        """Delete segment files numbered <= ``upto`` (never the open one). Blocking: call in
        a worker thread. Returns the deleted numbers."""
        upto = min(upto, self._segment - 1)
        deleted = []
        for number, path in list_segments(self._dir):
            if number <= upto:
                path.unlink(missing_ok=True)
                deleted.append(number)
        return deleted

    async def close(self) -> None:
        """Wait for buffered records to become durable, then close the files. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._committer is not None and not self._committer.done():
            await asyncio.shield(self._committer)
        fds, self._fds = self._fds, {}
        for fd in fds.values():
            os.close(fd)
