"""The same write through the gRPC door and the MLflow REST door gets the same answer: the
same error code and a message naming the field, or the same stored value (issue #11)."""

from __future__ import annotations

import json
import struct
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pyarrow as pa
import pytest

from steppe import errors
from steppe.ingest import wire
from steppe.ingest.layout import METRICS_SCHEMA, DataDir
from steppe.ingest.service import HTTP_STREAM_ID, Ingestor
from steppe.ingest.wal import list_segments, read_segment
from steppe.v1 import steppe_pb2_grpc as pb_grpc
from steppe.validation import MAX_EXPERIMENT_TAG_VAL_LENGTH, MAX_TAG_VAL_LENGTH
from steppe.wire import Unary
from tests.conftest import ServerProcess

NAN, INF = float("nan"), float("inf")


@pytest.fixture
def unary(steppe_server: ServerProcess) -> Iterator[Unary]:
    channel = grpc.insecure_channel(f"127.0.0.1:{steppe_server.grpc_port}")
    yield Unary(pb_grpc.IngestStub(channel), timeout_s=10.0)
    channel.close()


class Rest:
    def __init__(self, base: str) -> None:
        self._base = base

    def __call__(self, path: str, body: dict[str, Any], method: str = "POST") -> dict[str, Any]:
        """The JSON answer; an error answer raises steppe's error with MLflow's code."""
        request = urllib.request.Request(
            f"{self._base}/api/2.0/mlflow/{path}",
            data=json.dumps(body).encode(),
            method=method,
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                document: dict[str, Any] = json.loads(response.read() or b"{}")
                return document
        except urllib.error.HTTPError as exc:
            error = json.loads(exc.read())
            raise errors.SteppeError(error["message"], error["error_code"]) from None

    def get(self, path: str, **query: str) -> dict[str, Any]:
        url = f"{self._base}/api/2.0/mlflow/{path}?" + "&".join(
            f"{k}={v}" for k, v in query.items()
        )
        with urllib.request.urlopen(url, timeout=10) as response:
            document: dict[str, Any] = json.loads(response.read())
            return document


@pytest.fixture
def rest(steppe_server: ServerProcess) -> Rest:
    return Rest(steppe_server.http_url)


def _name(what: str) -> str:
    return f"one-write-side-{what}-{uuid.uuid4().hex[:8]}"


def _code(call: Callable[[], object]) -> tuple[str, str]:
    with pytest.raises(errors.SteppeError) as info:
        call()
    return info.value.error_code, info.value.message


def _tags(experiment: dict[str, Any]) -> dict[str, str]:
    return {t["key"]: t["value"] for t in experiment.get("tags", [])}


def test_experiment_tag_longer_than_a_run_tag_is_kept_whole_on_both_doors(
    unary: Unary, rest: Rest
) -> None:
    value = "v" * (MAX_TAG_VAL_LENGTH + 10)
    by_grpc = unary.create_experiment(_name("tag-grpc"), "", {"note": value})
    by_rest = rest(
        "experiments/create", {"name": _name("tag-rest"), "tags": [{"key": "note", "value": value}]}
    )
    stored_grpc = rest.get("experiments/get", experiment_id=by_grpc.experiment_id)["experiment"]
    stored_rest = rest.get("experiments/get", experiment_id=by_rest["experiment_id"])["experiment"]
    assert _tags(stored_grpc)["note"] == value
    assert _tags(stored_rest)["note"] == value


def test_experiment_tag_over_the_limit_is_refused_on_both_doors(unary: Unary, rest: Rest) -> None:
    value = "v" * (MAX_EXPERIMENT_TAG_VAL_LENGTH + 1)
    grpc_code, grpc_message = _code(
        lambda: unary.create_experiment(_name("long-grpc"), "", {"note": value})
    )
    rest_code, rest_message = _code(
        lambda: rest(
            "experiments/create",
            {"name": _name("long-rest"), "tags": [{"key": "note", "value": value}]},
        )
    )
    assert grpc_code == rest_code == "INVALID_PARAMETER_VALUE"
    for message in (grpc_message, rest_message):
        assert "tags[0].value" in message and str(MAX_EXPERIMENT_TAG_VAL_LENGTH) in message


def test_all_spaces_experiment_name_is_accepted_on_both_doors(unary: Unary, rest: Rest) -> None:
    # MLflow refuses only the empty name (mlflow.utils.validation._validate_experiment_name).
    spaces = " " * (3 + uuid.uuid4().int % 200)
    by_grpc = unary.create_experiment(spaces + "\t", "", None)
    by_rest = rest("experiments/create", {"name": spaces})
    assert by_grpc.name == spaces + "\t"
    stored = rest.get("experiments/get", experiment_id=by_rest["experiment_id"])["experiment"]
    assert stored["name"] == spaces


def test_empty_experiment_name_is_refused_on_both_doors(unary: Unary, rest: Rest) -> None:
    grpc_code, grpc_message = _code(lambda: unary.create_experiment("", "", None))
    rest_code, rest_message = _code(lambda: rest("experiments/create", {"name": ""}))
    assert grpc_code == rest_code == "INVALID_PARAMETER_VALUE"
    assert "'name'" in grpc_message and "'name'" in rest_message


def _deleted_run(unary: Unary, rest: Rest) -> str:
    experiment = unary.create_experiment(_name("deleted-run"), "", None)
    run = unary.create_run(uuid.uuid4().hex, experiment.experiment_id, "r", 1, {"t": "1"}, "u")
    rest("runs/delete", {"run_id": run.info.run_id})
    return run.info.run_id


def test_writes_to_a_deleted_run_are_refused_on_both_doors(unary: Unary, rest: Rest) -> None:
    run_id = _deleted_run(unary, rest)
    pairs: list[tuple[Callable[[], object], Callable[[], object]]] = [
        (
            lambda: unary.log_params(run_id, [("p", "1")]),
            lambda: rest("runs/log-parameter", {"run_id": run_id, "key": "p", "value": "1"}),
        ),
        (
            lambda: unary.set_tags(run_id, [("k", "v")]),
            lambda: rest("runs/set-tag", {"run_id": run_id, "key": "k", "value": "v"}),
        ),
        (
            lambda: unary.delete_tag(run_id, "t"),
            lambda: rest("runs/delete-tag", {"run_id": run_id, "key": "t"}),
        ),
        (
            lambda: unary.update_run(run_id, "FINISHED", 2, None),
            lambda: rest("runs/update", {"run_id": run_id, "status": "FINISHED", "end_time": 2}),
        ),
    ]
    for by_grpc, by_rest in pairs:
        grpc_code, grpc_message = _code(by_grpc)
        rest_code, rest_message = _code(by_rest)
        assert grpc_code == rest_code == "INVALID_PARAMETER_VALUE"
        for message in (grpc_message, rest_message):
            assert "run_id" in message and "active" in message


def test_run_name_and_a_different_run_name_tag_are_refused_on_both_doors(
    unary: Unary, rest: Rest
) -> None:
    experiment = unary.create_experiment(_name("run-name"), "", None)
    grpc_code, grpc_message = _code(
        lambda: unary.create_run(
            uuid.uuid4().hex, experiment.experiment_id, "a", 1, {"mlflow.runName": "b"}, "u"
        )
    )
    rest_code, rest_message = _code(
        lambda: rest(
            "runs/create",
            {
                "experiment_id": experiment.experiment_id,
                "run_name": "a",
                "tags": [{"key": "mlflow.runName", "value": "b"}],
            },
        )
    )
    assert grpc_code == rest_code == "INVALID_PARAMETER_VALUE"
    assert "run_name" in grpc_message and "run_name" in rest_message


def test_run_tag_values_are_truncated_alike_on_both_doors(unary: Unary, rest: Rest) -> None:
    experiment = unary.create_experiment(_name("run-tags"), "", None)
    run_id = unary.create_run(
        uuid.uuid4().hex, experiment.experiment_id, "r", 1, None, "u"
    ).info.run_id
    long = "x" * (MAX_TAG_VAL_LENGTH + 5)
    unary.set_tags(run_id, [("by_grpc", long)])
    rest("runs/set-tag", {"run_id": run_id, "key": "by_rest", "value": long})
    tags = {
        t["key"]: t["value"] for t in rest.get("runs/get", run_id=run_id)["run"]["data"]["tags"]
    }
    assert tags["by_grpc"] == tags["by_rest"] == long[:MAX_TAG_VAL_LENGTH]


def test_a_missing_tag_is_not_found_on_both_doors(unary: Unary, rest: Rest) -> None:
    experiment = unary.create_experiment(_name("missing-tag"), "", None)
    run_id = unary.create_run(
        uuid.uuid4().hex, experiment.experiment_id, "r", 1, None, "u"
    ).info.run_id
    grpc_code, _ = _code(lambda: unary.delete_tag(run_id, "nope"))
    rest_code, _ = _code(lambda: rest("runs/delete-tag", {"run_id": run_id, "key": "nope"}))
    assert grpc_code == rest_code == "RESOURCE_DOES_NOT_EXIST"


def _streamed_rejection(port: int, run_id: str, key: str, timestamp: int) -> str:
    """Stream one point over gRPC; the rejection's message (the stream acks past it)."""
    table = pa.table(
        {"run_id": [run_id], "key": [key], "step": [0], "timestamp": [timestamp], "value": [1.0]},
        schema=METRICS_SCHEMA,
    )
    batch = wire.encode_metric_batch(f"rules-{uuid.uuid4().hex}", 1, table)
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        acks = list(pb_grpc.IngestStub(channel).StreamMetrics(iter([batch]), timeout=10))
    rejected = [r for a in acks for r in a.rejected]
    assert len(rejected) == 1, acks
    return f"{rejected[0].field}: {rejected[0].message}"


def test_metric_points_break_the_same_rules_on_both_doors(
    steppe_server: ServerProcess, unary: Unary, rest: Rest
) -> None:
    """One owner of the metric rules (steppe.ingest.metrics): a bad key name, a negative
    timestamp, an unknown and a deleted run are refused alike through both doors."""
    experiment = unary.create_experiment(_name("rules"), "", None)
    live = unary.create_run(uuid.uuid4().hex, experiment.experiment_id, "r", 1, {}, "u")
    live_id = live.info.run_id
    # (run, key, timestamp, the rule's words on the stream, the REST code and words): an
    # unknown run is MLflow's RESOURCE_DOES_NOT_EXIST over REST (its run lookup comes first).
    cases = [
        (live_id, "bad@key", 1, "names may only contain", "INVALID_PARAMETER_VALUE", "bad@key"),
        (live_id, "loss", -1, "non-negative 64-bit integer", "INVALID_PARAMETER_VALUE", "non-neg"),
        (
            uuid.uuid4().hex,
            "loss",
            1,
            "no run with this id",
            "RESOURCE_DOES_NOT_EXIST",
            "not found",
        ),
        (
            _deleted_run(unary, rest),
            "loss",
            1,
            "cannot be logged",
            "INVALID_PARAMETER_VALUE",
            "active",
        ),
    ]
    for run_id, key, timestamp, rule, rest_code, rest_words in cases:
        by_grpc = _streamed_rejection(steppe_server.grpc_port, run_id, key, timestamp)
        body = {"run_id": run_id, "key": key, "value": 1.0, "timestamp": timestamp, "step": 0}
        code, by_rest = _code(lambda body=body: rest("runs/log-metric", body))
        assert rule in by_grpc, (rule, by_grpc)
        assert code == rest_code and rest_words in by_rest, (rest_code, code, by_rest)
    # Neither door stored anything of the refused points.
    assert rest.get("runs/get", run_id=live_id)["run"]["data"].get("metrics", []) == []


async def test_rest_points_land_as_a_grpc_batch_of_the_same_columns_would(tmp_path: Path) -> None:
    """The REST door's points (Ingestor.log_points) go into the tail as the table a gRPC batch
    of the same columns decodes to, and WAL recovery (which decodes that batch) agrees."""
    run_id = "c" * 32
    columns = (
        [run_id] * 6,
        ["loss", "acc", "loss", "loss", "acc", "lr"],
        [3, 0, 1, 1, -5, 2**62],
        [10, 0, 2**40, 7, 7, 1],
        [NAN, INF, -INF, -0.0, 0.5, 1e-300],
    )
    expected = wire.decode_metric_batch(
        wire.encode_metric_batch(
            HTTP_STREAM_ID,
            1,
            pa.table(dict(zip(METRICS_SCHEMA.names, columns, strict=True)), schema=METRICS_SCHEMA),
        )
    ).table
    data = DataDir.at(tmp_path / "data")
    ingestor = Ingestor(data, flush_interval_s=3600)
    await ingestor.start("127.0.0.1", 0)
    try:
        ingestor.catalog.create_run(run_id, "0", "r", 1)
        await ingestor.log_points(*columns)
        tail = ingestor.store.snapshot().tail.combine_chunks()
        # What recovery would replay: the fsynced WAL record, decoded as any gRPC batch.
        records = [
            wire.decode_metric_batch(wire.parse_metric_batch(payload)).table
            for _, path in list_segments(data.wal_dir)
            for payload in read_segment(path)
        ]
    finally:
        await ingestor.stop()
    assert _landed(tail) == _landed(expected)
    assert [_landed(t) for t in records] == [_landed(expected)]


def _landed(table: pa.Table) -> list[tuple[object, ...]]:
    """Rows with each value's bits (NaN and -0.0 compare as stored)."""
    table = table.cast(METRICS_SCHEMA)
    bits = [struct.pack("<d", v) for v in table.column("value").to_pylist()]
    return [
        (row["run_id"], row["key"], row["step"], row["timestamp"], b)
        for row, b in zip(table.to_pylist(), bits, strict=True)
    ]


async def test_a_streamed_batch_is_stored_in_the_wal_as_the_bytes_it_came_in(
    tmp_path: Path,
) -> None:
    """Serialized once: the WAL record of a gRPC batch is the request's bytes as received. The
    batch is sent with its header last (valid protobuf, merged on parse), an order protobuf's
    serializer would never write, so a re-serialized record would differ."""
    run_id = "d" * 32
    table = pa.table(
        {"run_id": [run_id] * 3, "key": ["a", "b", "a"], "step": [0, 0, 1]}
        | {"timestamp": [1, 1, 2], "value": [0.5, NAN, -0.0]},
        schema=METRICS_SCHEMA,
    )
    body = wire.encode_metric_batch("as-received", 1, table)
    header = body.__class__(stream_id=body.stream_id, seq=body.seq)
    body.ClearField("stream_id")
    body.ClearField("seq")
    sent = body.SerializeToString() + header.SerializeToString()
    assert sent != wire.parse_metric_batch(sent).SerializeToString()

    data = DataDir.at(tmp_path / "data")
    ingestor = Ingestor(data, flush_interval_s=3600)
    port = await ingestor.start("127.0.0.1", 0)
    try:
        ingestor.catalog.create_run(run_id, "0", "r", 1)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            call = channel.stream_stream(
                "/steppe.v1.Ingest/StreamMetrics",
                request_serializer=lambda raw: raw,
                response_deserializer=wire.StreamAck.FromString,
            )
            acks = [ack async for ack in call(iter([sent]), timeout=10)]
        records = [p for _, path in list_segments(data.wal_dir) for p in read_segment(path)]
    finally:
        await ingestor.stop()
    assert acks[-1].acked_seq == 1 and not [r for a in acks for r in a.rejected]
    assert records == [sent]
