"""gRPC channels to a steppe server: TLS when the server's HTTP address is https (trusting
STEPPE_TLS_CA or the system's roots), and the bearer token on every call when one is set."""

from __future__ import annotations

import collections
from pathlib import Path
from typing import Any

import grpc

from steppe import auth, config
from steppe.discovery import Endpoint

_MAX_MESSAGE_BYTES = 64 << 20
#: Ping the server after this long without traffic (the server accepts pings this often).
KEEPALIVE_TIME_MS = 30_000


class _TokenMetadata(
    grpc.UnaryUnaryClientInterceptor,  # type: ignore[misc]
    grpc.StreamStreamClientInterceptor,  # type: ignore[misc]
):
    """Adds ``authorization: Bearer <token>`` to every call."""

    def __init__(self, token: str) -> None:
        self._header = (auth.HEADER, auth.bearer(token))

    def _details(self, details: Any) -> Any:
        metadata = [*(details.metadata or ()), self._header]
        return (
            details._replace(metadata=metadata)
            if hasattr(details, "_replace")
            else (
                _CallDetails(
                    details.method,
                    details.timeout,
                    metadata,
                    details.credentials,
                    details.wait_for_ready,
                    details.compression,
                )
            )
        )

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)

    def intercept_stream_stream(self, continuation: Any, details: Any, requests: Any) -> Any:
        return continuation(self._details(details), requests)


class _CallDetails(
    collections.namedtuple(
        "_CallDetails",
        ["method", "timeout", "metadata", "credentials", "wait_for_ready", "compression"],
    ),
    grpc.ClientCallDetails,  # type: ignore[misc]
):
    pass


def open_channel(endpoint: Endpoint) -> grpc.Channel:
    """A gRPC channel to the server: TLS when its HTTP address is https, plus the token."""
    options = [
        ("grpc.max_send_message_length", _MAX_MESSAGE_BYTES),
        ("grpc.max_receive_message_length", _MAX_MESSAGE_BYTES),
        ("grpc.keepalive_time_ms", KEEPALIVE_TIME_MS),
    ]
    if endpoint.http_url.startswith("https:"):
        ca_file = config.tls_ca_file()
        roots = Path(ca_file).read_bytes() if ca_file else None
        channel = grpc.secure_channel(
            endpoint.grpc_target, grpc.ssl_channel_credentials(root_certificates=roots), options
        )
    else:
        channel = grpc.insecure_channel(endpoint.grpc_target, options=options)
    token = config.token()
    return grpc.intercept_channel(channel, _TokenMetadata(token)) if token else channel
