"""Server hardening against a real ``steppe server``: idle stream watermarks expire without
breaking exactly-once, HTTP connections are capped, half-dead gRPC calls are reaped, a full
disk is a clear error, recovery opens what older versions acked, and health probes."""

from __future__ import annotations

import os
import queue
import socket
import sqlite3
import struct
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest
from mlflow.tracking import MlflowClient

import steppe
from steppe import stream_ids, wire
from tests.conftest import ServerProcess, start_server, wait_until


def _batch(stream_id: str, seq: int, run_id: str, steps: list[int]) -> wire.MetricBatch:
    n = len(steps)
    return wire.MetricBatch(
        stream_id=stream_id,
        seq=seq,
        run_ids=[run_id],
        keys=["loss"],
        count=n,
        run_index=bytes(4 * n),
        key_index=bytes(4 * n),
        step=struct.pack(f"<{n}q", *steps),
        timestamp_ms=struct.pack(f"<{n}q", *([1_700_000_000_000] * n)),
        value=struct.pack(f"<{n}d", *(float(s) for s in steps)),
    )


def _stub(server: ServerProcess) -> tuple[grpc.Channel, wire.IngestStub]:
    channel = grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}")
    return channel, wire.IngestStub(channel)  # type: ignore[no-untyped-call]


def _acked(stub: wire.IngestStub, batches: list[wire.MetricBatch]) -> int:
    return max(ack.acked_seq for ack in stub.StreamMetrics(iter(batches), timeout=30))


def _refused(stub: wire.IngestStub, batches: list[wire.MetricBatch]) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        for ack in stub.StreamMetrics(iter(batches), timeout=30):
            assert ack.acked_seq == 0, "a refused batch must not be acked"
    return info.value


def _steps(server: ServerProcess, run_id: str) -> list[int]:
    history = MlflowClient(server.http_url).get_metric_history(run_id, "loss")
    return sorted(m.step for m in history)


def _watermark_rows(data_dir: Path) -> set[str]:
    db = sqlite3.connect(f"file:{data_dir / 'catalog.sqlite'}?mode=ro", uri=True)
    try:
        return {row[0] for row in db.execute("SELECT stream_id FROM stream_watermarks")}
    finally:
        db.close()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    proc = start_server(tmp_path / "data")
    yield proc
    assert proc.stop() == 0, "".join(proc.output)


# -- item 10: idle stream watermarks expire ---------------------------------------------------


def test_idle_stream_watermarks_expire_and_an_expired_stream_is_refused(tmp_path: Path) -> None:
    server = start_server(tmp_path / "data", "--stream-retention-s", "2")
    try:
        run_id = steppe.Client(server.http_url).create_run().info.run_id
        channel, stub = _stub(server)
        with channel:
            streams = []
            for i in range(200):
                streams.append(stream_ids.new_stream_id())
                assert _acked(stub, [_batch(streams[-1], 1, run_id, [i])]) == 1
            # An id without a creation time (an older client) is never forgotten.
            assert _acked(stub, [_batch("legacy-stream", 1, run_id, [1000])]) == 1
            wait_until(lambda: _watermark_rows(server.data_dir) == {"legacy-stream"}, 60)
            # Its batch again: the server no longer knows what it stored, so it refuses.
            err = _refused(stub, [_batch(streams[0], 1, run_id, [0])])
            assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert streams[0] in (err.details() or "") and "retention" in (err.details() or "")
            assert _acked(stub, [_batch("legacy-stream", 1, run_id, [1000])]) == 1
        assert _steps(server, run_id) == [*range(200), 1000]
    finally:
        assert server.stop() == 0, "".join(server.output)
    # Forgotten for good: after a restart the rows stay gone and the stream stays refused.
    again = start_server(tmp_path / "data", "--stream-retention-s", "2")
    try:
        assert _watermark_rows(again.data_dir) == {"legacy-stream"}
        channel, stub = _stub(again)
        with channel:
            err = _refused(stub, [_batch(streams[1], 1, run_id, [1])])
            assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert _steps(again, run_id) == [*range(200), 1000]
    finally:
        assert again.stop() == 0, "".join(again.output)


def test_a_stream_reconnecting_within_the_retention_is_exactly_once(tmp_path: Path) -> None:
    server = start_server(tmp_path / "data", "--stream-retention-s", "3600")
    stream = stream_ids.new_stream_id()
    try:
        run_id = steppe.Client(server.http_url).create_run().info.run_id
        channel, stub = _stub(server)
        with channel:
            assert _acked(stub, [_batch(stream, s, run_id, [s]) for s in (1, 2, 3)]) == 3
            # Reconnect: the unacked-looking batches go again, plus new ones.
            assert _acked(stub, [_batch(stream, s, run_id, [s]) for s in range(1, 6)]) == 5
            # A stream opened long ago that the server never knew could have been forgotten.
            old = stream_ids.new_stream_id(int(time.time() * 1000) - 2 * 3600_000)
            assert _refused(stub, [_batch(old, 1, run_id, [99])]).code() == (
                grpc.StatusCode.FAILED_PRECONDITION
            )
        assert _steps(server, run_id) == [1, 2, 3, 4, 5]
    finally:
        assert server.stop() == 0, "".join(server.output)
    again = start_server(tmp_path / "data", "--stream-retention-s", "3600")
    try:
        channel, stub = _stub(again)
        with channel:
            assert _acked(stub, [_batch(stream, s, run_id, [s]) for s in range(1, 7)]) == 6
        assert _steps(again, run_id) == [1, 2, 3, 4, 5, 6]
        assert stream in _watermark_rows(again.data_dir)
    finally:
        assert again.stop() == 0, "".join(again.output)


def test_sync_of_a_spool_older_than_the_retention_is_refused_and_kept(
    tmp_path: Path,
) -> None:
    from steppe.spool import Spool
    from tests.conftest import clean_env, run_sync

    server = start_server(tmp_path / "data", "--stream-retention-s", "3600")
    try:
        run_id = steppe.Client(server.http_url).create_run().info.run_id
        spool_root = tmp_path / "spool"
        # A spool a killed process left two hours ago (its stream id says when it began).
        old = stream_ids.new_stream_id(int(time.time() * 1000) - 2 * 3600_000)
        spool = Spool(spool_root, old, server.http_url)
        for seq in (1, 2):
            spool.append(seq, _batch(old, seq, run_id, [seq]).SerializeToString())
        spool.close(all_acked=False)
        done = run_sync(clean_env(STEPPE_SPOOL_DIR=str(spool_root)))
        assert done.returncode == 1, done.stdout + done.stderr
        assert "retention" in done.stderr and "kept for the next try" in done.stderr
        assert (spool_root / old).is_dir()
        assert _steps(server, run_id) == []
    finally:
        assert server.stop() == 0, "".join(server.output)


def test_an_idle_sender_moves_to_a_new_stream_id(
    tracking: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from steppe import sender

    monkeypatch.setattr(sender, "STREAM_IDLE_S", 0.0)
    with steppe.start_run() as run:
        steppe.log_metric("loss", 1.0, step=1)
        steppe.flush()
        first = _sender_stream_id(tracking)
        steppe.log_metric("loss", 2.0, step=2)
        steppe.flush()
        assert _sender_stream_id(tracking) != first
        assert stream_ids.created_ms(first) is not None
    history = MlflowClient(tracking).get_metric_history(run.info.run_id, "loss")
    assert sorted((m.step, m.value) for m in history) == [(1, 1.0), (2, 2.0)]


def _sender_stream_id(tracking_uri: str) -> str:
    from steppe import connection

    return connection.connect(tracking_uri).sender.stream_id


# -- gRPC keepalive: a half-dead client does not hold its stream id -------------------------


class _FreezableProxy:
    """A TCP relay to ``port`` on 127.0.0.1 whose ``freeze()`` stops forwarding while keeping
    both sockets open: the server then sees a peer that never answers (a half-dead host)."""

    def __init__(self, port: int) -> None:
        self._upstream = port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._frozen = threading.Event()
        self._sockets: list[socket.socket] = [self._listener]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self._upstream))
            self._sockets += [client, server]
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        while not self._frozen.is_set():
            try:
                data = src.recv(65536)
            except OSError:
                return
            if not data or self._frozen.is_set():
                return  # frozen: drop it and read no more, the socket stays open
            dst.sendall(data)

    def freeze(self) -> None:
        self._frozen.set()

    def close(self) -> None:
        for sock in self._sockets:
            sock.close()


def test_a_half_dead_client_is_reaped_and_its_stream_id_freed(tmp_path: Path) -> None:
    server = start_server(tmp_path / "data", "--grpc-keepalive-s", "1")
    proxy = _FreezableProxy(server.grpc_port)
    try:
        run_id = steppe.Client(server.http_url).create_run().info.run_id
        stream = stream_ids.new_stream_id()
        release = threading.Event()

        def first() -> Iterator[wire.MetricBatch]:
            yield _batch(stream, 1, run_id, [1])
            release.wait(60)

        dead = grpc.insecure_channel(f"127.0.0.1:{proxy.port}")
        call = dead.stream_stream(
            "/steppe.v1.Ingest/StreamMetrics",
            request_serializer=wire.MetricBatch.SerializeToString,
            response_deserializer=wire.StreamAck.FromString,
        )(first(), timeout=60)
        assert next(call).acked_seq == 1
        proxy.freeze()  # the client's host "vanishes": no FIN, no RST, no answer to pings
        channel, stub = _stub(server)
        with channel:
            outcomes: list[grpc.StatusCode] = []

            def resent() -> bool:
                try:
                    return _acked(stub, [_batch(stream, s, run_id, [s]) for s in (1, 2)]) == 2
                except grpc.RpcError as err:
                    outcomes.append(err.code())
                    return False

            wait_until(resent, timeout_s=30, interval_s=0.2)
            assert set(outcomes) <= {grpc.StatusCode.ALREADY_EXISTS}
        assert _steps(server, run_id) == [1, 2]
        release.set()
        call.cancel()
        dead.close()
    finally:
        proxy.close()
        assert server.stop() == 0, "".join(server.output)


def test_the_server_accepts_the_clients_keepalive_pings(monkeypatch: pytest.MonkeyPatch) -> None:
    """gRPC closes a connection (GOAWAY too_many_pings) whose peer pings more often than the
    server allows, so the server's own options must let a client ping every KEEPALIVE_TIME_MS
    on an idle stream. Scaled down: the client pings every second (gRPC's floor), the server
    allows 100 ms; with the option misspelt (gRPC ignores unknown keys; its default is
    5 minutes) the third early ping is a strike too many and the idle stream dies at ~6 s."""
    from steppe import channel
    from steppe.ingest import service

    assert service._MIN_CLIENT_PING_INTERVAL_MS < channel.KEEPALIVE_TIME_MS
    monkeypatch.setattr(service, "_MIN_CLIENT_PING_INTERVAL_MS", 100)

    def echo(requests: Iterator[bytes], context: grpc.ServicerContext) -> Iterator[bytes]:
        yield from requests

    handler = grpc.method_handlers_generic_handler(
        "t.Echo", {"Chat": grpc.stream_stream_rpc_method_handler(echo)}
    )
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=2),
        handlers=[handler],
        options=service._keepalive_options(60_000),
    )
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    client = grpc.insecure_channel(
        f"127.0.0.1:{port}",
        options=[
            ("grpc.keepalive_time_ms", 1000),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.max_pings_without_data", 0),
        ],
    )
    try:
        outbox: queue.Queue[bytes | None] = queue.Queue()
        replies = client.stream_stream("/t.Echo/Chat")(iter(outbox.get, None), timeout=30)
        outbox.put(b"a")
        assert next(replies) == b"a"
        idle_until = time.monotonic() + 8.0  # the scenario itself: pings on an idle stream
        while time.monotonic() < idle_until:
            time.sleep(0.1)
        outbox.put(b"b")
        assert next(replies) == b"b", "the idle stream was closed (GOAWAY too_many_pings?)"
        outbox.put(None)
    finally:
        client.close()
        server.stop(None)


# -- health probes ---------------------------------------------------------------------------


def _get(url: str, host: str) -> tuple[int, bytes]:
    import urllib.error
    import urllib.request

    request = urllib.request.Request(url, headers={"Host": host})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def test_health_answers_a_probe_with_any_host_but_nothing_else_does(server: ServerProcess) -> None:
    """MLflow 3 exempts its health probe from the Host allow-list (a load balancer probes
    with its own Host); every other route, server-info included, still checks it."""
    import json

    status, body = _get(server.http_url + "/health", "10.1.2.3:8080")
    assert status == 200 and json.loads(body) == {"status": "ok"}
    status, body = _get(server.http_url + "/api/2.0/mlflow/experiments/search", "evil.example")
    assert status == 403 and json.loads(body)["error_code"] == "PERMISSION_DENIED"
    for path in ("/api/steppe/v1/server-info", "/api/3.0/mlflow/server-info", "/health/x"):
        assert _get(server.http_url + path, "evil.example")[0] == 403, path


# -- item 2: a cap on HTTP connections --------------------------------------------------------


def _fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def test_idle_http_connections_are_capped_and_the_server_recovers(tmp_path: Path) -> None:
    cap = 40
    server = start_server(tmp_path / "data", "--http-max-connections", str(cap))
    pid = server.proc.pid
    port = int(server.http_url.rsplit(":", 1)[1])
    try:
        assert _get(server.http_url + "/health", "127.0.0.1")[0] == 200
        before = _fds(pid)
        sockets = [socket.create_connection(("127.0.0.1", port)) for _ in range(cap + 50)]
        try:
            # The last 50 are answered with a 503 and closed at once, without a request.
            for sock in sockets[cap:]:
                sock.settimeout(10)
                answer = b""
                while chunk := sock.recv(4096):
                    answer += chunk
                assert answer.startswith(b"HTTP/1.1 503"), answer[:100]
                assert b"TEMPORARILY_UNAVAILABLE" in answer
            # The server holds at most the cap (plus its own few), not one fd per socket.
            assert _fds(pid) <= before + cap + 5, (_fds(pid), before)
            assert _get(server.http_url + "/health", "127.0.0.1")[0] == 503
        finally:
            for sock in sockets:
                sock.close()
        wait_until(lambda: _get(server.http_url + "/health", "127.0.0.1")[0] == 200, 30)
        wait_until(lambda: _fds(pid) <= before + 2, 30)
        assert MlflowClient(server.http_url).search_experiments()
    finally:
        assert server.stop() == 0, "".join(server.output)
    refusals = [line for line in server.output if "refused" in line and "HTTP conn" in line]
    assert len(refusals) == 1 and "over the cap of 40" in refusals[0], server.output
    assert not any("Traceback" in line for line in server.output), server.output


# -- item 1: recovery opens what an older steppe acked ---------------------------------------


def _write_wal(wal_dir: Path, segment: int, batches: list[wire.MetricBatch]) -> None:
    """Append ``batches`` with the real WAL writer, as an older steppe would have logged
    them (no decode-time check in the way)."""
    import asyncio

    from steppe.ingest.wal import WriteAheadLog

    async def write() -> None:
        wal = WriteAheadLog(wal_dir, segment)
        for batch in batches:
            wal.append(batch.SerializeToString())
        await wal.sync()
        await wal.close()

    asyncio.run(write())


def test_a_data_dir_with_out_of_range_seqs_from_an_older_steppe_opens(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    server = start_server(data_dir)
    try:
        run_id = steppe.Client(server.http_url).create_run().info.run_id
        MlflowClient(server.http_url).log_metric(run_id, "loss", 0.0, step=0)
    finally:
        assert server.stop() == 0, "".join(server.output)
    segments = sorted(int(p.stem) for p in (data_dir / "wal").glob("*.wal")) or [0]
    parts = [p.name for p in (data_dir / "metrics").glob("*.parquet")]
    last = max([segments[-1], *(int(n.split("-")[2].split(".")[0]) for n in parts)])
    _write_wal(
        data_dir / "wal",
        last + 1,
        [
            _batch("old-client", 2**63 + 5, run_id, [1]),
            _batch("steppe-server-http", 2**64 - 1, run_id, [2]),
            _batch("old-client-2", 3, run_id, [3]),
        ],
    )
    for attempt in range(2):  # the first start replays them; the second reads the files
        server = start_server(data_dir)
        try:
            assert _steps(server, run_id) == [0, 1, 2, 3] + [4] * attempt
            # The server's own HTTP stream still works, and flushes can save watermarks.
            MlflowClient(server.http_url).log_metric(run_id, "loss", 4.0 + attempt, step=4)
            channel, stub = _stub(server)
            with channel:
                # A resend of the out-of-range batch is refused, never stored twice.
                err = _refused(stub, [_batch("old-client", 2**63 + 5, run_id, [1])])
                assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
                assert _acked(stub, [_batch("old-client-2", 3, run_id, [3])]) == 3
        finally:
            assert server.stop() == 0, "".join(server.output)
        warnings = [line for line in server.output if "out of range" in line]
        assert len(warnings) == (2 if attempt == 0 else 0), warnings
    again = start_server(data_dir)
    try:
        assert _steps(again, run_id) == [0, 1, 2, 3, 4, 4]
    finally:
        assert again.stop() == 0, "".join(again.output)


# -- item 9: disk full during an upload or a tag write ----------------------------------------


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 8 MiB tmpfs (needs root, as CI has; skipped where mounting is not allowed)."""
    import subprocess

    mount = tmp_path / "disk"
    mount.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount tmpfs here: {done.stderr.strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def _request(
    method: str, url: str, body: bytes | None = None, content_type: str = "application/json"
) -> tuple[int, dict[str, object]]:
    import json
    import urllib.error
    import urllib.request

    request = urllib.request.Request(
        url, data=body, method=method, headers={"Content-Type": content_type}
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def _fill(disk: Path) -> Path:
    """Fill ``disk`` up with one file; returns it (delete it to free the space)."""
    filler = disk / "filler"
    with open(filler, "wb") as f:
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError:
            pass
    return filler


def _temp_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.name.endswith((".part", ".tmp"))]


def test_disk_full_during_an_upload_or_a_tag_is_a_clear_507(small_disk: Path) -> None:
    import json

    data_dir = small_disk / "data"
    server = start_server(data_dir)
    api = server.http_url + "/api/2.0/mlflow"
    try:
        run = MlflowClient(server.http_url).create_run("0")
        run_id, experiment_id = run.info.run_id, run.info.experiment_id
        artifacts = (
            f"{server.http_url}/api/2.0/mlflow-artifacts/artifacts/"
            f"{experiment_id}/{run_id}/artifacts"
        )
        # An upload larger than the disk: refused whole, its temp file removed.
        status, body = _request(
            "PUT", f"{artifacts}/big.bin", b"\1" * (16 << 20), "application/octet-stream"
        )
        assert status == 507, body
        assert body["error_code"] == "RESOURCE_EXHAUSTED" and "disk is full" in str(body["message"])
        assert _temp_files(data_dir) == []
        listed = MlflowClient(server.http_url).list_artifacts(run_id)
        assert listed == []
        # A tag write while the disk is full: refused, the run unchanged.
        filler = _fill(small_disk)
        try:
            tag = {"run_id": run_id, "key": "note", "value": "x" * 8000}
            status, body = _request("POST", f"{api}/runs/set-tag", json.dumps(tag).encode())
            assert status == 507, body
            assert body["error_code"] == "RESOURCE_EXHAUSTED"
            assert "note" not in MlflowClient(server.http_url).get_run(run_id).data.tags
            assert _get(server.http_url + "/health", "127.0.0.1")[0] == 200
        finally:
            filler.unlink()
        # Space is back: the same writes succeed and the server never stopped serving.
        status, _ = _request("POST", f"{api}/runs/set-tag", json.dumps(tag).encode())
        assert status == 200
        status, _ = _request("PUT", f"{artifacts}/small.txt", b"hello", "text/plain")
        assert status == 200
        client = MlflowClient(server.http_url)
        assert client.get_run(run_id).data.tags["note"] == "x" * 8000
        assert [f.path for f in client.list_artifacts(run_id)] == ["small.txt"]
        client.log_metric(run_id, "loss", 1.0, step=1)
        assert _steps(server, run_id) == [1]
        assert server.proc.poll() is None
        assert not any("Traceback" in line for line in server.output), server.output
    finally:
        assert server.stop() == 0, "".join(server.output)
    assert _temp_files(data_dir) == []


def test_streams_benchmark_smoke() -> None:
    """benchmarks/streams.py at smoke size: every point stored, every watermark expired."""
    import json
    import subprocess
    import sys

    from tests.conftest import clean_env

    root = Path(__file__).resolve().parents[1]
    done = subprocess.run(
        [sys.executable, str(root / "benchmarks" / "streams.py"), "--smoke", "--json"],
        capture_output=True,
        text=True,
        timeout=150,
        env=clean_env(),
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    (row,) = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert row["stored"] == row["streams"] == row["rows_after"] == 300
    assert row["rows_expired"] == 0
