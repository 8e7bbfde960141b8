"""The per-process background sender: drains the point buffer into columnar batches and
streams them over one gRPC stream, tracking cumulative acks and resending after reconnects.

It owns the network so the training loop never waits on it; it never drops a point:
every encoded batch is written through to the spool and stays in the outbox until the
server acks it. Memory is bounded: at most ``max_inflight_bytes`` of batches are held in
memory (the rest is re-read from the spool) and at most ``window`` batches are in flight.
"""

from __future__ import annotations

import logging
import queue
import random
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import grpc

from steppe import errors, stream_ids, wire
from steppe.buffer import Columns, PointBuffer
from steppe.spool import Location, Spool, SpoolFailed
from steppe.transport import Transport

log = logging.getLogger("steppe.sender")

#: A sender whose every batch is acked and that logged nothing for this long starts a new
#: stream id: the server forgets idle streams (--stream-retention-s, far longer than this)
#: and refuses a forgotten one, so a live sender never comes back on an idle stream.
STREAM_IDLE_S = 600.0


@dataclass
class _Entry:
    """An unacked batch, serialized once: in memory (``payload``), in the spool (``where``),
    or both."""

    count: int
    size: int
    payload: bytes | None
    where: Location | None


@dataclass
class _Stream:
    requests: queue.SimpleQueue[bytes | None]
    stream_id: str
    responses: Any = None  # the call object: an iterator of StreamAck, cancellable
    broken: bool = False


class Sender:
    """One per process and server. ``flush`` waits for acks; ``shutdown`` is idempotent."""

    def __init__(
        self,
        stub: Callable[[bool], Transport],
        *,
        buffer_points: int,
        batch_points: int,
        send_interval_s: float,
        spool: Callable[[str], Spool] | None = None,
        run_op: Callable[[dict[str, Any]], None] | None = None,
        offline: bool = False,
        max_inflight_bytes: int = 64 << 20,
        window: int = 32,
        describe_server: Callable[[], str] = lambda: "the steppe server",
        stream_id: str | None = None,
    ) -> None:
        self.buffer = PointBuffer()
        # A caller-chosen stream id (an import's: deterministic, so a re-run's batches are
        # the server's duplicates) is kept for good; our own ids rotate when idle.
        self._fixed_stream = stream_id is not None
        self.stream_id = stream_id if stream_id is not None else stream_ids.new_stream_id()
        self._last_batch_at = time.monotonic()  # or the stream id's creation
        # The gRPC stub, or steppe.transport.MemoryTransport in tests; called with True
        # after a failure: it may point elsewhere now.
        self._stub = stub
        self._failures = 0
        # Our own generator: backoff jitter must not touch the global random state.
        self._jitter = random.Random()
        self._buffer_points = buffer_points
        self._batch_points = batch_points
        self._send_interval_s = send_interval_s
        self._describe_server = describe_server
        self._state = threading.Condition()
        self._seq = 0
        self._acked_seq = 0
        self._outbox: OrderedDict[int, _Entry] = OrderedDict()
        self._next_send = 1  # seq of the next batch to put on the current stream
        self._memory_bytes = 0
        self._max_inflight_bytes = max_inflight_bytes
        self._window = window
        self._make_spool = spool
        self._run_op = run_op
        self._offline = offline
        self._ops: list[dict[str, Any]] = []  # journaled lifecycle calls not yet replayed
        self._holding = 0  # artifacts being copied into the spool: it must not rotate away
        self._spool: Spool | None = None
        self._spool_error = ""
        self._unacked_points = 0
        self._rejections: list[str] = []
        self._last_error = ""
        self._wake = threading.Event()
        self._closed = False
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self._left_at: int | None = None  # seq when a wait gave up (see wait_or_leave)
        # Called by the worker on every wake-up (at least every send_interval_s); see add_ticker.
        self._tickers: list[Callable[[], None]] = []

    # --- producer side ---------------------------------------------------------------

    def overflow(self) -> None:
        """Called by a producer when the buffer is over its bound: encode now (no I/O)."""
        self.encode_pending()
        self._wake.set()

    @property
    def buffer_points(self) -> int:
        return self._buffer_points

    # --- encoding ----------------------------------------------------------------------

    def encode_pending(self) -> None:
        with self.buffer.drain_lock:
            self.encode_pending_locked()

    def encode_pending_locked(self) -> None:
        buffer = self.buffer
        while buffer.points:
            chunk = buffer.take(self._batch_points)
            cols = Columns(buffer.registry, chunk)
            with self._state:
                self._rotate_if_idle()
                # seq order == buffer order: both assigned under drain_lock.
                self._seq += 1
                batch = wire.encode_batch(
                    self.stream_id,
                    self._seq,
                    cols.run_ids,
                    cols.keys,
                    cols.run_index,
                    cols.key_index,
                    cols.step,
                    cols.timestamp_ms,
                    cols.value,
                )
                self._add(batch)

    def enqueue_series(
        self, run_id: str, key: str, step: bytes, timestamp_ms: bytes, value: bytes
    ) -> None:
        """Queue one series given as little-endian int64/int64/float64 column bytes.

        Buffered points are encoded first, so seq order stays log order.
        """
        count = len(value) // 8
        with self.buffer.drain_lock:
            self.encode_pending_locked()
            for start in range(0, count, self._batch_points):
                end = min(count, start + self._batch_points)
                n = end - start
                zeros = bytes(4 * n)
                with self._state:
                    self._rotate_if_idle()
                    self._seq += 1
                    batch = wire.encode_batch(
                        self.stream_id,
                        self._seq,
                        [run_id],
                        [key],
                        zeros,
                        zeros,
                        step[8 * start : 8 * end],
                        timestamp_ms[8 * start : 8 * end],
                        value[8 * start : 8 * end],
                    )
                    self._add(batch)
        self._wake.set()

    def enqueue_batch(
        self,
        run_ids: list[str],
        keys: list[str],
        run_index: bytes,
        key_index: bytes,
        step: bytes,
        timestamp_ms: bytes,
        value: bytes,
    ) -> int:
        """Queue one batch exactly as given (little-endian uint32/uint32/int64/int64/float64
        column bytes) as the next seq, which is returned. The caller sizes it (at most the
        server's batch limit); buffered points are encoded first, so seq order is log order.
        """
        with self.buffer.drain_lock:
            self.encode_pending_locked()
            with self._state:
                self._rotate_if_idle()
                self._seq += 1
                batch = wire.encode_batch(
                    self.stream_id,
                    self._seq,
                    run_ids,
                    keys,
                    run_index,
                    key_index,
                    step,
                    timestamp_ms,
                    value,
                )
                self._add(batch)
                seq = self._seq
        self._wake.set()
        return seq

    def _rotate_if_idle(self) -> None:
        """Before a new batch (hold ``_state``): take a fresh stream id if nothing is unacked
        and the stream was idle for STREAM_IDLE_S (the worker then opens a new call)."""
        now = time.monotonic()
        idle = now - self._last_batch_at >= STREAM_IDLE_S
        self._last_batch_at = now
        if not idle or self._fixed_stream or self._outbox or self._ops or self._holding:
            return
        self.stream_id = stream_ids.new_stream_id()
        self._seq = self._acked_seq = 0
        self._next_send = 1
        self._left_at = None
        if self._spool is not None:
            self._spool.close(all_acked=True)
            self._spool = None

    def journal(self, op: dict[str, Any]) -> None:
        """Queue a lifecycle call to replay before any later batch (see steppe.journal)."""
        with self.buffer.drain_lock:
            # Points logged before this call go first, so order is kept on replay.
            self.encode_pending_locked()
            with self._state:
                spool = self._ensure_spool()
                if spool is not None:
                    try:
                        spool.append_op(op)
                    except SpoolFailed as exc:
                        self._spool_error = str(exc)
                        log.error("steppe: journaling failed (%s); kept in memory", exc)
                self._ops.append({"before_seq": self._seq + 1, **op})
        self.start()
        self._wake.set()

    def journal_file(
        self, write: Callable[[IO[bytes]], None], op_for: Callable[[str], dict[str, Any]]
    ) -> None:
        """Copy a payload (an artifact's bytes, written by ``write``) into the spool, then
        journal ``op_for(its name)`` like ``journal``. The copy runs outside the locks (it
        may be large); raises SteppeError if the spool cannot hold it."""
        with self._state:
            spool = self._ensure_spool()
            if spool is None:
                raise errors.SteppeError(
                    f"cannot keep the artifact for later: no spool ({self._spool_error or 'off'})"
                )
            self._holding += 1
        try:
            try:
                name = spool.add_file(write)
            except SpoolFailed as exc:
                raise errors.SteppeError(str(exc)) from None
            self.journal(op_for(name))
        finally:
            with self._state:
                self._holding -= 1

    @property
    def spool_dir(self) -> Path | None:
        """The spool this sender writes now (None before its first batch or journaled call)."""
        spool = self._spool
        return spool.dir if spool is not None else None

    @property
    def offline(self) -> bool:
        return self._offline

    def ops_pending(self) -> bool:
        return bool(self._ops)

    def _ensure_spool(self) -> Spool | None:
        if self._make_spool is not None and not self._spool_error and self._spool is None:
            try:
                self._spool = self._make_spool(self.stream_id)
            except OSError as exc:  # keep going in memory; say so once
                self._spool_error = str(exc)
                log.error("steppe: cannot create the spool (%s); keeping points in memory", exc)
        return self._spool

    def _replay_ops(self) -> bool:
        """Send journaled calls; False if the server is still unreachable."""
        while self._ops:
            op = self._ops[0]
            call = {k: v for k, v in op.items() if k != "before_seq"}
            try:
                assert self._run_op is not None
                self._run_op(call)
            except errors.ServerUnavailable as exc:
                self._note_error(str(exc))
                return False
            except errors.SteppeError as exc:  # e.g. a param conflict: report at flush
                with self._state:
                    self._rejections.append(f"{call['op']}: {exc}")
                log.error("steppe: journaled %s was rejected: %s", call["op"], exc)
            with self._state:
                self._ops.pop(0)
                self._state.notify_all()
        return True

    def _add(self, batch: wire.MetricBatch) -> None:
        """Record a new batch (hold ``_state``): spool it, keep it in memory if there's room."""
        payload = batch.SerializeToString()
        where = None
        spool = self._ensure_spool()
        if spool is not None:
            try:
                where = spool.append(self._seq, payload)
            except (SpoolFailed, OSError) as exc:  # keep going in memory; say so once
                self._spool_error = str(exc)
                log.error("steppe: spooling to disk failed (%s); keeping points in memory", exc)
        size = len(payload)
        keep = where is None or self._memory_bytes + size <= self._max_inflight_bytes
        if keep:
            self._memory_bytes += size
        self._outbox[self._seq] = _Entry(batch.count, size, payload if keep else None, where)
        self._unacked_points += batch.count

    # --- periodic work on the worker thread -------------------------------------------

    def add_ticker(self, tick: Callable[[], None]) -> None:
        """Call ``tick()`` on the worker thread at every wake-up (at least every
        send_interval_s), before it encodes the buffer: for samplers (system metrics) that
        log a point now and then without a thread of their own. ``tick`` must be quick and
        decide itself whether it is due; one that raises is removed and logged."""
        with self._state:
            self._tickers = [*self._tickers, tick]
        self.start()

    def remove_ticker(self, tick: Callable[[], None]) -> None:
        with self._state:
            self._tickers = [t for t in self._tickers if t != tick]  # bound methods: ==

    def _tick(self) -> None:
        for tick in self._tickers:  # a copy-on-write list: no lock needed to read it
            try:
                tick()
            except Exception:  # a sampler's bug must never stop the sender
                log.exception("steppe: %r failed; it is not called again", tick)
                self.remove_ticker(tick)

    # --- the worker --------------------------------------------------------------------

    def start(self) -> None:
        with self._start_lock:
            if self._thread is None and not self._closed:
                self._thread = threading.Thread(target=self._run, name="steppe-sender", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        stream: _Stream | None = None
        backoff_s = 0.05
        retry_at = 0.0
        while True:
            self._wake.wait(self._send_interval_s)
            self._wake.clear()
            if self._tickers:
                self._tick()
            self.encode_pending()
            if stream is not None and stream.stream_id != self.stream_id:
                # A new stream id (see _rotate_if_idle) goes on a call of its own: acks are
                # cumulative seqs per call, so the two must never share one.
                stream.requests.put(None)
                stream = None
            if stream is not None and stream.broken:
                stream.requests.put(None)
                stream = None
                retry_at = time.monotonic() + backoff_s * self._jitter.uniform(0.5, 1.0)
                backoff_s = min(backoff_s * 2, 2.0)
            if self._closed and (stream is None or not self._outbox):
                break
            if self._offline:
                continue  # everything stays in the spool for `steppe sync`
            idle = not self._outbox and not self._ops
            if stream is None and not idle and time.monotonic() >= retry_at:
                stream = self._connect()
                if stream is None:
                    retry_at = time.monotonic() + backoff_s * self._jitter.uniform(0.5, 1.0)
                    backoff_s = min(backoff_s * 2, 2.0)
                    continue
            if stream is not None:
                if self._ops:
                    self._replay_ops()
                for batch in self._due():
                    stream.requests.put(batch)
                if self._acked_seq > 0:
                    backoff_s = 0.05
        if stream is not None:
            stream.requests.put(None)

    def _connect(self) -> _Stream | None:
        requests: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        stream = _Stream(requests, self.stream_id)

        def gen() -> Iterator[bytes]:
            while True:
                item = requests.get()
                if item is None:
                    return
                yield item

        try:
            stub = self._stub(self._failures > 0)
            if self._ops and not self._replay_ops():
                self._failures += 1
                return None
            responses = stub.StreamMetrics(gen())
        except (grpc.RpcError, errors.ServerUnavailable) as exc:  # retried with backoff
            self._note_error(str(exc))
            self._failures += 1
            return None
        stream.responses = responses
        with self._state:
            # Everything unacked goes again, in seq order; the server drops what it has.
            self._next_send = self._acked_seq + 1
        threading.Thread(
            target=self._read_acks, args=(stream,), name="steppe-acks", daemon=True
        ).start()
        return stream

    def _due(self) -> list[bytes]:
        """The next batches to send (serialized, as spooled), within the window of unacked
        batches in flight."""
        out = []
        with self._state:
            limit = min(self._seq, self._acked_seq + self._window)
            if self._ops:  # batches logged after a pending call wait for its replay
                limit = min(limit, self._ops[0]["before_seq"] - 1)
            while self._next_send <= limit:
                entry = self._outbox.get(self._next_send)
                self._next_send += 1
                if entry is None:
                    continue  # acked meanwhile
                payload = entry.payload
                if payload is None:
                    assert entry.where is not None and self._spool is not None
                    payload = self._spool.read(entry.where)
                out.append(payload)
        return out

    def _read_acks(self, stream: _Stream) -> None:
        try:
            for ack in stream.responses:
                with self._state:
                    if stream.stream_id != self.stream_id:
                        break  # a call of a stream id this sender left (all of it acked)
                    for rej in ack.rejected:
                        self._rejections.append(f"batch {rej.seq}: {rej.field}: {rej.message}")
                        log.error("steppe server rejected batch %d: %s", rej.seq, rej.message)
                    outbox = self._outbox
                    while outbox and next(iter(outbox)) <= ack.acked_seq:
                        _, entry = outbox.popitem(last=False)
                        self._unacked_points -= entry.count
                        if entry.payload is not None:
                            self._memory_bytes -= entry.size
                    self._acked_seq = max(self._acked_seq, ack.acked_seq)
                    self._failures = 0
                    self._last_error = ""
                    if self._spool is not None:
                        self._spool.release(self._acked_seq)
                    self._state.notify_all()
                self._wake.set()  # the window moved: more may be sent
        except grpc.RpcError as exc:
            self._note_error(f"{exc.code().name}: {exc.details()}")
        finally:
            stream.broken = True
            self._failures += 1
            self._wake.set()

    def _note_error(self, message: str) -> None:
        if self._closed:
            return  # our own shutdown closed the channel
        if not self._outbox and not self._ops:
            return  # nothing was waiting on that stream; the next batch reconnects
        if message != self._last_error:
            log.warning(
                "steppe: stream to %s interrupted (%s); will resend unacked points",
                self._describe_server(),
                message,
            )
        self._last_error = message

    # --- waiting -----------------------------------------------------------------------

    def unacked_points(self) -> int:
        """Points logged but not yet acked by the server (the client's lag)."""
        return len(self.buffer) + self._unacked_points

    def wait_below(self, points: int, timeout_s: float) -> None:
        """Block until at most ``points`` are unacked (a producer's backpressure when there
        is no spool to spill to); FlushTimeout after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        self.start()
        self._wake.set()
        with self._state:
            self._wait_locked(lambda: self._unacked_points <= points, deadline, timeout_s)

    def _wait_locked(
        self,
        done: Callable[[], bool],
        deadline: float,
        timeout_s: float,
        where: Callable[[], str] = lambda: "",
    ) -> None:
        """Wait on ``_state`` (held) until ``done()``; FlushTimeout past ``deadline``, naming
        the unacked points, the server and the last error (then ``where()``)."""
        while not done():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise errors.FlushTimeout(
                    f"{self._unacked_points} points were not acked by "
                    f"{self._describe_server()} within {timeout_s:g} s "
                    f"(last error: {self._last_error or 'none'}){where()}"
                )
            self._state.wait(remaining)

    def flush(self, timeout_s: float) -> None:
        """Send everything logged so far and wait until the server acked it."""
        deadline = time.monotonic() + timeout_s
        self.start()
        self.encode_pending()
        if self._offline:
            return  # offline: logged means spooled; `steppe sync` sends it
        self._wake.set()
        with self._state:
            target = self._seq
            self._wait_locked(
                lambda: self._acked_seq >= target and not self._ops,
                deadline,
                timeout_s,
                lambda: f"; {self._where_unsent()}",
            )
            rejected, self._rejections = self._rejections, []
        if rejected:
            raise errors.SteppeError(
                f"the server rejected {len(rejected)} batch(es): " + "; ".join(rejected[:5])
            )

    def wait_or_leave(self, timeout_s: float) -> bool:
        """Wait for every ack, as ``flush``, but never raise for a missing server: after a
        second, say on stderr what is waited for; on timeout or Ctrl-C, leave the points in
        the spool (for `steppe sync`) and return False. A later call waits again only if
        more was logged meanwhile (so end_run and interpreter exit never wait twice)."""
        if self._left_at is not None and self._left_at >= self._seq and not self.buffer.points:
            return False
        deadline = time.monotonic() + timeout_s
        said = False
        try:
            while True:
                try:
                    self.flush(min(1.0, max(0.0, deadline - time.monotonic())))
                    return True
                except errors.FlushTimeout:
                    if time.monotonic() >= deadline:
                        raise
                if not said:
                    said = True
                    print(
                        f"steppe: waiting for {self.unacked_points():,} points to be acked by "
                        f"{self._describe_server()}, Ctrl-C to leave them in the spool for "
                        "`steppe sync`",
                        file=sys.stderr,
                        flush=True,
                    )
        except errors.FlushTimeout:
            print(
                f"steppe: {self.unacked_points():,} points were not acked by "
                f"{self._describe_server()} within {timeout_s:g} s (last error: "
                f"{self._last_error or 'none'}); {self._where_unsent()}",
                file=sys.stderr,
                flush=True,
            )
        except KeyboardInterrupt:
            print(
                f"steppe: left {self.unacked_points():,} unacked points; {self._where_unsent()}",
                file=sys.stderr,
                flush=True,
            )
        self._left_at = self._seq
        return False

    def _where_unsent(self) -> str:
        if self._spool is not None and not self._spool_error:
            return (
                f"they are kept in {self._spool.dir} and will be sent by `steppe sync` "
                "or by the next run on this machine"
            )
        return "they are held in this process's memory and will be sent while it runs"

    def shutdown(self, timeout_s: float) -> None:
        """Flush (bounded by timeout_s), then stop the worker. Safe to call twice."""
        try:
            if not self._closed and (self._thread is not None or self.buffer.points):
                self.wait_or_leave(timeout_s)
        finally:
            self._closed = True
            self._wake.set()
            thread = self._thread
            if thread is not None and thread is not threading.current_thread():
                thread.join(timeout=1.0)
            with self._state:
                if self._spool is not None:
                    self._spool.close(all_acked=not self._outbox and not self._ops)
                    self._spool = None
