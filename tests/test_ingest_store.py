"""MetricStore's columnar kernels against plain-Python references: the latest summary
(summarize_points + fold_latest), the flush sort (sort_metrics) and the metrics-file round
trip, over random batches with ties, NaN, +/-inf, repeated dictionary entries and
out-of-order steps; then the store itself across flushes and a reopen."""

from __future__ import annotations

import math
import random
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from steppe.ingest import latest as latest_module
from steppe.ingest import metrics_files, wire
from steppe.ingest.compactor import Compactor
from steppe.ingest.latest import fold_latest, summarize_points
from steppe.ingest.layout import LATEST_SCHEMA, METRICS_SCHEMA, DataDir
from steppe.ingest.metrics_files import (
    TAIL_SCHEMA,
    read_metrics_file,
    read_metrics_file_encoded,
    sort_metrics,
    write_metrics_file,
)
from steppe.ingest.sqlite_catalog import SqliteCatalog
from steppe.ingest.store import MetricStore
from steppe.v1 import steppe_pb2 as pb

NAN, INF = math.nan, math.inf
Point = tuple[str, str, int, int, float]
Summary = tuple[str, int, int, "float | None", "float | None", int]

RUNS = ["run-b", "run-a", "r\u00e9"]
KEYS = ["loss", "acc/top1", "a", "\u00fcber"]
VALUES = st.one_of(
    st.sampled_from([NAN, INF, -INF, 0.0, -0.0, 1.0, -1.0]),
    st.floats(allow_nan=True, allow_infinity=True),
)
POINT = st.tuples(
    st.sampled_from(RUNS),
    st.sampled_from(KEYS),
    st.integers(-2, 3),  # few steps and timestamps: many ties
    st.integers(0, 2),
    VALUES,
)


@st.composite
def batch_points(draw: st.DrawFn) -> list[Point]:
    """Random points; often shaped like what loggers send: one series, or several keys
    interleaved, in (step, timestamp) order (the paths that skip sorting)."""
    points = draw(st.lists(POINT, max_size=12))
    shape = draw(st.sampled_from(["any", "one-series", "in-order", "one-series-in-order"]))
    if shape.startswith("one-series") and points:
        run_id, key = points[0][:2]
        points = [(run_id, key, *p[2:]) for p in points]
    if shape.endswith("in-order"):
        points.sort(key=lambda p: (p[2], p[3]))  # stable: ties keep their order
    return points


BATCHES = st.lists(batch_points(), min_size=1, max_size=6)
# A daemon thread left by another test (a client sender's retry jitter) may touch the global
# random module while Hypothesis generates data; that is not this module's doing.
pytestmark = pytest.mark.filterwarnings("ignore::hypothesis.errors.HypothesisDeprecationWarning")


# -- references ---------------------------------------------------------------------------


@dataclass
class _Series:
    count: int = 0
    low: float | None = None
    high: float | None = None
    at: tuple[int, int] | None = None
    value: float = NAN
    rank: tuple[int, int, tuple[int, float]] = (0, 0, (0, 0.0))


def reference_latest(points: Sequence[Point]) -> dict[tuple[str, str], Summary]:
    """MLflow's latest the obvious way, points in arrival order: highest step, then newest
    timestamp, then largest value (NaN above every number); min/max ignore NaN; count
    counts all."""
    series: dict[tuple[str, str], _Series] = {}
    for run_id, key, step, timestamp, value in points:
        s = series.setdefault((run_id, key), _Series())
        s.count += 1
        if not math.isnan(value):
            s.low = value if s.low is None else min(s.low, value)
            s.high = value if s.high is None else max(s.high, value)
        rank = (1, 0.0) if math.isnan(value) else (0, value)
        if s.at is None or (step, timestamp, rank) >= s.rank:
            s.at, s.value, s.rank = (step, timestamp), value, (step, timestamp, rank)
    return {
        k: (repr(s.value), s.at[0], s.at[1], s.low, s.high, s.count)
        for k, s in series.items()
        if s.at is not None
    }


def latest_dict(latest: pa.Table) -> dict[tuple[str, str], Summary]:
    assert latest.schema.equals(LATEST_SCHEMA)
    out = {}
    for r in latest.to_pylist():
        assert (r["run_id"], r["key"]) not in out, "one row per series"
        out[(r["run_id"], r["key"])] = (
            repr(r["value"]),
            r["step"],
            r["timestamp"],
            r["min"],
            r["max"],
            r["count"],
        )
    return out


def reference_sort(points: Sequence[Point]) -> list[tuple[Any, ...]]:
    """Stable sort by (run_id, key, step, timestamp): equal points keep arrival order."""
    ordered = sorted(points, key=lambda p: (p[0].encode(), p[1].encode(), p[2], p[3]))
    return [(*p[:4], repr(p[4])) for p in ordered]


def table_rows(table: pa.Table) -> list[tuple[Any, ...]]:
    d = table.cast(METRICS_SCHEMA).to_pydict()
    return list(
        zip(d["run_id"], d["key"], d["step"], d["timestamp"], map(repr, d["value"]), strict=True)
    )


# -- building batches ---------------------------------------------------------------------


def strings_table(points: Sequence[Point]) -> pa.Table:
    columns = list(zip(*points, strict=True)) if points else [[], [], [], [], []]
    return pa.Table.from_arrays(
        [pa.array(list(c), f.type) for c, f in zip(columns, METRICS_SCHEMA, strict=True)],
        schema=METRICS_SCHEMA,
    )


def wire_table(points: Sequence[Point], repeat_names: bool = False) -> pa.Table:
    """The points as the server decodes them: per-batch dictionaries from the wire, with
    every name listed twice when ``repeat_names`` (a sloppy client)."""
    batch = wire.encode_metric_batch("s", 1, strings_table(points))
    if repeat_names:
        batch = pb.MetricBatch(
            stream_id="s",
            seq=1,
            run_ids=[*batch.run_ids, *batch.run_ids],
            keys=[*batch.keys, *batch.keys],
            count=batch.count,
            run_index=batch.run_index,
            key_index=_shifted(batch.key_index, len(batch.keys)),
            step=batch.step,
            timestamp_ms=batch.timestamp_ms,
            value=batch.value,
        )
    table = wire.decode_metric_batch(batch).table
    assert table.schema.equals(TAIL_SCHEMA)
    return table


def _shifted(indices: bytes, by: int) -> bytes:
    # Point every other row at the repeated copy of its name.
    values = pa.Array.from_buffers(pa.uint32(), len(indices) // 4, [None, pa.py_buffer(indices)])
    shifted = [v + by * (i % 2) for i, v in enumerate(values.to_pylist())]
    return pa.array(shifted, pa.uint32()).buffers()[1].to_pybytes()


@contextmanager
def thresholds(small: bool) -> Iterator[None]:
    """With ``small``, force the sparse series lookup, per-row-group dictionaries and the
    hash group-by summary (else: dense lookup, whole dictionaries, sort-by-series summary)."""
    places = (
        (metrics_files, "_DENSE_SERIES_LIMIT"),
        (metrics_files, "_COMPACT_DICTIONARY_ABOVE"),
        (latest_module, "_FEW_SERIES"),
    )
    saved = [getattr(module, name) for module, name in places]
    if small:
        for module, name in places:
            setattr(module, name, 1)
    try:
        yield
    finally:
        for (module, name), value in zip(places, saved, strict=True):
            setattr(module, name, value)


def make_tables(batches: Sequence[Sequence[Point]], how: st.DataObject) -> list[pa.Table]:
    kinds = how.draw(
        st.lists(
            st.sampled_from(["strings", "wire", "wire-repeated"]),
            min_size=len(batches),
            max_size=len(batches),
        )
    )
    tables = []
    for points, kind in zip(batches, kinds, strict=True):
        if kind == "strings":
            tables.append(strings_table(points))
        else:
            tables.append(wire_table(points, repeat_names=kind == "wire-repeated"))
    return tables


# -- properties ---------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(batches=BATCHES, how=st.data(), small=st.booleans())
def test_summaries_fold_to_the_reference_latest(
    batches: list[list[Point]], how: st.DataObject, small: bool
) -> None:
    with thresholds(small):
        tables = make_tables(batches, how)
        summaries = [summarize_points(t) for t in tables]
    everything = [p for batch in batches for p in batch]
    assert latest_dict(fold_latest(summaries)) == reference_latest(everything)
    # Folding in stages (as the store does: running summary + unfolded ones) agrees.
    cut = how.draw(st.integers(0, len(summaries)))
    staged = fold_latest([fold_latest(summaries[:cut]), *summaries[cut:]])
    assert latest_dict(staged) == reference_latest(everything)


@settings(max_examples=300, deadline=None)
@given(batches=BATCHES, how=st.data(), small=st.booleans())
def test_sort_is_stable_by_run_key_step_timestamp(
    batches: list[list[Point]], how: st.DataObject, small: bool
) -> None:
    with thresholds(small):
        tables = make_tables(batches, how)
        ordered = sort_metrics(
            pa.concat_tables([metrics_files.as_dictionary_table(t) for t in tables])
        )
    assert ordered.schema.equals(TAIL_SCHEMA)
    assert table_rows(ordered) == reference_sort([p for batch in batches for p in batch])


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(batches=BATCHES, how=st.data(), small=st.booleans())
def test_metrics_file_round_trip_and_its_summary(
    tmp_path: Path, batches: list[list[Point]], how: st.DataObject, small: bool
) -> None:
    path = tmp_path / "part.parquet"
    everything = [p for batch in batches for p in batch]
    with thresholds(small):
        tables = make_tables(batches, how)
        merged = pa.concat_tables([metrics_files.as_dictionary_table(t) for t in tables])
        write_metrics_file(sort_metrics(merged), path)
        encoded = read_metrics_file_encoded(path)
        summary = summarize_points(encoded, series_sorted=True)
    plain = read_metrics_file(path)
    assert plain.schema.equals(METRICS_SCHEMA)
    assert pq.read_schema(path).field("run_id").type == pa.string()  # no Arrow dictionary
    assert table_rows(plain) == reference_sort(everything)
    assert table_rows(encoded) == reference_sort(everything)
    assert latest_dict(fold_latest([summary])) == reference_latest(everything)


def test_files_keep_row_group_statistics_and_small_dictionaries(tmp_path: Path) -> None:
    runs = [f"run-{i:03d}" for i in range(40)]
    keys = [f"key-{i:04d}" for i in range(2000)]
    rng = random.Random(7)
    points = [(r, k, s, 0, rng.random()) for r in runs for k in keys[::40] for s in range(200)]
    rng.shuffle(points)
    path = tmp_path / "part.parquet"
    with thresholds(False):
        write_metrics_file(sort_metrics(wire_table(points)), path)
    metadata = pq.ParquetFile(path).metadata
    assert metadata.num_row_groups >= 2
    previous = ""
    for i in range(metadata.num_row_groups):
        stats = metadata.row_group(i).column(0).statistics
        assert stats.has_min_max and previous <= stats.min <= stats.max
        previous = stats.max
    assert table_rows(read_metrics_file(path)) == reference_sort(points)


def test_unsorted_single_series_batch() -> None:
    points = [
        ("r", "k", s, t, float(v))
        for v, (s, t) in enumerate([(3, 1), (5, 0), (5, 2), (1, 9), (5, 2), (4, 4)])
    ]
    summary = summarize_points(wire_table(points))
    assert latest_dict(summary) == reference_latest(points)
    assert latest_dict(summary)[("r", "k")][0] == "4.0"  # the later of the two (5, 2)


# -- the store ----------------------------------------------------------------------------


def random_batches(seed: int) -> list[list[Point]]:
    rng = random.Random(seed)
    batches = []
    for _ in range(rng.randint(1, 25)):
        n = rng.randint(0, 40)
        batches.append(
            [
                (
                    rng.choice(RUNS),
                    rng.choice(KEYS),
                    rng.randint(-1, 6),
                    rng.randint(0, 3),
                    rng.choice([NAN, INF, -INF, rng.gauss(0, 1)]),
                )
                for _ in range(n)
            ]
        )
    return batches


@pytest.mark.parametrize("seed", range(8))
async def test_store_latest_and_points_across_flushes_and_reopen(tmp_path: Path, seed: int) -> None:
    data_dir = DataDir.at(tmp_path / "data")
    data_dir.root.mkdir(parents=True)
    catalog = SqliteCatalog(data_dir.catalog_file)
    batches = random_batches(seed)
    rng = random.Random(seed)
    everything: list[Point] = []
    try:
        store = MetricStore(data_dir, catalog, flush_interval_s=3600)
        await store.open()
        futures = []
        for seq, points in enumerate(batches, 1):
            table = strings_table(points) if rng.random() < 0.3 else wire_table(points)
            payload = wire.encode_metric_batch("stream", seq, table).SerializeToString()
            futures.append(store.append("stream", seq, table, payload))
            everything.extend(points)
            if rng.random() < 0.3:
                for f in futures:
                    await f
                if rng.random() < 0.5:
                    await store.flush()
                snap = store.snapshot()
                assert latest_dict(snap.latest) == reference_latest(everything)
        for f in futures:
            await f
        snap = store.snapshot()
        assert snap.tail.schema.equals(METRICS_SCHEMA)
        assert latest_dict(snap.latest) == reference_latest(everything)
        files = [read_metrics_file(p) for p in snap.files]
        stored = sorted(table_rows(pa.concat_tables([*files, snap.tail])))
        assert stored == sorted((*p[:4], repr(p[4])) for p in everything)
        await store.close()

        reopened = MetricStore(data_dir, catalog, flush_interval_s=3600)
        await reopened.open()
        assert latest_dict(reopened.snapshot().latest) == reference_latest(everything)
        await reopened.close()
    finally:
        catalog.close()


async def test_compaction_is_bounded_in_points_and_keeps_arrival_order(tmp_path: Path) -> None:
    data_dir = DataDir.at(tmp_path / "data")
    data_dir.root.mkdir(parents=True)
    catalog = SqliteCatalog(data_dir.catalog_file)
    store = MetricStore(data_dir, catalog, flush_interval_s=3600)
    await store.open()
    try:
        everything: list[Point] = []
        sizes = [30, 30, 30, 30, 200, 30, 30]  # points per flushed file
        for seq, n in enumerate(sizes, 1):
            # Ties across files: the same (step, timestamp) again, a later arrival.
            points = [("r", KEYS[i % 2], i % 7, 1, float(seq * 1000 + i)) for i in range(n)]
            table = wire_table(points)
            payload = wire.encode_metric_batch("s", seq, table).SerializeToString()
            await store.append("s", seq, table, payload)
            await store.flush()
            everything.extend(points)
        assert [p.rows for p in store.parts] == sizes
        compactor = Compactor(
            store, data_dir.metrics_dir, min_files=2, small_file_rows=100, max_merge_rows=100
        )
        # The 200-point file is not small; at most 100 points per merge: 30+30+30, then 30+30.
        assert [p.rows for p in compactor.candidates()] == [30, 30, 30]
        while await compactor.compact_once() is not None:
            pass
        assert [p.rows for p in store.parts] == [90, 30, 200, 60]
        snap = store.snapshot()
        files = [read_metrics_file(p) for p in snap.files]
        for table, part in zip(files, store.parts, strict=True):
            assert table.num_rows == part.rows == pq.read_metadata(part.path).num_rows
        merged = files[0]
        assert table_rows(merged) == reference_sort(everything[:90])
        assert latest_dict(snap.latest) == reference_latest(everything)
        await compactor.close()
    finally:
        await store.close()
        catalog.close()

    # Reopened: parts learn their point counts from the file footers.
    catalog = SqliteCatalog(data_dir.catalog_file)
    try:
        reopened = MetricStore(data_dir, catalog, flush_interval_s=3600)
        await reopened.open()
        assert sorted(p.rows for p in reopened.parts) == [30, 60, 90, 200]
        assert latest_dict(reopened.snapshot().latest) == reference_latest(everything)
        await reopened.close()
    finally:
        catalog.close()
