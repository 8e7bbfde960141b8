"""The data dir's owner lock: one server per folder, and how clients find it.

The server holds an flock on ``<data dir>/server.lock`` for its whole life (the kernel
drops it on any exit, kill -9 included) and writes its pid and addresses into the file
once it is listening. The file is never unlinked: unlinking a locked path would let two
servers lock two different inodes.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

LOCK_FILE_NAME = "server.lock"


@dataclass(frozen=True)
class Owner:
    """What the owning server wrote into the lock file."""

    pid: int
    host: str
    http_port: int
    grpc_port: int
    tls: bool = False

    @property
    def http_url(self) -> str:
        scheme = "https" if self.tls else "http"
        return f"{scheme}://{_url_host(self.host)}:{self.http_port}"


def _url_host(host: str) -> str:
    connect = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
    return f"[{connect}]" if ":" in connect else connect


class DataDirLocked(Exception):
    """Another live server owns the data dir."""

    def __init__(self, data_dir: Path, owner: Owner | None) -> None:
        where = (
            f"steppe server pid {owner.pid} at {owner.http_url} (gRPC port {owner.grpc_port})"
            if owner
            else "a steppe server that is still starting"
        )
        super().__init__(f"data dir {data_dir} is already owned by {where}")
        self.owner = owner


def _read(path: Path) -> Owner | None:
    try:
        raw: dict[str, Any] = json.loads(path.read_text() or "{}")
        return Owner(
            int(raw["pid"]),
            str(raw["host"]),
            int(raw["http_port"]),
            int(raw["grpc_port"]),
            bool(raw.get("tls", False)),
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None  # absent, empty or half-written: nobody is ready yet


class OwnerLock:
    """Held by the server process. ``acquire`` fails fast if another server holds it."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.path = data_dir / LOCK_FILE_NAME
        self._fd: int | None = None

    def acquire(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise DataDirLocked(self.data_dir, _read(self.path)) from None
            raise
        self._fd = fd
        os.ftruncate(fd, 0)

    def publish(self, owner: Owner) -> None:
        """Write our addresses; clients treat the server as ready from now on."""
        assert self._fd is not None, "acquire() first"
        data = json.dumps(
            {
                "pid": owner.pid,
                "host": owner.host,
                "http_port": owner.http_port,
                "grpc_port": owner.grpc_port,
                "tls": owner.tls,
            }
        ).encode()
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, data, 0)
        os.fsync(self._fd)

    def release(self) -> None:
        if self._fd is None:
            return
        os.ftruncate(self._fd, 0)
        os.close(self._fd)  # closing drops the flock
        self._fd = None


def live_owner(data_dir: Path) -> tuple[bool, Owner | None]:
    """(is the lock held, what the holder published). (True, None): starting up."""
    path = data_dir / LOCK_FILE_NAME
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return False, None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                return True, _read(path)
            raise
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False, None
    finally:
        os.close(fd)
