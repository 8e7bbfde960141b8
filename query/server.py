"""The composition root of ``steppe server``: gRPC ingest and the HTTP query app on one
asyncio loop, for one data dir that this process owns.

It sits at the top of the dependency graph (client <- ingest <- query <- this module): it
wires ingest's Ingestor and query's app together, and nothing but the CLI imports it, lazily,
so that importing ``steppe`` in a training process never loads the server side.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from steppe import __version__
from steppe.ingest.catalog import open_catalog, redact_dsn
from steppe.ingest.layout import DataDir
from steppe.ingest.service import Ingestor
from steppe.ingest.storage import open_storage
from steppe.lock import Owner, OwnerLock
from steppe.query.app import make_app
from steppe.query.artifacts import ArtifactStore
from steppe.query.connections import CappedAppRunner
from steppe.query.guard import default_allowed_hosts

log = logging.getLogger("steppe.server")

_LOOPBACK = {"127.0.0.1", "localhost", "::1"}


@dataclass(frozen=True)
class ServerOptions:
    data_dir: Path
    host: str = "127.0.0.1"
    http_port: int = 5000
    grpc_port: int = 5001
    idle_timeout_s: float | None = None  # None: run until signalled
    grace_s: float = 10.0
    token: str | None = None  # required from every client when set
    tls_cert: Path | None = None  # PEM certificate chain; with tls_key, serve TLS
    tls_key: Path | None = None
    allowed_hosts: tuple[str, ...] | None = None  # Host header patterns; None: defaults
    allowed_origins: tuple[str, ...] = ()  # Origins allowed to write, besides same-origin
    http_idle_timeout_s: float = 15.0  # close HTTP connections idle (or mid-headers) this long
    stream_retention_s: float = 7 * 86_400.0  # forget idle streams' watermarks after this
    grpc_keepalive_s: float = 60.0  # ping a silent gRPC connection; close it if unanswered
    http_max_connections: int = 256  # more concurrent HTTP connections get a 503 and close
    catalog: str | None = None  # postgresql://... DSN; None: SQLite in the data dir
    storage: str | None = None  # s3://bucket/prefix for artifacts; None: the data dir


class WalUnwritable(RuntimeError):
    """The server stopped because its WAL could not write (the exit status is non-zero)."""


def _raise_open_files_limit() -> int | None:
    """Raise the soft RLIMIT_NOFILE to the hard limit: WAL segments, Parquet files and
    connections all need descriptors, and EMFILE would stop metric writes. Returns the
    soft limit now in force (None if unknown or unlimited)."""
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft != hard:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    except (ImportError, ValueError, OSError):  # no limit to raise here: keep going
        return None
    return None if soft == resource.RLIM_INFINITY else soft


def _connection_cap(wanted: int, open_files: int | None) -> int:
    """At most half the descriptors go to HTTP connections: the rest stay for the WAL,
    Parquet files, the catalog and gRPC."""
    if open_files is None or wanted <= open_files // 2:
        return wanted
    cap = max(1, open_files // 2)
    log.warning(
        "--http-max-connections %d is above half the open-files limit (%d): using %d",
        wanted,
        open_files,
        cap,
    )
    return cap


async def serve(options: ServerOptions, on_ready: Callable[[Owner], None] | None = None) -> None:
    """Run until SIGTERM/SIGINT (or idle timeout); then drain, flush to Parquet, exit.

    Raises ``steppe.lock.DataDirLocked`` at once if another server owns the data dir.
    """
    lock = OwnerLock(options.data_dir)
    lock.acquire()
    try:
        await _serve_locked(options, lock, on_ready)
    finally:
        lock.release()


async def _serve_locked(
    options: ServerOptions, lock: OwnerLock, on_ready: Callable[[Owner], None] | None
) -> None:
    if options.host not in _LOOPBACK and not options.token:
        log.warning(
            "binding %s without a token: anyone who can reach this address can read and "
            "write your runs (set STEPPE_TOKEN or --token)",
            options.host,
        )
    elif options.host not in _LOOPBACK and options.tls_cert is None:
        log.warning("binding %s without TLS: the token travels in clear text", options.host)
    tls = None
    ssl_context = None
    if options.tls_cert is not None and options.tls_key is not None:
        tls = (options.tls_key.read_bytes(), options.tls_cert.read_bytes())
        ssl_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ssl_context.load_cert_chain(options.tls_cert, options.tls_key)
    accept_filter = _OncePerWindow(_ACCEPT_ERROR)
    logging.getLogger("asyncio").addFilter(accept_filter)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    open_files = _raise_open_files_limit()
    data_dir = DataDir.at(options.data_dir)
    data_dir.root.mkdir(parents=True, exist_ok=True)
    storage = None
    if options.storage:
        storage = await loop.run_in_executor(None, open_storage, options.storage, data_dir.root)
        await loop.run_in_executor(None, storage.check)
    catalog = await loop.run_in_executor(None, open_catalog, options.catalog, data_dir.catalog_file)
    if options.catalog is not None:
        log.info("catalog: %s", redact_dsn(options.catalog))
    ingestor = Ingestor(
        data_dir,
        catalog=catalog,
        stream_retention_s=options.stream_retention_s,
        keepalive_s=options.grpc_keepalive_s,
    )
    grpc_port = await ingestor.start(options.host, options.grpc_port, token=options.token, tls=tls)
    last_http = time.monotonic()
    failed: str | None = None

    def touch() -> None:
        nonlocal last_http
        last_http = time.monotonic()

    server_info: dict[str, object] = {
        "version": __version__,
        "grpc_port": grpc_port,
        "http_port": 0,
        "pid": os.getpid(),
    }
    if storage is not None:
        log.info("artifacts in %s", storage.uri)
        artifacts = ArtifactStore(storage.sub("artifacts"))
    else:
        artifacts = ArtifactStore.local(ingestor.data_dir.artifacts_dir)
    stale = await asyncio.get_running_loop().run_in_executor(None, artifacts.remove_stale_uploads)
    if stale:
        log.info("removed %d temporary file(s) of interrupted artifact uploads", stale)
    runner = CappedAppRunner(
        make_app(
            ingestor.catalog,
            ingestor.store,
            server_info,
            on_activity=touch,
            metric_writer=ingestor,
            artifacts=artifacts,
            token=options.token,
            allowed_hosts=(
                list(options.allowed_hosts)
                if options.allowed_hosts is not None
                else default_allowed_hosts(options.host)
            ),
            allowed_origins=options.allowed_origins,
        ),
        max_connections=_connection_cap(options.http_max_connections, open_files),
        access_log=None,
        handle_signals=False,
        # aiohttp starts this timer when a connection opens and only resets it after a
        # whole request: it bounds idle connections and slowly sent headers alike.
        keepalive_timeout=options.http_idle_timeout_s,
    )
    try:
        await runner.setup()
        site = web.TCPSite(runner, options.host, options.http_port, ssl_context=ssl_context)
        await site.start()
        http_port = int(runner.addresses[0][1])
        server_info["http_port"] = http_port
        owner = Owner(os.getpid(), options.host, http_port, grpc_port, tls is not None)
        lock.publish(owner)
        log.info(
            "steppe server %s: data dir %s, UI and API at %s, gRPC on port %d",
            __version__,
            options.data_dir,
            owner.http_url,
            grpc_port,
        )
        if on_ready is not None:
            on_ready(owner)
        while not stop.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=1.0)
            if ingestor.store.failure is not None:
                # The WAL cannot write: exit non-zero so a supervisor restarts us (recovery
                # replays what was acked) rather than serve while refusing every point.
                log.error("cannot write metrics (%s): stopping", ingestor.store.failure)
                failed = ingestor.store.failure
                break
            if options.idle_timeout_s is not None and ingestor.active_streams() == 0:
                idle_s = time.monotonic() - max(last_http, ingestor.last_activity_monotonic)
                if idle_s >= options.idle_timeout_s:
                    log.info("idle for %.0f s: stopping", idle_s)
                    break
        log.info("stopping: draining streams and flushing to Parquet")
    finally:
        # gRPC first, so no new points arrive while the tail is flushed.
        await ingestor.stop(options.grace_s)
        await runner.cleanup()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        logging.getLogger("asyncio").removeFilter(accept_filter)
    if failed is not None:
        raise WalUnwritable(failed)
    log.info("stopped")


#: What asyncio logs on every failed accept() when the process is out of file descriptors.
_ACCEPT_ERROR = "socket.accept() out of system resource"


class _OncePerWindow(logging.Filter):
    """Lets one record starting with ``prefix`` through per ``window_s``, with the count of
    those it dropped since: a flood of connections must not also flood the log."""

    def __init__(self, prefix: str, window_s: float = 60.0) -> None:
        super().__init__()
        self._prefix = prefix
        self._window_s = window_s
        self._next = 0.0
        self._dropped = 0

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.getMessage().startswith(self._prefix):
            return True
        now = time.monotonic()
        if now < self._next:
            self._dropped += 1
            return False
        if self._dropped:
            record.msg = f"{record.getMessage()}\n({self._dropped} more not logged)"
            record.args = ()
        self._next, self._dropped = now + self._window_s, 0
        return True
