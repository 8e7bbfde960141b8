"""Bad input, fuzzed with Hypothesis against a real server: every rejection names the
field and the rule, the server stays up, and other data is unaffected."""

from __future__ import annotations

import json
import math
import struct
import urllib.error
import urllib.parse
import urllib.request
import uuid

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import steppe
from steppe import wire
from tests.conftest import ServerProcess

FUZZ = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)

names = st.text(min_size=0, max_size=300)
floats = st.floats(allow_nan=True, allow_infinity=True)
int64s = st.integers(min_value=-(2**63), max_value=2**63 - 1)


@pytest.fixture(scope="module")
def stub(steppe_server: ServerProcess):  # type: ignore[no-untyped-def]
    info = json.loads(
        urllib.request.urlopen(steppe_server.http_url + "/api/steppe/v1/server-info").read()
    )
    channel = grpc.insecure_channel(f"127.0.0.1:{info['grpc_port']}")
    yield wire.IngestStub(channel)  # type: ignore[no-untyped-call]
    channel.close()


@pytest.fixture(scope="module")
def anchor(steppe_server: ServerProcess) -> tuple[str, int]:
    """A run with known data that no fuzzed request may disturb."""
    client = steppe.Client(steppe_server.http_url)
    run = client.create_run()
    for step in range(1000):
        client.log_metric(run.info.run_id, "anchor", float(step), step=step)
    client.flush()
    return run.info.run_id, 1000


def _pack(fmt: str, values: list[float] | list[int]) -> bytes:
    return struct.pack(f"<{len(values)}{fmt}", *values)


@FUZZ
@given(
    keys=st.lists(names, min_size=1, max_size=3),
    values=st.lists(floats, min_size=1, max_size=20),
    steps=st.lists(int64s, min_size=1, max_size=20),
    stamps=st.lists(st.integers(min_value=-(2**63), max_value=2**63 - 1), min_size=1, max_size=20),
    unknown_run=st.booleans(),
    garble=st.sampled_from(["none", "short_value", "bad_index", "count"]),
)
def test_fuzzed_batches_are_accepted_or_rejected_clearly(
    stub: wire.IngestStub,
    anchor: tuple[str, int],
    steppe_server: ServerProcess,
    keys: list[str],
    values: list[float],
    steps: list[int],
    stamps: list[int],
    unknown_run: bool,
    garble: str,
) -> None:
    run_id, anchor_points = anchor
    n = min(len(values), len(steps), len(stamps))
    key_index = [i % len(keys) for i in range(n)]
    if garble == "bad_index":
        key_index[0] = len(keys) + 5
    batch = wire.MetricBatch(
        stream_id=uuid.uuid4().hex,
        seq=1,
        run_ids=[uuid.uuid4().hex if unknown_run else run_id],
        keys=keys,
        count=n + (3 if garble == "count" else 0),
        run_index=bytes(4 * n),
        key_index=_pack("I", key_index),
        step=_pack("q", steps[:n]),
        timestamp_ms=_pack("q", stamps[:n]),
        value=_pack("d", values[:n])[: -8 if garble == "short_value" else None],
    )
    acks = list(stub.StreamMetrics(iter([batch]), timeout=30))
    assert acks and acks[-1].acked_seq == 1
    rejected = [r for a in acks for r in a.rejected]
    must_reject = (
        unknown_run
        or garble != "none"
        or any(s < 0 for s in stamps[:n])
        or any(_bad_name(k) for k in {keys[i] for i in key_index if i < len(keys)})
    )
    if must_reject:
        assert len(rejected) == 1
        assert rejected[0].field and rejected[0].message  # names the field and the rule
    else:
        assert rejected == []
    # The anchor run is untouched and the server is up.
    history = steppe.Client(steppe_server.http_url).get_metric_history(run_id, "anchor")
    assert len(history) == anchor_points


def _bad_name(name: str) -> bool:
    try:
        steppe.validation.check_name("key", name)
    except steppe.InvalidParameterValue:
        return True
    return False


def test_malformed_protobuf_is_rejected_and_the_server_stays_up(
    steppe_server: ServerProcess, stub: wire.IngestStub
) -> None:
    info = json.loads(
        urllib.request.urlopen(steppe_server.http_url + "/api/steppe/v1/server-info").read()
    )
    with grpc.insecure_channel(f"127.0.0.1:{info['grpc_port']}") as channel:
        raw = channel.stream_stream(
            "/steppe.v1.Ingest/StreamMetrics",
            request_serializer=lambda b: b,
            response_deserializer=lambda b: b,
        )
        with pytest.raises(grpc.RpcError) as caught:
            list(raw(iter([b"\xff\xff\xff\x0f garbage"]), timeout=10))
        assert caught.value.code() in (grpc.StatusCode.INTERNAL, grpc.StatusCode.INVALID_ARGUMENT)
    # Still serving.
    assert steppe.Client(steppe_server.http_url).search_experiments()


def test_oversized_message_is_refused(steppe_server: ServerProcess, stub: wire.IngestStub) -> None:
    big = wire.MetricBatch(stream_id="x", seq=1, value=b"\0" * (65 << 20))
    with pytest.raises(grpc.RpcError) as caught:
        list(stub.StreamMetrics(iter([big]), timeout=30))
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


@FUZZ
@given(
    path=st.sampled_from(
        [
            "/api/steppe/v1/metric-history",
            "/api/steppe/v1/series",
            "/api/steppe/v1/runs/x",
            "/api/steppe/v1/experiments/x",
            "/api/steppe/v1/experiments/x/runs",
        ]
    ),
    params=st.dictionaries(
        st.sampled_from(["run_id", "key", "buckets", "x_min", "x_max"]),
        st.one_of(names, st.integers().map(str), floats.map(str)),
        max_size=5,
    ),
    run_id=names,
)
def test_fuzzed_http_queries_get_json_errors_never_500(
    steppe_server: ServerProcess, path: str, params: dict[str, str], run_id: str
) -> None:
    url = steppe_server.http_url + path.replace("/x", "/" + urllib.parse.quote(run_id, safe=""))
    url += "?" + urllib.parse.urlencode(params)
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            assert response.status == 200
            json.loads(response.read())
    except urllib.error.HTTPError as exc:
        assert 400 <= exc.code < 500, (url, exc.code)
        body = json.loads(exc.read())
        assert body["error_code"] and body["message"]


def test_nan_and_infinities_round_trip(steppe_server: ServerProcess) -> None:
    client = steppe.Client(steppe_server.http_url)
    run = client.create_run()
    for step, value in enumerate([math.nan, math.inf, -math.inf, 1e308, -0.0]):
        client.log_metric(run.info.run_id, "odd", value, step=step)
    history = client.get_metric_history(run.info.run_id, "odd")
    got = [m.value for m in history]
    assert math.isnan(got[0]) and got[1:] == [math.inf, -math.inf, 1e308, -0.0]


def test_metric_keys_per_run_are_limited(
    steppe_server: ServerProcess, stub: wire.IngestStub
) -> None:
    """The server refuses a batch that would give a run more than its key budget."""
    from steppe import validation

    limit = validation.MAX_METRIC_KEYS_PER_RUN
    client = steppe.Client(steppe_server.http_url)
    run_id = client.create_run().info.run_id
    keys = [f"k{i}" for i in range(limit + 1)]
    n = limit + 1
    batch = wire.MetricBatch(
        stream_id=uuid.uuid4().hex,
        seq=1,
        run_ids=[run_id],
        keys=keys,
        count=n,
        run_index=bytes(4 * n),
        key_index=_pack("I", list(range(n))),
        step=bytes(8 * n),
        timestamp_ms=bytes(8 * n),
        value=bytes(8 * n),
    )
    acks = list(stub.StreamMetrics(iter([batch]), timeout=60))
    rejected = [r for a in acks for r in a.rejected]
    assert len(rejected) == 1 and "metric keys" in rejected[0].message
    assert client.get_run(run_id).data.metrics == {}
    # The rejected batch used none of the run's budget: a new key is still welcome.
    loss = wire.MetricBatch(
        stream_id=batch.stream_id,
        seq=2,
        run_ids=[run_id],
        keys=["loss"],
        count=1,
        run_index=bytes(4),
        key_index=bytes(4),
        step=bytes(8),
        timestamp_ms=bytes(8),
        value=_pack("d", [0.5]),
    )
    acks = list(stub.StreamMetrics(iter([loss]), timeout=60))
    assert acks[-1].acked_seq == 2 and not acks[-1].rejected
    assert client.get_run(run_id).data.metrics == {"loss": 0.5}
