"""The sender's seam to the network: what a metric stream needs of the server, and an
in-memory server that keeps the same promise.

The sender asks for a ``Transport`` (``Sender(stub=...)``): the gRPC metric stream
(``steppe.wire.MetricStream``) is one, ``MemoryTransport`` the other. Both take the stream's
batches in seq order and answer cumulative acks; a batch is acked only once it is stored, and
a resent batch (seq at or below the stream's watermark) is acked again, never stored twice.

``MemoryTransport`` lets the buffer, the sender and the spool be driven through disconnects,
resends and lost acks in one process (tests/test_sender_machine.py); its faults are armed
one at a time::

    transport = MemoryTransport()
    transport.fail_next(stored=True)  # the next batch is stored, then the stream breaks
"""

from __future__ import annotations

import struct
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

import grpc

from steppe import wire


class Transport(Protocol):
    """A server's metric stream: serialized ``MetricBatch`` es in, cumulative acks out
    (``steppe.v1.Ingest/StreamMetrics``)."""

    def StreamMetrics(self, request_iterator: Iterator[bytes]) -> Iterator[wire.StreamAck]: ...


class StreamBroken(grpc.RpcError):  # type: ignore[misc]  # grpc ships no types
    """What a dropped connection looks like to the sender: an RpcError, UNAVAILABLE."""

    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.UNAVAILABLE

    def details(self) -> str:
        return "the in-memory stream was broken on purpose"


@dataclass(frozen=True)
class StoredPoint:
    run_id: str
    key: str
    step: int
    timestamp_ms: int
    value: float


@dataclass
class _Fault:
    stored: bool  # break after storing the batch (its ack is lost) or before


class MemoryTransport:
    """An in-process ingest endpoint with the server's exactly-once rule: per stream id a
    watermark, a batch at watermark + 1 stored and acked, one at or below it acked again
    and dropped, one beyond it a protocol error (the stream breaks)."""

    def __init__(self) -> None:
        self.points: list[StoredPoint] = []
        self.watermarks: dict[str, int] = {}
        self.calls = 0
        self.resent_batches = 0
        self._lock = threading.Lock()
        self._fault: _Fault | None = None
        self._down = False

    def fail_next(self, *, stored: bool) -> None:
        """Break the stream at the next batch, after storing it (``stored``) or before."""
        with self._lock:
            self._fault = _Fault(stored)

    def set_down(self, down: bool) -> None:
        """While down, every new call fails at once (a server that is away)."""
        with self._lock:
            self._down = down

    def StreamMetrics(self, request_iterator: Iterator[bytes]) -> Iterator[wire.StreamAck]:
        with self._lock:
            if self._down:
                raise StreamBroken()
            self.calls += 1
        return self._serve(request_iterator)

    def _serve(self, requests: Iterator[bytes]) -> Iterator[wire.StreamAck]:
        for payload in requests:
            batch = wire.MetricBatch.FromString(payload)
            with self._lock:
                fault, self._fault = self._fault, None
                if fault is not None and not fault.stored:
                    raise StreamBroken()
                mark = self.watermarks.get(batch.stream_id, 0)
                if batch.seq <= mark:
                    self.resent_batches += 1
                elif batch.seq == mark + 1:
                    self.points.extend(_decode(batch))
                    self.watermarks[batch.stream_id] = mark = batch.seq
                else:
                    raise StreamBroken()  # a gap: the real server refuses the stream too
                if fault is not None:
                    raise StreamBroken()  # stored, but the ack never arrives
            yield wire.StreamAck(acked_seq=mark)


def _decode(batch: wire.MetricBatch) -> list[StoredPoint]:
    n = batch.count
    runs = struct.unpack(f"<{n}I", batch.run_index)
    keys = struct.unpack(f"<{n}I", batch.key_index)
    steps = struct.unpack(f"<{n}q", batch.step)
    stamps = struct.unpack(f"<{n}q", batch.timestamp_ms)
    values = struct.unpack(f"<{n}d", batch.value)
    return [
        StoredPoint(batch.run_ids[r], batch.keys[k], s, t, v)
        for r, k, s, t, v in zip(runs, keys, steps, stamps, values, strict=True)
    ]
