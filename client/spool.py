"""The client's write-through spool: every batch a sender encodes, on local disk, until the
server acks it.

It keeps the sender's memory bounded when the server is slow or down (unacked batches are
re-read from disk instead of held), and it lets ``steppe sync`` (or the next run on the
machine) deliver what a killed process logged: a replay reuses the batches' stream id and
seq, so the server stores each point once. Artifacts logged while the server was away are
copied into ``artifacts/`` beside the batches. Records are written, not fsynced: they survive
the process, not the machine. It never talks to the network.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import shutil
import struct
import time
import uuid
import zlib
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO

_HEADER = struct.Struct("<4sIIQ")  # magic, payload length, crc32 of payload, seq
_MAGIC = b"SPL1"
_META = "meta.json"
_OPS = "ops.jsonl"
_OWNER = "owner.lock"
_ARTIFACTS = "artifacts"
_ARTIFACT_NAME = re.compile(r"[0-9a-f]{32}")


@dataclass(frozen=True)
class Location:
    segment: int
    offset: int
    length: int


class SpoolFailed(OSError):
    """The spool could not be written (disk full, read-only): points stay in memory."""


class Spool:
    """One sender's spool directory ``<root>/<stream_id>/``, owned (flock) while open."""

    def __init__(
        self, root: Path, stream_id: str, tracking_uri: str, segment_bytes: int = 64 << 20
    ) -> None:
        self.dir = root / stream_id
        self.dir.mkdir(parents=True, exist_ok=True)
        self._segment_bytes = segment_bytes
        self._owner_fd = os.open(self.dir / _OWNER, os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(self._owner_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        meta = {
            "stream_id": stream_id,
            "tracking_uri": tracking_uri,
            "pid": os.getpid(),
            "created_ms": int(time.time() * 1000),
        }
        (self.dir / _META).write_text(json.dumps(meta))
        self._closed: deque[tuple[int, int]] = deque()  # (segment, highest seq in it)
        self._segment = 0
        self._fd = -1
        self._size = 0
        self._max_seq = 0
        self._open_next()

    def _path(self, segment: int) -> Path:
        return self.dir / f"{segment:08d}.spool"

    def _open_next(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._closed.append((self._segment, self._max_seq))
        self._segment += 1
        self._fd = os.open(self._path(self._segment), os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
        self._size = 0

    def append(self, seq: int, payload: bytes) -> Location:
        if self._size >= self._segment_bytes:
            self._open_next()
        record = _HEADER.pack(_MAGIC, len(payload), zlib.crc32(payload), seq) + payload
        try:
            written = os.write(self._fd, record)
        except OSError as exc:
            raise SpoolFailed(
                exc.errno or errno.EIO, f"cannot write the spool in {self.dir}: {exc}"
            ) from exc
        if written != len(record):
            raise SpoolFailed(errno.ENOSPC, f"short write to the spool in {self.dir}")
        location = Location(self._segment, self._size + _HEADER.size, len(payload))
        self._size += len(record)
        self._max_seq = seq
        return location

    def append_op(self, op: dict[str, object]) -> None:
        """Journal a run-lifecycle call (see steppe.journal), one JSON line."""
        line = (json.dumps(op, separators=(",", ":")) + "\n").encode()
        try:
            with open(self.dir / _OPS, "ab") as f:
                f.write(line)
        except OSError as exc:
            raise SpoolFailed(
                exc.errno or errno.EIO, f"cannot journal in {self.dir}: {exc}"
            ) from exc

    def add_file(self, write: Callable[[IO[bytes]], None]) -> str:
        """Keep a payload (an artifact's bytes, written by ``write``) in the spool; its
        name relative to the spool dir, for the journal (see ``artifact_file``)."""
        folder = self.dir / _ARTIFACTS
        name = uuid.uuid4().hex
        partial = folder / f".{name}.part"
        try:
            folder.mkdir(exist_ok=True)
            fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with open(fd, "wb") as f:
                write(f)
            os.replace(partial, folder / name)  # never a half-copied file under its name
        except OSError as exc:
            partial.unlink(missing_ok=True)
            raise SpoolFailed(
                exc.errno or errno.EIO, f"cannot keep an artifact in {folder}: {exc}"
            ) from exc
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        return f"{_ARTIFACTS}/{name}"

    def read(self, location: Location) -> bytes:
        path = self._path(location.segment)
        with open(path, "rb") as f:
            f.seek(location.offset)
            return f.read(location.length)

    def release(self, acked_seq: int) -> None:
        """Delete closed segments whose every batch is acked."""
        while self._closed and self._closed[0][1] <= acked_seq:
            segment, _ = self._closed.popleft()
            self._path(segment).unlink(missing_ok=True)

    def close(self, all_acked: bool) -> None:
        """Remove the directory if everything was acked; else leave it for ``steppe sync``."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        if all_acked:
            shutil.rmtree(self.dir, ignore_errors=True)
        os.close(self._owner_fd)  # drops the flock: an unacked spool is now an orphan


@dataclass(frozen=True)
class Orphan:
    """A spool left by a process that is gone."""

    dir: Path
    stream_id: str
    tracking_uri: str

    def records(self) -> Iterator[tuple[int, bytes]]:
        """(seq, payload) in order; stops at a torn or corrupt record (the process died
        while writing it, so it was never sent, and nothing after it exists)."""
        for path in sorted(self.dir.glob("*.spool")):
            with open(path, "rb") as f:
                while True:
                    header = f.read(_HEADER.size)
                    if len(header) < _HEADER.size:
                        break
                    magic, length, crc, seq = _HEADER.unpack(header)
                    payload = f.read(length)
                    if magic != _MAGIC or len(payload) != length or zlib.crc32(payload) != crc:
                        return
                    yield seq, payload

    def ops(self) -> list[dict[str, object]]:
        """Journaled lifecycle calls in order (a torn last line is skipped)."""
        path = self.dir / _OPS
        if not path.exists():
            return []
        out = []
        for line in path.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                break  # the process died mid-line: nothing after it exists
        return out

    def claim(self) -> int | None:
        """Take ownership (flock) so two replays never run at once; None if it's taken."""
        fd = os.open(self.dir / _OWNER, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return None
        return fd

    def remove(self, claim_fd: int) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)
        os.close(claim_fd)


def artifact_file(spool_dir: Path, name: str) -> Path:
    """The file a journaled artifact's ``name`` (from ``Spool.add_file``) stands for.

    The name comes from a file on disk: anything but ``artifacts/<32 hex>`` is refused, so
    a replay never reads outside the spool."""
    parts = PurePosixPath(name).parts
    if len(parts) != 2 or parts[0] != _ARTIFACTS or not _ARTIFACT_NAME.fullmatch(parts[1]):
        raise ValueError(f"journaled artifact file {name!r} is not a spool file name")
    return spool_dir / _ARTIFACTS / parts[1]


def usage(root: Path) -> int:
    """Bytes held under the spool root (every stream's batches, journal and artifacts)."""
    total = 0
    for folder, _, files in os.walk(root):
        for file in files:
            with contextlib.suppress(OSError):  # removed meanwhile by its sender
                total += os.lstat(os.path.join(folder, file)).st_size
    return total


def orphans(root: Path) -> list[Orphan]:
    """Spools under root whose owner is gone (their flock is free)."""
    found: list[Orphan] = []
    if not root.is_dir():
        return found
    for child in sorted(root.iterdir()):
        meta_path = child / _META
        if not meta_path.is_file():
            continue
        fd = os.open(child / _OWNER, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            continue  # a live sender owns it
        finally:
            with contextlib.suppress(OSError):
                os.close(fd)
        try:
            meta = json.loads(meta_path.read_text())
            found.append(Orphan(child, meta["stream_id"], meta["tracking_uri"]))
        except (OSError, ValueError, KeyError):
            continue  # half-written meta: its process died before logging anything
    return found
