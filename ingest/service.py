"""The gRPC face of ingest: the Ingest servicer and ``Ingestor``, the owner of catalog and store.

Validates every request (steppe.validation), acks a batch only once it is fsynced, and maps
steppe.errors to gRPC statuses. It never writes files itself and never imports steppe.v1.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc

from steppe import auth
from steppe.errors import (
    InvalidParameterValue,
    ServerUnavailable,
    SteppeError,
)
from steppe.ingest import wire
from steppe.ingest.catalog import Catalog
from steppe.ingest.compactor import Compactor
from steppe.ingest.layout import DataDir
from steppe.ingest.metrics import MetricRules
from steppe.ingest.sqlite_catalog import SqliteCatalog
from steppe.ingest.store import (
    DEFAULT_STREAM_RETENTION_S,
    MAX_SEQ,
    RESERVED_STREAM_PREFIX,
    MetricStore,
    StoreClosed,
)
from steppe.ingest.tracking import ExperimentService, RunService
from steppe.ingest.wal import WalFailed

__all__ = [
    "DEFAULT_KEEPALIVE_S",
    "HTTP_STREAM_ID",
    "MAX_INFLIGHT_BATCHES",
    "IngestServicer",
    "Ingestor",
]

logger = logging.getLogger("steppe.ingest.service")

#: Batches of one stream read ahead while earlier ones wait for their fsync (bounded memory).
MAX_INFLIGHT_BATCHES = 64
_MAX_CACHED_KEYS = 100_000
#: The server-internal stream that carries points written through the HTTP (MLflow REST) API.
#: Its seq continues from the stored watermark after a restart, so no batch is ever dropped
#: as a duplicate of an older one.
HTTP_STREAM_ID = "steppe-server-http"
#: How often the server pings a connection it heard nothing from (see _keepalive_options).
DEFAULT_KEEPALIVE_S = 60.0
#: The client pings every 30 s (steppe.channel); pings closer together than this are
#: "bad" (two of them and gRPC closes the connection with GOAWAY too_many_pings).
_MIN_CLIENT_PING_INTERVAL_MS = 10_000


_Request = TypeVar("_Request")
_Response = TypeVar("_Response")


def _now_ms() -> int:
    return int(time.time() * 1000)


def _done() -> asyncio.Future[None]:
    future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    future.set_result(None)
    return future


# -- StreamMetrics ------------------------------------------------------------------------


@dataclass
class _Entry:
    """One batch on its way to an ack: ``done`` resolves when it may be acked."""

    seq: int
    done: asyncio.Future[None]
    rejection: wire.BatchRejection | None = None


class _End:
    """The client half-closed the stream."""


class _Closing:
    """The server is shutting down: ack what is in flight, then end with UNAVAILABLE."""


@dataclass
class _Failed:
    error: BaseException


class _Refused(Exception):
    """A batch broke the stream protocol: the call ends with ``code``, nothing of it acked."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class _Session:
    """One StreamMetrics call. A reader task admits batches (dedupe, validate, WAL append)
    while the handler awaits their durability in order and yields cumulative acks, so the
    reader runs ahead during an fsync by up to MAX_INFLIGHT_BATCHES batches."""

    def __init__(self, ingestor: Ingestor, requests: AsyncIterable[wire.ReceivedBatch]) -> None:
        self._ingestor = ingestor
        self._requests = requests
        self._queue: deque[_Entry | _End | _Closing | _Failed] = deque()
        self._changed = asyncio.Event()
        self._slots = asyncio.Semaphore(MAX_INFLIGHT_BATCHES)
        self._reader: asyncio.Task[None] | None = None
        self._last_seq: dict[str, int] = {}  # per stream id of this call: the last seq read

    @property
    def stream_ids(self) -> Iterable[str]:
        return self._last_seq.keys()

    def stop_reading(self) -> None:
        if self._reader is not None:
            self._reader.cancel()

    def _push(self, item: _Entry | _End | _Closing | _Failed) -> None:
        self._queue.append(item)
        self._changed.set()

    async def _next(self) -> _Entry | _End | _Closing | _Failed:
        while not self._queue:
            self._changed.clear()
            await self._changed.wait()
        return self._queue.popleft()

    async def _read(self) -> None:
        try:
            requests = aiter(self._requests)
            while True:
                await self._slots.acquire()
                try:
                    batch = await anext(requests)
                except StopAsyncIteration:
                    self._push(_End())
                    return
                # No await between a WAL append and this push, so a cancelled reader never
                # loses the ack of a batch it appended.
                self._push(await self._admit(batch))
        except asyncio.CancelledError:
            self._push(_Closing())
            raise
        except Exception as exc:  # handed to the handler, which ends the call with a status
            self._push(_Failed(exc))

    async def _admit(self, received: wire.ReceivedBatch) -> _Entry:
        ingestor = self._ingestor
        batch = received.message
        ingestor.touch()
        store = ingestor.store
        stream_id, seq = batch.stream_id, batch.seq
        self._check_protocol(stream_id, seq)
        if stream_id and 1 <= seq <= store.watermark(stream_id):
            # Already held (or in flight): ack it once everything before now is durable.
            return _Entry(seq, store.barrier())
        try:
            decoded = wire.decode_metric_batch(batch)
            await ingestor.metrics.check(
                run_ids=decoded.run_ids, keys=decoded.keys, table=decoded.table
            )
        except InvalidParameterValue as err:
            return _Entry(seq, _done(), wire.rejection(seq, err))
        await store.wait_for_room()
        if seq <= store.watermark(stream_id):  # a resend on another call won the race
            return _Entry(seq, store.barrier())
        # The WAL record is the batch's bytes as received: parsed once, never re-serialized.
        return _Entry(seq, store.append(stream_id, seq, decoded.table, received.raw))

    def _check_protocol(self, stream_id: str, seq: int) -> None:
        """Refuse (end the call, ack nothing of the batch) what no ack could honestly cover:
        a seq past MAX_SEQ, a reserved stream id, a seq that is not the previous one + 1 on
        this call, a stream id another live call is writing. Batches with an empty stream id
        or a seq < 1 are left to decoding, which rejects them."""
        if seq > MAX_SEQ:
            raise _Refused(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"seq: {seq} is out of range; seq must be between 1 and {MAX_SEQ} (2^63-1)",
            )
        if stream_id.startswith(RESERVED_STREAM_PREFIX):
            raise _Refused(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"stream_id: {stream_id!r} is reserved by the server "
                f"(ids starting with {RESERVED_STREAM_PREFIX!r}); use a stream id of your own",
            )
        if not stream_id or seq < 1:
            return
        last = self._last_seq.get(stream_id)
        if last is None and self._ingestor.store.forgotten(stream_id):
            retention_s = self._ingestor.store.stream_retention_s
            raise _Refused(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"stream_id: {stream_id!r} was opened more than the server's stream retention "
                f"({retention_s:g} s, steppe server --stream-retention-s) ago and the server "
                "no longer remembers which of its batches it stored; they are refused so that "
                "no point is stored twice (deliver spools within the retention)",
            )
        if last is None:
            owner = self._ingestor.streams.setdefault(stream_id, self)
            if owner is not self:
                raise _Refused(
                    grpc.StatusCode.ALREADY_EXISTS,
                    f"stream_id: {stream_id!r} is already being written by another live call; "
                    "one stream id belongs to one writer at a time",
                )
        elif seq != last + 1:
            raise _Refused(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"seq: {seq} follows {last} on stream {stream_id!r}; within one call the seqs "
                "of a stream must go up by exactly 1",
            )
        self._last_seq[stream_id] = seq

    def release(self) -> None:
        """Give up this call's stream ids (the call ended)."""
        streams = self._ingestor.streams
        for stream_id in self._last_seq:
            if streams.get(stream_id) is self:
                del streams[stream_id]

    async def run(self, context: Any) -> AsyncIterator[wire.StreamAck]:
        self._reader = asyncio.get_running_loop().create_task(
            self._read(), name="steppe-stream-reader"
        )
        acked = 0
        try:
            while True:
                item = await self._next()
                rejected: list[wire.BatchRejection] = []
                while isinstance(item, _Entry):
                    try:
                        await item.done
                    except (WalFailed, StoreClosed) as exc:
                        await context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
                    self._slots.release()
                    acked = max(acked, item.seq)
                    if item.rejection is not None:
                        rejected.append(item.rejection)
                    # Coalesce: fold every already-durable successor into this one ack.
                    head = self._queue[0] if self._queue else None
                    if not (isinstance(head, _Entry) and head.done.done()):
                        break
                    item = self._queue.popleft()
                if isinstance(item, _Entry):
                    yield wire.stream_ack(acked, rejected)
                elif isinstance(item, _End):
                    return
                elif isinstance(item, _Closing):
                    await context.abort(
                        grpc.StatusCode.UNAVAILABLE,
                        "steppe server is shutting down; resend unacked batches after reconnecting",
                    )
                elif isinstance(item.error, _Refused):
                    await context.abort(item.error.code, item.error.message)
                else:
                    code = (
                        grpc.StatusCode.UNAVAILABLE
                        if isinstance(item.error, (WalFailed, StoreClosed))
                        else grpc.StatusCode.INTERNAL
                    )
                    if code is grpc.StatusCode.INTERNAL:
                        logger.error("StreamMetrics failed", exc_info=item.error)
                    await context.abort(code, f"{type(item.error).__name__}: {item.error}")
        finally:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)
            self.release()


# -- the servicer -------------------------------------------------------------------------


class IngestServicer(wire.IngestServicerBase):
    """steppe.v1.Ingest on grpc.aio. Catalog calls run in worker threads (SQLite commits
    fsync), so the loop keeps acking streams meanwhile."""

    def __init__(self, ingestor: Ingestor) -> None:
        self._ingestor = ingestor
        self._experiments = ExperimentService(ingestor.catalog)
        self._runs = RunService(ingestor.catalog)

    async def StreamMetrics(
        self, request_iterator: AsyncIterable[wire.ReceivedBatch], context: Any
    ) -> AsyncIterator[wire.StreamAck]:
        ingestor = self._ingestor
        ingestor.touch()
        if ingestor.closing:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "steppe server is shutting down")
        session = _Session(ingestor, request_iterator)
        ingestor.sessions.add(session)
        try:
            async for ack in session.run(context):
                yield ack
        finally:
            ingestor.sessions.discard(session)
            ingestor.touch()

    async def _unary(
        self, context: Any, handler: Callable[[_Request], _Response], request: _Request
    ) -> _Response:
        self._ingestor.touch()
        try:
            return await asyncio.to_thread(handler, request)
        except Exception as err:  # every failure becomes a status with an MLflow error_code
            if not isinstance(err, SteppeError):
                logger.exception("unexpected error in %s", getattr(handler, "__name__", handler))
            code, details, metadata = wire.grpc_error(err)
            await context.abort(code, details, metadata)
            raise AssertionError("context.abort() returned") from err

    # experiments ------------------------------------------------------------------------

    async def CreateExperiment(
        self, request: wire.CreateExperimentRequest, context: Any
    ) -> wire.Experiment:
        return await self._unary(context, self._create_experiment, request)

    def _create_experiment(self, request: wire.CreateExperimentRequest) -> wire.Experiment:
        tags = [(tag.key, tag.value) for tag in request.tags]
        record = self._experiments.create(request.name, request.artifact_location, tags)
        return wire.experiment_to_pb(record)

    async def SetExperiment(
        self, request: wire.SetExperimentRequest, context: Any
    ) -> wire.Experiment:
        return await self._unary(context, self._set_experiment, request)

    def _set_experiment(self, request: wire.SetExperimentRequest) -> wire.Experiment:
        return wire.experiment_to_pb(self._experiments.get_or_create(request.name))

    async def GetExperiment(
        self, request: wire.GetExperimentRequest, context: Any
    ) -> wire.Experiment:
        return await self._unary(context, self._get_experiment, request)

    def _get_experiment(self, request: wire.GetExperimentRequest) -> wire.Experiment:
        return wire.experiment_to_pb(self._experiments.get(request.experiment_id))

    # runs -------------------------------------------------------------------------------

    async def CreateRun(self, request: wire.CreateRunRequest, context: Any) -> wire.Run:
        run = await self._unary(context, self._create_run, request)
        if run.info.lifecycle_stage == "active":
            self._ingestor.metrics.note_active_run(run.info.run_id)
        return run

    def _create_run(self, request: wire.CreateRunRequest) -> wire.Run:
        record = self._runs.create(
            run_id=request.run_id,
            experiment_id=request.experiment_id,
            run_name=request.run_name,
            start_time=request.start_time,
            tags=[(tag.key, tag.value) for tag in request.tags],
            user_id=request.user_id,
        )
        return wire.run_to_pb(record)

    async def GetRun(self, request: wire.GetRunRequest, context: Any) -> wire.Run:
        return await self._unary(context, self._get_run, request)

    def _get_run(self, request: wire.GetRunRequest) -> wire.Run:
        return wire.run_to_pb(self._runs.get(request.run_id))

    async def UpdateRun(self, request: wire.UpdateRunRequest, context: Any) -> wire.Run:
        return await self._unary(context, self._update_run, request)

    def _update_run(self, request: wire.UpdateRunRequest) -> wire.Run:
        record = self._runs.update(
            request.run_id,
            status=wire.status_from_pb("status", request.status),
            end_time=request.end_time or None,
            run_name=request.run_name or None,
        )
        return wire.run_to_pb(record)

    async def LogParams(
        self, request: wire.LogParamsRequest, context: Any
    ) -> wire.LogParamsResponse:
        return await self._unary(context, self._log_params, request)

    def _log_params(self, request: wire.LogParamsRequest) -> wire.LogParamsResponse:
        self._runs.log_params(request.run_id, [(p.key, p.value) for p in request.params])
        return wire.LogParamsResponse()

    async def SetTags(self, request: wire.SetTagsRequest, context: Any) -> wire.SetTagsResponse:
        return await self._unary(context, self._set_tags, request)

    def _set_tags(self, request: wire.SetTagsRequest) -> wire.SetTagsResponse:
        self._runs.set_tags(request.run_id, [(tag.key, tag.value) for tag in request.tags])
        return wire.SetTagsResponse()

    async def DeleteTag(
        self, request: wire.DeleteTagRequest, context: Any
    ) -> wire.DeleteTagResponse:
        return await self._unary(context, self._delete_tag, request)

    def _delete_tag(self, request: wire.DeleteTagRequest) -> wire.DeleteTagResponse:
        self._runs.delete_tag(request.run_id, request.key)
        return wire.DeleteTagResponse()


# -- the owner ----------------------------------------------------------------------------


class _TokenInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]  # grpc ships no types
    """Refuses calls without the server's bearer token (UNAUTHENTICATED), in constant time."""

    def __init__(self, token: str) -> None:
        self._token = token

    async def intercept_service(self, continuation: Any, details: Any) -> Any:
        presented = next(
            (v for k, v in (details.invocation_metadata or ()) if k == auth.HEADER), None
        )
        if auth.matches(self._token, presented):
            return await continuation(details)
        handler = await continuation(details)
        return _deny(handler)


def _deny(handler: Any) -> Any:
    async def abort(request: Any, context: Any) -> Any:
        await context.abort(
            grpc.StatusCode.UNAUTHENTICATED,
            "missing or wrong token: set STEPPE_TOKEN to the server's token",
        )

    if handler is None:
        return None
    if handler.request_streaming:
        return grpc.stream_stream_rpc_method_handler(
            abort, handler.request_deserializer, handler.response_serializer
        )
    return grpc.unary_unary_rpc_method_handler(
        abort, handler.request_deserializer, handler.response_serializer
    )


def _keepalive_options(keepalive_ms: int) -> list[tuple[str, int]]:
    """Server keepalive: ping each connection after ``keepalive_ms`` of silence and close it
    if the ping is not answered within min(20 s, keepalive_ms), so a half-dead client
    (a vanished host, a frozen NAT) does not hold its stream id live forever; and accept
    the clients' own keepalive pings (every 30 s, also on an idle stream)."""
    return [
        ("grpc.keepalive_time_ms", keepalive_ms),
        ("grpc.keepalive_timeout_ms", min(20_000, keepalive_ms)),
        # gRPC core >= 1.5x also times out unanswered pings on its own (default 60 s).
        ("grpc.http2.ping_timeout_ms", min(20_000, keepalive_ms)),
        ("grpc.keepalive_permit_without_calls", 1),
        # Keep pinging an idle stream (the default stops after two pings without data).
        ("grpc.http2.max_pings_without_data", 0),
        # The least time between two client pings on a connection without data (gRPC core's
        # GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS; an unknown key is ignored
        # silently, and the 5-minute default closes every steppe client after ~90 s idle).
        ("grpc.http2.min_ping_interval_without_data_ms", _MIN_CLIENT_PING_INTERVAL_MS),
        ("grpc.http2.max_ping_strikes", 2),
    ]


class Ingestor:
    """Owns the ingest side of one data dir: catalog, metric store, compactor, gRPC server.

    Example::

        ingestor = Ingestor(DataDir.at("~/.steppe"))
        port = await ingestor.start("127.0.0.1", 0)
        snap = ingestor.store.snapshot()  # what the read side queries
        await ingestor.stop()
    """

    def __init__(
        self,
        data_dir: DataDir,
        *,
        flush_rows: int = 1_000_000,
        flush_interval_s: float = 10.0,
        max_message_bytes: int = 64 << 20,
        compaction_grace_s: float = 60.0,
        compaction_min_files: int = 8,
        stream_retention_s: float = DEFAULT_STREAM_RETENTION_S,
        keepalive_s: float = DEFAULT_KEEPALIVE_S,
        catalog: Catalog | None = None,
    ) -> None:
        self.data_dir = data_dir
        self._keepalive_ms = max(1, int(keepalive_s * 1000))
        data_dir.root.mkdir(parents=True, exist_ok=True)
        # The data dir's SQLite file unless the server was given another (steppe.ingest.catalog
        # .open_catalog); either way this Ingestor owns it and closes it on stop.
        self.catalog: Catalog = SqliteCatalog(data_dir.catalog_file) if catalog is None else catalog
        self.store = MetricStore(
            data_dir,
            self.catalog,
            flush_rows=flush_rows,
            flush_interval_s=flush_interval_s,
            stream_retention_s=stream_retention_s,
        )
        self.compactor = Compactor(
            self.store,
            data_dir.metrics_dir,
            min_files=compaction_min_files,
            grace_s=compaction_grace_s,
        )
        self.store.on_flushed = self.compactor.nudge
        self.last_activity_monotonic = time.monotonic()
        self.sessions: set[_Session] = set()
        self.streams: dict[str, _Session] = {}  # stream id -> the live call writing it
        self.closing = False
        self._max_message_bytes = max_message_bytes
        self._server: Any = None
        self._stopping: asyncio.Task[None] | None = None
        self.metrics = MetricRules(self.catalog, self.store.latest)
        self._http_seq = 0
        self._expirer: asyncio.Task[None] | None = None

    def touch(self) -> None:
        self.last_activity_monotonic = time.monotonic()

    def active_streams(self) -> int:
        return len(self.sessions)

    async def start(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        token: str | None = None,
        tls: tuple[bytes, bytes] | None = None,
    ) -> int:
        """Recover the store, start compaction and serve gRPC; returns the bound port.

        ``token``: every call must carry ``authorization: Bearer <token>`` metadata.
        ``tls``: (PEM private key, PEM certificate chain) to serve TLS instead of plaintext.
        """
        if self._server is not None or self.closing:
            raise RuntimeError("Ingestor.start() may be called once")
        await self.store.open()
        self.compactor.start()
        server = grpc.aio.server(
            interceptors=[_TokenInterceptor(token)] if token else None,
            options=[
                ("grpc.max_receive_message_length", self._max_message_bytes),
                ("grpc.max_send_message_length", self._max_message_bytes),
                # One owner per port as well as per data dir.
                ("grpc.so_reuseport", 0),
                *_keepalive_options(self._keepalive_ms),
            ],
        )
        wire.add_servicer(IngestServicer(self), server)
        address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        try:
            if tls is not None:
                credentials = grpc.ssl_server_credentials([tls])
                bound = int(server.add_secure_port(address, credentials))
            else:
                bound = int(server.add_insecure_port(address))
            if bound == 0:
                raise OSError(f"cannot bind the gRPC port at {address}")
            await server.start()
        except BaseException:
            await self.compactor.close()
            await self.store.close()
            raise
        self._server = server
        self._expirer = asyncio.get_running_loop().create_task(
            self._expire_streams(), name="steppe-stream-expiry"
        )
        logger.info("ingest listening on %s:%d", host, bound)
        return bound

    async def _expire_streams(self) -> None:
        """Forget idle streams' watermarks now and then (bounded memory and catalog rows)."""
        interval_s = max(0.2, min(self.store.stream_retention_s / 4, 60.0))
        while not self.closing:
            await asyncio.sleep(interval_s)
            try:
                await self.store.expire_streams(live=self.streams)
            except Exception:  # kept, retried next round: expiry is only housekeeping
                logger.exception("expiring idle stream watermarks failed")

    async def stop(self, grace_s: float = 5.0) -> None:
        """Stop accepting calls, ack in-flight batches and end streams with UNAVAILABLE,
        flush the tail to Parquet, close WAL and catalog. Idempotent."""
        if self._stopping is None:
            self._stopping = asyncio.get_running_loop().create_task(
                self._stop(grace_s), name="steppe-ingest-stop"
            )
        await asyncio.shield(self._stopping)

    async def _stop(self, grace_s: float) -> None:
        self.closing = True
        if self._expirer is not None:
            self._expirer.cancel()
            await asyncio.gather(self._expirer, return_exceptions=True)
        for session in list(self.sessions):
            session.stop_reading()
        if self._server is not None:
            await self._server.stop(grace_s)
        await self.compactor.close()
        await self.store.close()
        self.catalog.close()

    # points that arrive over HTTP -----------------------------------------------------

    async def log_points(
        self,
        run_ids: Sequence[str],
        keys: Sequence[str],
        steps: Sequence[int],
        timestamps: Sequence[int],
        values: Sequence[float],
    ) -> None:
        """Log points given as parallel columns, with a gRPC batch's guarantees: validated
        whole (names, runs, ranges) or rejected whole, and durable (in the WAL, fsynced)
        and visible to queries when this returns. Call on the server's event loop.

            await ingestor.log_points([run_id], ["loss"], [0], [now_ms], [0.5])
        """
        self.touch()
        count = len(run_ids)
        if count > wire.MAX_POINTS_PER_BATCH:
            raise InvalidParameterValue(
                "points", count, f"at most {wire.MAX_POINTS_PER_BATCH} points per call"
            )
        table = MetricRules.points_table(run_ids, keys, steps, timestamps, values)
        if count == 0:
            return
        await self.metrics.check(
            run_ids=list(dict.fromkeys(run_ids)), keys=list(dict.fromkeys(keys)), table=table
        )
        if self.closing:
            raise ServerUnavailable("steppe server is shutting down; retry after it restarts")
        store = self.store
        await store.wait_for_room()
        # No await from here to append(): seqs enter the WAL in the order they are taken.
        seq = max(self._http_seq, store.watermark(HTTP_STREAM_ID)) + 1
        # The WAL record is the gRPC batch of these columns (what recovery replays); the tail
        # takes the checked table itself, which is what that batch decodes to (the store
        # dictionary-encodes it in first-appearance order, as the batch's dictionaries are).
        payload = wire.encode_metric_batch(HTTP_STREAM_ID, seq, table).SerializeToString()
        try:
            durable = store.append(HTTP_STREAM_ID, seq, table, payload)
        except (WalFailed, StoreClosed) as exc:
            raise ServerUnavailable(f"cannot log points now: {exc}") from exc
        self._http_seq = seq
        try:
            await durable
        except (WalFailed, StoreClosed) as exc:
            raise ServerUnavailable(f"cannot log points now: {exc}") from exc

    def forget_runs(self, run_ids: Iterable[str]) -> None:
        """Runs were deleted: the next point logged to one of them is checked again."""
        self.metrics.forget_runs(run_ids)
