"""The stream protocol against a real ``steppe server``: what breaks it is refused, never acked
unstored, and nothing a client sends leaves a data dir the server cannot start on."""

from __future__ import annotations

import struct
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import mlflow
import pytest
from mlflow.tracking import MlflowClient

import steppe
from steppe import wire
from tests.conftest import ServerProcess, start_server


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


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    proc = start_server(tmp_path / "data")
    yield proc
    proc.stop()


def _stub(server: ServerProcess) -> tuple[grpc.Channel, wire.IngestStub]:
    channel = grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}")
    return channel, wire.IngestStub(channel)  # type: ignore[no-untyped-call]


def _send(stub: wire.IngestStub, batches: list[wire.MetricBatch]) -> tuple[int, grpc.RpcError]:
    """Send batches on one call; the highest acked seq and the error that ended the call."""
    acked = 0
    with pytest.raises(grpc.RpcError) as info:
        for ack in stub.StreamMetrics(iter(batches), timeout=30):
            acked = max(acked, ack.acked_seq)
    return acked, info.value


def _steps(server: ServerProcess, run_id: str) -> list[int]:
    client = MlflowClient(server.http_url)
    return sorted(m.step for m in client.get_metric_history(run_id, "loss"))


def test_seq_past_int64_is_refused_and_the_server_restarts(tmp_path: Path) -> None:
    server = start_server(tmp_path / "data")
    try:
        run_id = steppe.Client(server.http_url).create_run().info.run_id
        channel, stub = _stub(server)
        with channel:
            acked, err = _send(stub, [_batch("huge", 2**63, run_id, [1])])
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "seq" in (err.details() or "") and "2^63-1" in (err.details() or "")
        assert acked == 0
    finally:
        assert server.stop() == 0, "".join(server.output)
    again = start_server(tmp_path / "data")
    try:
        assert _steps(again, run_id) == []
    finally:
        assert again.stop() == 0, "".join(again.output)


def test_the_servers_own_stream_id_is_refused(tmp_path: Path) -> None:
    server = start_server(tmp_path / "data")
    try:
        run_id = steppe.Client(server.http_url).create_run().info.run_id
        channel, stub = _stub(server)
        with channel:
            _, err = _send(stub, [_batch("steppe-server-http", 2**64 - 1, run_id, [1])])
            assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
            _, err = _send(stub, [_batch("steppe-server-http", 1, run_id, [1])])
            assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "reserved" in (err.details() or "")
        mlflow.set_tracking_uri(server.http_url)
        MlflowClient(server.http_url).log_metric(run_id, "loss", 2.0, step=2)
        assert _steps(server, run_id) == [2]
    finally:
        assert server.stop() == 0, "".join(server.output)
    again = start_server(tmp_path / "data")
    try:
        MlflowClient(again.http_url).log_metric(run_id, "loss", 3.0, step=3)
        assert _steps(again, run_id) == [2, 3]
    finally:
        assert again.stop() == 0, "".join(again.output)


def test_a_seq_going_back_on_one_call_is_refused_not_acked(server: ServerProcess) -> None:
    run_id = steppe.Client(server.http_url).create_run().info.run_id
    channel, stub = _stub(server)
    with channel:
        stream = uuid.uuid4().hex
        acked, err = _send(stub, [_batch(stream, 5, run_id, [5]), _batch(stream, 3, run_id, [3])])
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "seq" in (err.details() or "")
        assert acked == 5
        # A gap is refused as well: its missing seqs could later be acked as resends.
        gap = uuid.uuid4().hex
        acked, err = _send(stub, [_batch(gap, 1, run_id, [10]), _batch(gap, 3, run_id, [30])])
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and acked == 1
        # A resend after a reconnect is still dropped and acked (exactly once).
        acks = list(stub.StreamMetrics(iter([_batch(stream, 5, run_id, [5])]), timeout=30))
        assert acks[-1].acked_seq == 5
    assert _steps(server, run_id) == [5, 10]


def test_a_second_live_call_on_one_stream_id_is_refused(server: ServerProcess) -> None:
    run_id = steppe.Client(server.http_url).create_run().info.run_id
    channel, stub = _stub(server)
    with channel:
        stream = uuid.uuid4().hex
        release = threading.Event()

        def first() -> Iterator[wire.MetricBatch]:
            yield _batch(stream, 1, run_id, [1])
            release.wait(30)

        call = stub.StreamMetrics(first(), timeout=30)
        assert next(call).acked_seq == 1  # the first call is live and holds the stream id
        acked, err = _send(stub, [_batch(stream, 2, run_id, [2])])
        assert err.code() == grpc.StatusCode.ALREADY_EXISTS and stream in (err.details() or "")
        assert acked == 0
        release.set()
        assert list(call) == []
        # Once the first call ended, the stream id is free again.
        acks = list(stub.StreamMetrics(iter([_batch(stream, 2, run_id, [2])]), timeout=30))
        assert acks[-1].acked_seq == 2
    assert _steps(server, run_id) == [1, 2]


def test_latest_at_a_tied_step_and_timestamp_is_the_largest_value_as_in_mlflow(
    server: ServerProcess, tmp_path: Path
) -> None:
    from mlflow.entities import Metric

    ts = 1_700_000_000_000
    batches = [
        [Metric("loss", 0.5, ts, 3), Metric("loss", 0.9, ts, 3), Metric("loss", 0.1, ts, 3)],
        [Metric("acc", 0.7, ts, 1)],
        [Metric("acc", 0.2, ts, 1)],  # later arrival, same (step, timestamp), smaller value
    ]
    got = {}
    for uri in (server.http_url, f"sqlite:///{tmp_path / 'mlflow.db'}"):
        client = MlflowClient(uri)
        run_id = client.create_run(client.get_experiment_by_name("Default").experiment_id)
        for metrics in batches:
            client.log_batch(run_id.info.run_id, metrics=metrics)
        got[uri] = client.get_run(run_id.info.run_id).data.metrics
    mine, theirs = got.values()
    assert mine == theirs == {"loss": 0.9, "acc": 0.7}


def test_health_and_the_open_files_limit(server: ServerProcess) -> None:
    import json
    import resource
    import urllib.request

    with urllib.request.urlopen(server.http_url + "/health") as response:
        assert response.status == 200 and json.loads(response.read()) == {"status": "ok"}
    limits = Path(f"/proc/{server.proc.pid}/limits").read_text()
    line = next(line for line in limits.splitlines() if line.startswith("Max open files"))
    soft, hard = line.split()[3:5]
    assert soft == hard
    assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] <= int(soft)
