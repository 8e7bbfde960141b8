"""One connection per tracking URI per process: endpoints, gRPC channel, sender, HTTP reads.

Connections are forgotten in a forked child (gRPC channels and threads do not survive a
fork); the child opens its own on first use and never resends the parent's points.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

import grpc

from steppe import config, errors, http, wire
from steppe.channel import open_channel
from steppe.discovery import Endpoint, local_data_dir, resolve
from steppe.journal import ResilientUnary, SpooledFiles, run_op
from steppe.sender import Sender
from steppe.spool import Spool
from steppe.sync import sync_in_background

_MAX_MESSAGE_BYTES = 64 << 20

log = logging.getLogger("steppe.connection")


class Connection:
    """``endpoint.grpc_target`` is empty while the server is unknown (offline mode, or
    down at start): lifecycle calls are journaled and points spooled until it is found."""

    def __init__(
        self, endpoint: Endpoint, tracking_uri: str | None = None, offline: bool = False
    ) -> None:
        self.endpoint = endpoint
        self._tracking_uri = tracking_uri
        self._channel_lock = threading.Lock()
        self.channel: grpc.Channel | None = None
        self.stub: wire.IngestStub | None = None
        self._wire_unary: wire.Unary | None = None
        self._metric_stream: wire.MetricStream | None = None
        # What `steppe sync` reconnects to: the URI, or the local data dir it meant.
        spool_uri = tracking_uri or str(endpoint.data_dir or config.data_dir())
        spool_root = config.spool_dir()
        if endpoint.grpc_target:
            self._open_channel(endpoint)
        self.sender = Sender(
            self.stub_for_stream,
            run_op=self._replay,
            offline=offline,
            buffer_points=config.buffer_points(),
            batch_points=config.batch_points(),
            send_interval_s=config.send_interval_s(),
            spool=lambda stream_id: Spool(spool_root, stream_id, spool_uri),
            max_inflight_bytes=config.max_inflight_bytes(),
            window=config.send_window_batches(),
            describe_server=lambda: f"the steppe server at {self.endpoint.http_url or spool_uri}",
        )
        self.unary = ResilientUnary(
            self._direct, self.sender.journal, self.sender.ops_pending, offline
        )
        if not offline:
            sync_in_background(spool_uri)

    def _open_channel(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint
        self.channel = open_channel(endpoint)
        self.stub = wire.IngestStub(self.channel)  # type: ignore[no-untyped-call]
        self._wire_unary = wire.Unary(self.stub, timeout_s=config.connect_timeout_s())
        self._metric_stream = wire.MetricStream(self.channel)

    def _relocate(self) -> None:
        """Look again where the server is (a restarted local server listens on new ports).
        Never starts a server; raises ServerUnavailable if none is found."""
        endpoint = resolve(self._tracking_uri, start=False)
        with self._channel_lock:
            if endpoint.grpc_target != self.endpoint.grpc_target or self.channel is None:
                old = self.channel
                self._open_channel(endpoint)
                if old is not None:
                    old.close()

    def _base_url(self) -> str:
        if not self.endpoint.http_url or not self.endpoint.grpc_target:
            if self.sender.offline:
                raise errors.ServerUnavailable(
                    "offline mode (STEPPE_MODE=offline): reads need a server; send the "
                    "spooled runs with `steppe sync`, then read them"
                )
            self._relocate()
        return self.endpoint.http_url

    def http_url(self) -> str:
        """The server's HTTP address, looked up again while it is unknown; raises
        ServerUnavailable in offline mode or when no server is found."""
        return self._base_url()

    def _replay(self, op: dict[str, Any]) -> None:
        """The sender's replay of one journaled call (artifacts come from its spool)."""
        spool_dir = self.sender.spool_dir
        files = SpooledFiles(spool_dir, self._base_url) if spool_dir is not None else None
        run_op(self._direct(), op, files)

    def _direct(self) -> wire.Unary:
        if self._wire_unary is None:
            self._relocate()
        assert self._wire_unary is not None
        return self._wire_unary

    def stub_for_stream(self, after_failure: bool) -> wire.MetricStream:
        """The metric stream for the next call, looking the server up again after a failure."""
        if after_failure or self._metric_stream is None:
            try:
                self._relocate()
            except errors.SteppeError:
                if self._metric_stream is None:
                    raise
        assert self._metric_stream is not None
        return self._metric_stream

    # --- HTTP reads (steppe's JSON API, query/API.md) -----------------------------------

    def get_json(self, path: str, params: dict[str, str] | None = None) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.get_bytes(path, params))
        return data

    def get_bytes(self, path: str, params: dict[str, str] | None = None) -> bytes:
        """GET; the raw answer (JSON, or an Arrow IPC stream when asked for one)."""
        url = self._base_url() + path
        if params:
            url += "?" + urllib.parse.urlencode(params)
        return _fetch(urllib.request.Request(url), None)

    def post_json(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        request = urllib.request.Request(
            self._base_url() + path,
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        return self._request(request)

    def post_bytes(self, path: str, body: dict[str, Any], timeout_s: float | None = None) -> bytes:
        """POST a JSON body; the raw answer (e.g. an Arrow IPC stream)."""
        return post(self._base_url() + path, body, timeout_s)

    def _request(self, request: urllib.request.Request) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(_fetch(request, None))
        return data

    def close(self, timeout_s: float) -> None:
        try:
            self.sender.shutdown(timeout_s)
        finally:
            if self.channel is not None:
                self.channel.close()


def post(url: str, body: dict[str, Any], timeout_s: float | None = None) -> bytes:
    """POST ``body`` as JSON to a steppe server URL; the answer's bytes. HTTP errors become
    steppe errors (the server's error_code), an unreachable server ServerUnavailable."""
    request = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    return _fetch(request, timeout_s)


def _fetch(request: urllib.request.Request, timeout_s: float | None) -> bytes:
    timeout = config.connect_timeout_s() if timeout_s is None else timeout_s
    with http.open_checked(request, timeout) as response:
        data: bytes = response.read()
        return data


def _open(tracking_uri: str | None) -> Connection:
    if config.offline():
        return Connection(Endpoint("", "", local_data_dir(tracking_uri)), tracking_uri, True)
    try:
        endpoint = resolve(tracking_uri)
    except errors.ServerUnavailable as exc:
        # Keep the training job running: spool now, deliver when the server is back.
        log.warning("steppe: %s; logging locally until the server is reachable", exc)
        endpoint = Endpoint(tracking_uri or "", "", local_data_dir(tracking_uri))
    return Connection(endpoint, tracking_uri)


_lock = threading.Lock()
_connections: dict[str | None, Connection] = {}


def connect(tracking_uri: str | None) -> Connection:
    """The process's connection for this URI (None: the local data dir), made on first use."""
    conn = _connections.get(tracking_uri)
    if conn is not None:
        return conn
    with _lock:
        conn = _connections.get(tracking_uri)
        if conn is None:
            conn = _open(tracking_uri)
            _connections[tracking_uri] = conn
        return conn


def close_all(timeout_s: float) -> list[errors.SteppeError]:
    """Flush and close every connection; returns what could not be flushed."""
    problems: list[errors.SteppeError] = []
    with _lock:
        conns = list(_connections.values())
        _connections.clear()
    for conn in conns:
        try:
            conn.close(timeout_s)
        except errors.SteppeError as exc:
            problems.append(exc)
    return problems


def _forget_after_fork() -> None:
    global _lock
    _lock = threading.Lock()
    _connections.clear()


os.register_at_fork(after_in_child=_forget_after_fork)
