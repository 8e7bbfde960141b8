"""The Ingest gRPC service over a real loopback channel: streaming, acks, dedupe, rejections,
run lifecycle and error statuses."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import grpc
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from steppe.ingest import wire
from steppe.ingest.catalog import open_catalog
from steppe.ingest.layout import METRICS_SCHEMA, DataDir, Snapshot
from steppe.ingest.service import Ingestor
from steppe.v1 import steppe_pb2 as pb
from steppe.v1 import steppe_pb2_grpc as pb_grpc

Row = tuple[str, str, int, int, str]


def points(run_id: str, keys: Sequence[str], n: int, start_step: int = 0) -> pa.Table:
    """n points per key, steps start_step.., distinctive values."""
    rng = np.random.default_rng(start_step + n)
    k = len(keys)
    return pa.table(
        {
            "run_id": [run_id] * (n * k),
            "key": [key for key in keys for _ in range(n)],
            "step": np.tile(np.arange(start_step, start_step + n, dtype=np.int64), k),
            "timestamp": np.full(n * k, 1_700_000_000_000, dtype=np.int64),
            "value": rng.standard_normal(n * k),
        },
        schema=METRICS_SCHEMA,
    )


def rows(table: pa.Table) -> list[Row]:
    d = table.to_pydict()
    return sorted(
        zip(d["run_id"], d["key"], d["step"], d["timestamp"], map(repr, d["value"]), strict=True)
    )


def snapshot_rows(snap: Snapshot) -> list[Row]:
    parts = [pq.read_table(f, schema=METRICS_SCHEMA) for f in snap.files]
    return rows(pa.concat_tables([*parts, snap.tail]))


async def stream(stub: pb_grpc.IngestStub, batches: Sequence[pb.MetricBatch]) -> list[pb.StreamAck]:
    """Write every batch, half-close, collect every ack until the server ends the call."""
    call = stub.StreamMetrics()
    for batch in batches:
        await call.write(batch)
    await call.done_writing()
    return [ack async for ack in call]


@pytest.fixture
async def served(tmp_path: Path, catalog_dsn: str | None) -> AsyncIterator[tuple[Ingestor, int]]:
    """An Ingestor on each catalog backend (tests/conftest.py's catalog_dsn)."""
    data_dir = DataDir.at(tmp_path / "data")
    data_dir.root.mkdir(parents=True)
    catalog = open_catalog(catalog_dsn, data_dir.catalog_file)
    ing = Ingestor(data_dir, flush_interval_s=3600, catalog=catalog)
    port = await ing.start()
    yield ing, port
    await ing.stop()


@pytest.fixture
def ingestor(served: tuple[Ingestor, int]) -> Ingestor:
    return served[0]


@pytest.fixture
async def stub(served: tuple[Ingestor, int]) -> AsyncIterator[pb_grpc.IngestStub]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{served[1]}") as channel:
        yield pb_grpc.IngestStub(channel)  # type: ignore[no-untyped-call]


async def new_run(stub: pb_grpc.IngestStub, **kwargs: object) -> str:
    run = await stub.CreateRun(pb.CreateRunRequest(**kwargs))  # type: ignore[arg-type]
    return str(run.info.run_id)


async def test_stream_acks_cumulatively_and_snapshot_holds_exactly_the_points(
    ingestor: Ingestor, stub: pb_grpc.IngestStub
) -> None:
    run_a, run_b = await new_run(stub), await new_run(stub)
    tables = [
        points(run_a if i % 2 else run_b, ["loss", "acc/top1"], 2500, i * 2500) for i in range(6)
    ]
    batches = [wire.encode_metric_batch("stream-1", i + 1, t) for i, t in enumerate(tables)]

    acks = await stream(stub, batches[:3])
    # A flush between the two halves: points must then be in files or tail, never both.
    await ingestor.store.flush()
    assert len(ingestor.store.snapshot().files) == 1
    acks += await stream(stub, batches[3:])

    seqs = [a.acked_seq for a in acks]
    assert seqs == sorted(seqs) and seqs[-1] == 6
    assert not any(a.rejected for a in acks)
    snap = ingestor.store.snapshot()
    assert snap.tail.num_rows == 3 * 5000
    assert snapshot_rows(snap) == rows(pa.concat_tables(tables))
    latest = {(r["run_id"], r["key"]): r for r in snap.latest.to_pylist()}
    assert set(latest) == {(run, key) for run in (run_a, run_b) for key in ("loss", "acc/top1")}
    assert latest[(run_a, "loss")]["step"] == 6 * 2500 - 1
    assert latest[(run_b, "acc/top1")]["count"] == 3 * 2500


async def test_acks_are_pipelined_and_each_covers_durable_batches(
    ingestor: Ingestor, stub: pb_grpc.IngestStub
) -> None:
    run_id = await new_run(stub)
    batches = [
        wire.encode_metric_batch("pipelined", i, points(run_id, ["m"], 200, i * 200))
        for i in range(1, 201)
    ]
    acks = await stream(stub, batches)
    assert acks[-1].acked_seq == 200
    # Read-ahead during fsyncs lets one group commit cover many batches, so far fewer
    # acks (and fsyncs) than batches.
    assert len(acks) < 200
    wal = ingestor.store._wal
    assert wal is not None and wal.commits < 200
    assert ingestor.store.snapshot().tail.num_rows == 200 * 200


async def test_duplicate_resend_is_dropped(ingestor: Ingestor, stub: pb_grpc.IngestStub) -> None:
    run_id = await new_run(stub)
    tables = [points(run_id, ["loss"], 1000, i * 1000) for i in range(4)]
    batches = [wire.encode_metric_batch("resender", i + 1, t) for i, t in enumerate(tables)]
    acks = await stream(stub, batches[:3])
    assert acks[-1].acked_seq == 3

    # A reconnecting client resends what it had not seen acked, plus one new batch.
    acks = await stream(stub, batches[1:])
    assert acks[-1].acked_seq == 4
    assert not any(a.rejected for a in acks)
    # Even once flushed, the watermark still drops a resend.
    await ingestor.store.flush()
    acks = await stream(stub, batches[:2])
    assert acks[-1].acked_seq == 2
    assert snapshot_rows(ingestor.store.snapshot()) == rows(pa.concat_tables(tables))


async def test_bad_batches_are_rejected_whole_and_the_stream_continues(
    ingestor: Ingestor, stub: pb_grpc.IngestStub
) -> None:
    run_id = await new_run(stub)
    good_1 = points(run_id, ["loss"], 1000)
    good_7 = points(run_id, ["loss"], 1000, 5000)

    def batch(seq: int, table: pa.Table) -> pb.MetricBatch:
        return wire.encode_metric_batch("rejects", seq, table)

    bad_key = batch(2, points(run_id, ["loss", "bad@key"], 10, 1000))
    unknown_run = batch(3, points("0123456789abcdef0123456789abcdef", ["loss"], 10, 2000))
    short_value = batch(4, points(run_id, ["loss"], 10, 3000))
    short_value.value = short_value.value[:-8]
    out_of_range = batch(5, points(run_id, ["loss"], 10, 4000))
    out_of_range.key_index = (np.arange(10, dtype="<u4") % 2).tobytes()
    negative_ts = batch(6, points(run_id, ["loss"], 10, 4500))
    negative_ts.timestamp_ms = np.full(10, -1, dtype="<i8").tobytes()

    acks = await stream(
        stub,
        [
            batch(1, good_1),
            bad_key,
            unknown_run,
            short_value,
            out_of_range,
            negative_ts,
            batch(7, good_7),
        ],
    )
    assert acks[-1].acked_seq == 7
    rejected = {r.seq: r for a in acks for r in a.rejected}
    assert sorted(rejected) == [2, 3, 4, 5, 6]
    assert rejected[2].field == "keys[1]" and "bad@key" in rejected[2].message
    assert rejected[3].field == "run_ids[0]" and "no run with this id" in rejected[3].message
    assert rejected[4].field == "value" and "needs 80 bytes" in rejected[4].message
    assert rejected[5].field == "key_index[1]" and "out of range" in rejected[5].message
    assert rejected[6].field == "timestamp_ms[0]" and "non-negative" in rejected[6].message
    # Nothing of the rejected batches was stored; everything else was.
    assert snapshot_rows(ingestor.store.snapshot()) == rows(pa.concat_tables([good_1, good_7]))

    # A rejection is final: the watermark has moved past seq 2, so a resend of it is
    # acked as already handled and not stored.
    fixed = batch(2, points(run_id, ["loss"], 10, 9000))
    acks = await stream(stub, [fixed])
    assert acks[-1].acked_seq == 2 and not acks[-1].rejected
    assert ingestor.store.snapshot().tail.num_rows == 2000


async def test_header_errors_are_rejected(ingestor: Ingestor, stub: pb_grpc.IngestStub) -> None:
    run_id = await new_run(stub)
    no_stream = wire.encode_metric_batch("", 1, points(run_id, ["m"], 5))
    seq_zero = wire.encode_metric_batch("s", 0, points(run_id, ["m"], 5))
    acks = await stream(stub, [no_stream, seq_zero])
    fields = {r.field for a in acks for r in a.rejected}
    assert fields == {"stream_id", "seq"}
    assert ingestor.store.snapshot().tail.num_rows == 0


def error_code(err: grpc.aio.AioRpcError) -> str | None:
    for key, value in err.trailing_metadata() or ():
        if key == wire.ERROR_CODE_KEY:
            return value if isinstance(value, str) else value.decode()
    return None


async def test_unary_errors_map_to_grpc_status_and_mlflow_code(
    stub: pb_grpc.IngestStub,
) -> None:
    run_id = await new_run(stub)
    await stub.LogParams(
        pb.LogParamsRequest(run_id=run_id, params=[pb.Param(key="lr", value="0.1")])
    )
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.LogParams(
            pb.LogParamsRequest(run_id=run_id, params=[pb.Param(key="lr", value="0.2")])
        )
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_code(info.value) == "INVALID_PARAMETER_VALUE"
    assert "params[0].value" in (info.value.details() or "")

    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.GetRun(pb.GetRunRequest(run_id="f" * 32))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    assert error_code(info.value) == "RESOURCE_DOES_NOT_EXIST"

    await stub.CreateExperiment(pb.CreateExperimentRequest(name="taken"))
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.CreateExperiment(pb.CreateExperimentRequest(name="taken"))
    assert info.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert error_code(info.value) == "RESOURCE_ALREADY_EXISTS"

    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.SetTags(pb.SetTagsRequest(run_id=run_id, tags=[pb.Tag(key="../x", value="")]))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "tags[0].key" in (info.value.details() or "")

    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.UpdateRun(pb.UpdateRunRequest(run_id="bad id!"))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "'run_id'" in (info.value.details() or "")


async def test_run_lifecycle(stub: pb_grpc.IngestStub) -> None:
    experiment = await stub.SetExperiment(pb.SetExperimentRequest(name="exp"))
    again = await stub.SetExperiment(pb.SetExperimentRequest(name="exp"))
    assert again.experiment_id == experiment.experiment_id
    got = await stub.GetExperiment(pb.GetExperimentRequest(experiment_id=experiment.experiment_id))
    assert got.name == "exp" and got.lifecycle_stage == "active"

    before_ms = int(time.time() * 1000)
    run = await stub.CreateRun(
        pb.CreateRunRequest(
            experiment_id=experiment.experiment_id,
            run_name="first",
            tags=[pb.Tag(key="team", value="x" * 9000)],
        )
    )
    assert len(run.info.run_id) == 32 and run.info.status == pb.RUN_STATUS_RUNNING
    assert run.info.start_time >= before_ms and run.info.end_time == 0
    tags = {t.key: t.value for t in run.tags}
    assert tags["mlflow.runName"] == "first" and len(tags["team"]) == 8000  # MLflow truncates

    # Idempotent on run_id: a retried CreateRun returns the same run.
    retried = await stub.CreateRun(
        pb.CreateRunRequest(run_id=run.info.run_id, experiment_id=experiment.experiment_id)
    )
    assert retried.info == run.info

    default = await stub.CreateRun(pb.CreateRunRequest())
    assert default.info.experiment_id == "0" and default.info.run_name

    await stub.LogParams(
        pb.LogParamsRequest(
            run_id=run.info.run_id,
            params=[pb.Param(key="lr", value="0.1"), pb.Param(key="long", value="v" * 7000)],
        )
    )
    await stub.SetTags(pb.SetTagsRequest(run_id=run.info.run_id, tags=[pb.Tag(key="a", value="1")]))
    await stub.DeleteTag(pb.DeleteTagRequest(run_id=run.info.run_id, key="team"))
    updated = await stub.UpdateRun(
        pb.UpdateRunRequest(
            run_id=run.info.run_id, status=pb.RUN_STATUS_FINISHED, end_time=before_ms + 5
        )
    )
    assert updated.info.status == pb.RUN_STATUS_FINISHED
    assert updated.info.end_time == before_ms + 5
    params = {p.key: p.value for p in updated.params}
    assert params == {"lr": "0.1", "long": "v" * 6000}
    tags = {t.key: t.value for t in updated.tags}
    assert tags["a"] == "1" and "team" not in tags


async def test_stop_drains_streams_and_ends_them_unavailable(
    ingestor: Ingestor, stub: pb_grpc.IngestStub
) -> None:
    run_id = await new_run(stub)
    call = stub.StreamMetrics()
    await call.write(wire.encode_metric_batch("long-lived", 1, points(run_id, ["m"], 100)))
    ack = await call.read()
    assert isinstance(ack, pb.StreamAck) and ack.acked_seq == 1
    assert ingestor.active_streams() == 1
    before = ingestor.last_activity_monotonic

    await ingestor.stop(grace_s=5)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        while True:
            msg = await call.read()
            assert msg is not grpc.aio.EOF, "stream ended without a status"
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    assert ingestor.active_streams() == 0
    assert ingestor.last_activity_monotonic >= before
    # The tail went to Parquet on the way down.
    assert len(ingestor.data_dir.metrics_files()) == 1
    await ingestor.stop()  # idempotent


async def test_concurrent_streams_to_one_run(ingestor: Ingestor, stub: pb_grpc.IngestStub) -> None:
    run_id = await new_run(stub)
    per_stream = [
        [
            wire.encode_metric_batch(f"s{s}", i + 1, points(run_id, [f"k{s}"], 500, i * 500))
            for i in range(5)
        ]
        for s in range(4)
    ]
    results = await asyncio.gather(*(stream(stub, batches) for batches in per_stream))
    assert [acks[-1].acked_seq for acks in results] == [5, 5, 5, 5]
    assert ingestor.store.snapshot().tail.num_rows == 4 * 5 * 500
