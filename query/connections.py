"""A cap on concurrent HTTP connections: the runner for the query app that closes what
comes in beyond ``max_connections`` (with a 503) instead of serving it.

Idle or half-open connections each hold a file descriptor; without a cap, enough of them
exhaust RLIMIT_NOFILE and the WAL, Parquet files and gRPC fail with EMFILE. It does not
route, authenticate or read requests.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

__all__ = ["DEFAULT_MAX_CONNECTIONS", "CappedAppRunner"]

logger = logging.getLogger("steppe.query.connections")

#: Default cap: a browser opens ~6 connections per server, a client process one or two.
DEFAULT_MAX_CONNECTIONS = 256
_BODY = (
    b'{"error_code": "TEMPORARILY_UNAVAILABLE", "message": "the server has too many open '
    b'HTTP connections; retry shortly"}\n'
)
_FULL = (
    b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\n"
    b"Content-Type: application/json\r\nRetry-After: 1\r\n"
    + f"Content-Length: {len(_BODY)}\r\n\r\n".encode()
    + _BODY
)


#: A connection that was accepted but has not reached connection_made (a TLS handshake in
#: progress) counts for at most this long (asyncio's default TLS handshake timeout).
_PENDING_S = 60.0


class _Refusal(asyncio.Protocol):
    """The protocol of a connection over the cap: answer 503 and close it, read nothing."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.WriteTransport)
        transport.write(_FULL)
        transport.close()  # frees the descriptor once the 503 is written

    def data_received(self, data: bytes) -> None:
        pass


class _CappedServer(web.Server):
    """aiohttp's low-level server as the protocol factory of a listening socket, giving a
    connection over ``max_connections`` a _Refusal instead of a request handler.

    Open connections are the ones aiohttp tracks (connection_made until connection_lost),
    plus handlers made but not yet connected (accept() hands over a batch of sockets
    before any of their connection_made runs; a TLS handshake takes a while)."""

    def __init__(self, handler: Any, *, max_connections: int, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self.max_connections = max_connections
        self.refused = 0
        self._pending: dict[int, tuple[RequestHandler, float]] = {}
        self._logged_at = -math.inf
        self._logged_refused = 0

    def _open(self) -> int:
        if self._pending:
            horizon = time.monotonic() - _PENDING_S
            for key, (_, made_at) in list(self._pending.items()):
                if made_at < horizon:  # its handshake failed: it will never connect
                    del self._pending[key]
        return len(self._connections) + len(self._pending)

    def __call__(self) -> Any:
        if self._open() >= self.max_connections:
            self._note_refusal()
            return _Refusal()
        handler = super().__call__()
        self._pending[id(handler)] = (handler, time.monotonic())
        return handler

    def connection_made(self, handler: RequestHandler, transport: asyncio.Transport) -> None:
        self._pending.pop(id(handler), None)
        super().connection_made(handler, transport)

    def _note_refusal(self) -> None:
        self.refused += 1
        now = time.monotonic()
        if now - self._logged_at >= 60.0:  # at most one line a minute, with the count
            logger.warning(
                "refused %d HTTP connection(s) over the cap of %d open ones "
                "(steppe server --http-max-connections)",
                self.refused - self._logged_refused,
                self.max_connections,
            )
            self._logged_at, self._logged_refused = now, self.refused


class CappedAppRunner(web.AppRunner):
    """``web.AppRunner`` whose server serves at most ``max_connections`` connections at once.

    runner = CappedAppRunner(app, max_connections=256)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    """

    def __init__(self, app: web.Application, *, max_connections: int, **kwargs: Any) -> None:
        if max_connections < 1:
            raise ValueError(f"max_connections must be at least 1, not {max_connections}")
        super().__init__(app, **kwargs)
        self._max_connections = max_connections

    async def _make_server(self) -> web.Server:
        made = await super()._make_server()
        # The same server aiohttp made (handler, request factory, keyword arguments such as
        # keepalive_timeout), as the capped subclass.
        return _CappedServer(
            made.request_handler,
            max_connections=self._max_connections,
            request_factory=made.request_factory,
            handler_cancellation=made.handler_cancellation,
            loop=asyncio.get_running_loop(),
            **made._kwargs,
        )

    @property
    def refused_connections(self) -> int:
        server = self.server
        return server.refused if isinstance(server, _CappedServer) else 0
