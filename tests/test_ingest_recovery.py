"""Durability and exactly-once across restarts: graceful stop, kill -9 at chosen points of the
flush protocol (in a child process), the latest summary after recovery, and compaction."""

from __future__ import annotations

import asyncio
import math
import signal
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from steppe.ingest import wire
from steppe.ingest.latest import LATEST_SEGMENT_KEY
from steppe.ingest.layout import METRICS_SCHEMA, DataDir, Snapshot
from steppe.ingest.service import Ingestor
from steppe.ingest.wal import list_segments
from steppe.v1 import steppe_pb2 as pb
from steppe.v1 import steppe_pb2_grpc as pb_grpc

Row = tuple[str, str, int, int, str]
NAN, INF = math.nan, math.inf

# A server in a child process that kills itself (SIGKILL) at the second call of one step of
# the flush protocol, or never ("none": the parent kills it).
CHILD = """
import asyncio, os, signal, sys
from steppe.ingest.layout import DataDir
from steppe.ingest.service import Ingestor

data_dir, crash_at, flush_rows = sys.argv[1], sys.argv[2], int(sys.argv[3])

def crash_on_second_call(owner, name):
    real = getattr(owner, name)
    calls = []
    def wrapper(*args, **kwargs):
        calls.append(1)
        if len(calls) >= 2:
            os.kill(os.getpid(), signal.SIGKILL)
        return real(*args, **kwargs)
    setattr(owner, name, wrapper)

if crash_at == "before-wal-delete":
    from steppe.ingest.wal import WriteAheadLog
    crash_on_second_call(WriteAheadLog, "delete_segments")
elif crash_at == "before-watermark-save":
    from steppe.ingest.sqlite_catalog import SqliteCatalog
    crash_on_second_call(SqliteCatalog, "save_stream_watermarks")
elif crash_at == "before-latest-write":
    import steppe.ingest.store
    crash_on_second_call(steppe.ingest.store, "write_latest_file")

async def main():
    ingestor = Ingestor(DataDir.at(data_dir), flush_rows=flush_rows, flush_interval_s=3600)
    print(await ingestor.start(), flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""


def table(
    run_id: str, key: str, steps: Sequence[int], timestamps: Sequence[int], values: Sequence[float]
) -> pa.Table:
    n = len(steps)
    return pa.table(
        {
            "run_id": [run_id] * n,
            "key": [key] * n,
            "step": steps,
            "timestamp": timestamps,
            "value": values,
        },
        schema=METRICS_SCHEMA,
    )


def simple(run_id: str, n: int, start: int) -> pa.Table:
    steps = list(range(start, start + n))
    return table(
        run_id,
        "loss",
        steps,
        [1_000 + s for s in steps],
        np.random.default_rng(start).standard_normal(n).tolist(),
    )


def tricky(run_id: str) -> list[pa.Table]:
    """Batches exercising MLflow's latest rules, oldest first."""
    return [
        pa.concat_tables(
            [
                table(run_id, "loss", [0, 1, 2], [10, 20, 30], [3.0, NAN, 1.0]),
                table(run_id, "ties", [5, 5], [200, 100], [1.0, 2.0]),
                table(run_id, "allnan", [0, 1], [1, 2], [NAN, NAN]),
                table(run_id, "inf", [0, 1], [1, 2], [INF, -INF]),
            ]
        ),
        pa.concat_tables(
            [
                # Highest step wins even if older; NaN is a valid latest value.
                table(run_id, "loss", [7, 3], [5, 99], [NAN, -2.0]),
                # Same step: newest timestamp wins; same step and timestamp: later arrival wins.
                table(run_id, "ties", [5, 5, 5], [150, 200, 200], [3.0, 4.0, 5.0]),
                table(run_id, "inf", [1], [2], [0.5]),
            ]
        ),
        pa.concat_tables(
            [
                table(run_id, "ties", [5, 4], [200, 999], [6.0, 7.0]),
                table(run_id, "allnan", [1], [2], [NAN]),
            ]
        ),
    ]


Summary = tuple[str, int, int, "float | None", "float | None", int]


@dataclass
class _Series:
    count: int = 0
    low: float | None = None
    high: float | None = None
    at: tuple[int, int] | None = None
    value: float = NAN


def reference_latest(points: pa.Table) -> dict[tuple[str, str], Summary]:
    """MLflow's latest, computed the slow obvious way over points in arrival order."""
    series: dict[tuple[str, str], _Series] = {}
    for p in points.to_pylist():
        s = series.setdefault((p["run_id"], p["key"]), _Series())
        s.count += 1
        if not math.isnan(p["value"]):
            s.low = p["value"] if s.low is None else min(s.low, p["value"])
            s.high = p["value"] if s.high is None else max(s.high, p["value"])
        if s.at is None or (p["step"], p["timestamp"]) >= s.at:
            s.at, s.value = (p["step"], p["timestamp"]), p["value"]
    return {
        k: (repr(s.value), s.at[0], s.at[1], s.low, s.high, s.count)
        for k, s in series.items()
        if s.at is not None
    }


def snapshot_latest(latest: pa.Table) -> dict[tuple[str, str], Summary]:
    return {
        (r["run_id"], r["key"]): (
            repr(r["value"]),
            r["step"],
            r["timestamp"],
            r["min"],
            r["max"],
            r["count"],
        )
        for r in latest.to_pylist()
    }


def rows(t: pa.Table) -> list[Row]:
    d = t.to_pydict()
    return sorted(
        zip(d["run_id"], d["key"], d["step"], d["timestamp"], map(repr, d["value"]), strict=True)
    )


def snapshot_rows(snap: Snapshot) -> list[Row]:
    parts = [pq.read_table(f, schema=METRICS_SCHEMA) for f in snap.files]
    return rows(pa.concat_tables([*parts, snap.tail]))


async def stream(stub: pb_grpc.IngestStub, batches: Sequence[pb.MetricBatch]) -> int:
    """Send, half-close, return the highest acked seq (0 if the server died first)."""
    acked = 0
    call = stub.StreamMetrics()
    try:
        for batch in batches:
            await call.write(batch)
        await call.done_writing()
        async for ack in call:
            assert not ack.rejected
            acked = ack.acked_seq
    except (grpc.aio.AioRpcError, asyncio.InvalidStateError):
        call.cancel()
    return acked


@asynccontextmanager
async def connect(port: int) -> AsyncIterator[pb_grpc.IngestStub]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        yield pb_grpc.IngestStub(channel)  # type: ignore[no-untyped-call]


@asynccontextmanager
async def running(data: Path, **kwargs: object) -> AsyncIterator[tuple[Ingestor, int]]:
    ingestor = Ingestor(DataDir.at(data), flush_interval_s=3600, **kwargs)  # type: ignore[arg-type]
    port = await ingestor.start()
    try:
        yield ingestor, port
    finally:
        await ingestor.stop()


@asynccontextmanager
async def child_server(
    data: Path, crash_at: str = "none", flush_rows: int = 10**9
) -> AsyncIterator[tuple[asyncio.subprocess.Process, int]]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        CHILD,
        str(data),
        crash_at,
        str(flush_rows),
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), timeout=60)
        assert line.strip().isdigit(), f"child did not start: {line!r}"
        yield proc, int(line)
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()


async def poll(predicate: object, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"condition not met within {timeout_s} s"
        await asyncio.sleep(0.02)


def batches_of(
    stream_id: str, tables: Sequence[pa.Table], first_seq: int = 1
) -> list[pb.MetricBatch]:
    return [wire.encode_metric_batch(stream_id, first_seq + i, t) for i, t in enumerate(tables)]


async def test_graceful_stop_and_reopen_keeps_points_and_latest(tmp_path: Path) -> None:
    data = tmp_path / "data"
    async with running(data) as (ingestor, port), connect(port) as stub:
        run_id = (await stub.CreateRun(pb.CreateRunRequest())).info.run_id
        tables = [*tricky(run_id), simple(run_id, 3000, 100)]
        batches = batches_of("graceful", tables)
        assert await stream(stub, batches[:2]) == 2
        await ingestor.store.flush()
        assert await stream(stub, batches[2:]) == 4
        before = snapshot_latest(ingestor.store.snapshot().latest)
    expected = pa.concat_tables(tables)
    assert before == reference_latest(expected)

    assert list_segments(data / "wal") == []
    async with running(data) as (ingestor, port):
        snap = ingestor.store.snapshot()
        assert len(snap.files) == 2 and snap.tail.num_rows == 0
        assert snapshot_rows(snap) == rows(expected)
        assert snapshot_latest(snap.latest) == reference_latest(expected)
        on_disk = pq.read_table(data / "latest.parquet")
        assert snapshot_latest(on_disk) == reference_latest(expected)
        last = max(int(f.name.split("-")[2].split(".")[0]) for f in snap.files)
        assert on_disk.schema.metadata[LATEST_SEGMENT_KEY] == str(last).encode()
        # Resending after a restart is still dropped (watermarks were persisted).
        async with connect(port) as stub:
            assert await stream(stub, batches) == 4
        assert snapshot_rows(ingestor.store.snapshot()) == rows(expected)


async def test_kill_9_after_acks_replays_the_wal_exactly_once(tmp_path: Path) -> None:
    data = tmp_path / "data"
    async with child_server(data) as (proc, port):
        async with connect(port) as stub:
            run_id = (await stub.CreateRun(pb.CreateRunRequest())).info.run_id
            tables = tricky(run_id) + [simple(run_id, 5000, 100 + 5000 * i) for i in range(4)]
            batches = batches_of("crashy", tables)
            assert await stream(stub, batches) == len(batches)
        proc.send_signal(signal.SIGKILL)
        assert await proc.wait() == -signal.SIGKILL
    expected = pa.concat_tables(tables)
    assert list_segments(data / "wal") and not list((data / "metrics").glob("*.parquet"))

    async with running(data) as (ingestor, port):
        snap = ingestor.store.snapshot()
        assert snap.files == ()
        assert snapshot_rows(snap) == rows(expected)
        assert snapshot_latest(snap.latest) == reference_latest(expected)
        async with connect(port) as stub:
            assert await stream(stub, batches) == len(batches)  # all duplicates
        assert snapshot_rows(ingestor.store.snapshot()) == rows(expected)

    async with running(data) as (ingestor, _):
        snap = ingestor.store.snapshot()
        assert snap.tail.num_rows == 0
        assert snapshot_rows(snap) == rows(expected)
        assert snapshot_latest(snap.latest) == reference_latest(expected)


@pytest.mark.parametrize(
    "crash_at", ["before-watermark-save", "before-latest-write", "before-wal-delete"]
)
async def test_crash_inside_a_flush_neither_loses_nor_duplicates(
    tmp_path: Path, crash_at: str
) -> None:
    """The child dies during its second flush, after the Parquet rename, at ``crash_at``."""
    data = tmp_path / "data"
    wal_dir, metrics_dir = data / "wal", data / "metrics"
    async with child_server(data, crash_at, flush_rows=2000) as (proc, port):
        async with connect(port) as stub:
            run_id = (await stub.CreateRun(pb.CreateRunRequest())).info.run_id
            tables = tricky(run_id) + [simple(run_id, 1000, 100 + 1000 * i) for i in range(6)]
            batches = batches_of("flushy", tables)
            # Round one: tricky + 2 simple batches (> flush_rows), then the first flush
            # completes (latest written, its WAL segments deleted).
            assert await stream(stub, batches[:5]) == 5
            await poll(
                lambda: (data / "latest.parquet").exists() and 1 not in dict(list_segments(wal_dir))
            )
            # Round two triggers the second flush, which crashes.
            acked = await stream(stub, batches[5:])
        assert await asyncio.wait_for(proc.wait(), 60) == -signal.SIGKILL
    assert len(list(metrics_dir.glob("part-*.parquet"))) == 2  # both renamed before the crash
    assert list_segments(wal_dir)  # the second flush's segments were not deleted
    expected = pa.concat_tables(tables)
    acked_rows = Counter(rows(pa.concat_tables(tables[: max(acked, 5)])))

    async with running(data) as (ingestor, port):
        got = Counter(snapshot_rows(ingestor.store.snapshot()))
        assert not got - Counter(rows(expected)), "duplicated points after recovery"
        assert not acked_rows - got, "acked points lost"
        async with connect(port) as stub:
            assert await stream(stub, batches) == len(batches)
        snap = ingestor.store.snapshot()
        assert snapshot_rows(snap) == rows(expected)
        assert snapshot_latest(snap.latest) == reference_latest(expected)
        assert list_segments(wal_dir) == [] or min(n for n, _ in list_segments(wal_dir)) > max(
            int(p.name[18:30]) for p in metrics_dir.glob("part-*.parquet")
        )

    async with running(data) as (ingestor, _):
        snap = ingestor.store.snapshot()
        assert snapshot_rows(snap) == rows(expected)
        assert snapshot_latest(snap.latest) == reference_latest(expected)


async def test_compaction_merges_files_and_restart_drops_replaced_ones(tmp_path: Path) -> None:
    data = tmp_path / "data"
    async with (
        running(data, compaction_min_files=4, compaction_grace_s=3600) as (
            ingestor,
            port,
        ),
        connect(port) as stub,
    ):
        run_id = (await stub.CreateRun(pb.CreateRunRequest())).info.run_id
        tables = [*tricky(run_id), simple(run_id, 500, 10)]
        for seq, batch in enumerate(batches_of("compact", tables), start=1):
            assert await stream(stub, [batch]) == seq
            await ingestor.store.flush()
        await poll(lambda: len(ingestor.store.snapshot().files) == 1)
        snap = ingestor.store.snapshot()
        assert snap.files[0].name == "part-000000000001-000000000004.parquet"
        merged = pq.read_table(snap.files[0])
        assert merged.column_names == METRICS_SCHEMA.names
        order = merged.select(["run_id", "key", "step", "timestamp"])
        assert order.sort_by([(c, "ascending") for c in order.column_names]).equals(order)
        expected = pa.concat_tables(tables)
        assert snapshot_rows(snap) == rows(expected)
        # Within the grace period the replaced files stay for readers of older snapshots.
        assert len(list((data / "metrics").glob("part-*.parquet"))) == 5

    async with running(data) as (ingestor, _):
        assert [p.name for p in (data / "metrics").glob("part-*.parquet")] == [
            "part-000000000001-000000000004.parquet"
        ]
        snap = ingestor.store.snapshot()
        assert snapshot_rows(snap) == rows(expected)
        assert snapshot_latest(snap.latest) == reference_latest(expected)


async def test_parquet_layout(tmp_path: Path) -> None:
    data = tmp_path / "data"
    async with running(data) as (ingestor, port), connect(port) as stub:
        run_id = (await stub.CreateRun(pb.CreateRunRequest())).info.run_id
        assert await stream(stub, batches_of("layout", [simple(run_id, 4000, 0)])) == 1
        await ingestor.store.flush()
        (path,) = ingestor.store.snapshot().files
    meta = pq.ParquetFile(path).metadata
    columns = {
        meta.row_group(0).column(i).path_in_schema: meta.row_group(0).column(i)
        for i in range(meta.num_columns)
    }
    assert "RLE_DICTIONARY" in columns["run_id"].encodings
    assert "RLE_DICTIONARY" in columns["key"].encodings
    assert "DELTA_BINARY_PACKED" in columns["step"].encodings
    assert "DELTA_BINARY_PACKED" in columns["timestamp"].encodings
    assert "BYTE_STREAM_SPLIT" in columns["value"].encodings
    assert columns["value"].compression == "ZSTD"
