"""The writer rules: who sends points (one writer per client process), their part in runs,
and how a run's status follows from its writers'. Both doors (gRPC, MLflow REST) end runs
through ``RunService``, which asks this service; no other module decides a run's status.

The rule (``run_status``): only the newest attempt counts (an elastic restart is attempt + 1);
the run is RUNNING while one of its writers runs, else FAILED if one failed or was lost
(stopped heartbeating past the timeout), else KILLED if one was killed, else FINISHED.

    writers = WriterService(catalog)
    run = writers.join(run_id, info)                       # start_run on a rank
    run = writers.end(run_id, info, "FINISHED", end_ms)    # end_run on that rank

No I/O beyond the catalog; blocking (SQLite commits fsync): call from a worker thread.
``Liveness`` is the in-memory part the servicer feeds (open StreamMetrics calls per writer).
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Sequence

from steppe.errors import InvalidParameterValue
from steppe.ingest.catalog import RunRecord, WriterInfo, WriterRepository

__all__ = [
    "DEFAULT_WRITER_TIMEOUT_S",
    "TERMINAL",
    "Liveness",
    "WriterService",
    "check_writer",
    "run_status",
]

#: A writer without a live stream for this long is LOST (steppe server --writer-timeout-s).
#: Above the server's keepalive (60 s + 20 s to close a silent connection), so a half-dead
#: connection is closed before its writer is declared lost.
DEFAULT_WRITER_TIMEOUT_S = 120.0
TERMINAL = ("FINISHED", "FAILED", "KILLED")
_KEY_RE = re.compile(r"[0-9A-Za-z_-]{1,64}")
_INT32 = 2**31 - 1


def _now_ms() -> int:
    return int(time.time() * 1000)


def run_status(members: Sequence[tuple[int, str]]) -> str:
    """A run's status from its writers' (attempt, status): the newest attempt decides."""
    newest = max(attempt for attempt, _ in members)
    current = {status for attempt, status in members if attempt == newest}
    if "RUNNING" in current:
        return "RUNNING"
    if current & {"FAILED", "LOST"}:
        return "FAILED"
    if "KILLED" in current:
        return "KILLED"
    return "FINISHED"


def check_writer(field: str, info: WriterInfo) -> WriterInfo:
    """A writer identity as sent: a key of 1-64 letters, digits, ``_`` or ``-``; ranks and
    sizes non-negative int32; host at most 255 characters, launcher at most 32."""
    if not _KEY_RE.fullmatch(info.writer_key):
        raise InvalidParameterValue(
            f"{field}.writer_key", info.writer_key, "1-64 letters, digits, '_' or '-'"
        )
    for name in ("rank", "local_rank", "world_size", "node_rank", "attempt"):
        value = getattr(info, name)
        if value is not None and not 0 <= value <= _INT32:
            raise InvalidParameterValue(f"{field}.{name}", value, "must be in 0..2^31-1")
    if len(info.host) > 255:
        raise InvalidParameterValue(f"{field}.host", info.host, "at most 255 characters")
    if len(info.launcher) > 32:
        raise InvalidParameterValue(f"{field}.launcher", info.launcher, "at most 32 characters")
    if info.pid < 0:
        raise InvalidParameterValue(f"{field}.pid", info.pid, "must be non-negative")
    return info


class WriterService:
    """Registers writers and their streams, and moves runs through their writers' lifecycle.
    Caches writer ids by key (thread-safe), so a known writer costs no catalog read."""

    def __init__(self, catalog: WriterRepository) -> None:
        self._catalog = catalog
        self._lock = threading.Lock()
        self._ids: dict[str, int] = {}

    def register(self, info: WriterInfo, field: str = "writer") -> int:
        info = check_writer(field, info)
        writer_id = self._catalog.register_writer(info)
        with self._lock:
            self._ids[info.writer_key] = writer_id
        return writer_id

    def writer_id(self, writer_key: str) -> int | None:
        with self._lock:
            return self._ids.get(writer_key)

    def load(self) -> dict[str, int]:
        """Writer ids by key and by stream, from the catalog (at server start)."""
        with self._lock:
            self._ids.update({w.writer_key: w.writer_id for w in self._catalog.list_writers()})
        return self._catalog.stream_writers()

    def register_stream(self, stream_id: str, info: WriterInfo) -> int:
        """The first batch of a stream named its writer: its points are that writer's."""
        writer_id = self.register(info, "writer")
        self._catalog.map_stream(stream_id, writer_id)
        return writer_id

    def join(self, run_id: str, info: WriterInfo, *, resume: bool = False) -> RunRecord:
        """The writer takes part in the run: a rank's create-or-join (then a rank that failed
        before this one joined still fails the run), or a ``resume`` (start_run(run_id=...),
        STEPPE_RUN_ID), which gives an ended run a new life of its own."""
        writer_id = self.register(info)
        return self._catalog.join_run(run_id, writer_id, _now_ms(), run_status, resume)

    def end(self, run_id: str, info: WriterInfo, status: str, end_ms: int) -> RunRecord | None:
        """The writer ended (end_run on one rank); the run's status follows ``run_status``.
        None when this writer never joined the run: the caller sets the status as asked."""
        writer_id = self.register(info)
        return self._catalog.end_run_writer(run_id, writer_id, status, end_ms, run_status)

    def end_all(self, run_id: str, status: str, end_ms: int) -> None:
        """The run was ended as a whole (a call without a writer): its writers end with it."""
        self._catalog.end_run_writers(run_id, status, end_ms)

    def reap(self, live_keys: Sequence[str], timeout_s: float, grace_until_ms: int) -> list[str]:
        """One heartbeat pass: writers with a live stream are seen now; writers silent for
        ``timeout_s`` are lost (not before ``grace_until_ms``: after a server restart every
        writer gets one timeout to reconnect). Returns the runs whose status changed."""
        now = _now_ms()
        live = [i for i in map(self.writer_id, live_keys) if i is not None]
        # Nobody is lost during the grace period (last_seen_ms is never negative).
        lost_before = -1 if now < grace_until_ms else now - int(timeout_s * 1000)
        return self._catalog.reap_writers(live, now, lost_before, run_status)


class Liveness:
    """Open StreamMetrics calls per writer key (the heartbeat: a killed process's connection
    closes at once, a vanished host's after the server's keepalive). Event-loop only."""

    def __init__(self) -> None:
        self._calls: dict[str, int] = {}

    def opened(self, writer_key: str) -> None:
        self._calls[writer_key] = self._calls.get(writer_key, 0) + 1

    def closed(self, writer_key: str) -> None:
        left = self._calls.get(writer_key, 0) - 1
        if left > 0:
            self._calls[writer_key] = left
        else:
            self._calls.pop(writer_key, None)

    def live(self) -> list[str]:
        return list(self._calls)
