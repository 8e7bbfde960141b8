"""steppe.query.reader against real Parquet files in a data dir, an Arrow tail and DuckDB."""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from steppe.ingest.layout import LATEST_SCHEMA, DataDir, Snapshot
from steppe.query.reader import DirectorySnapshot, Reader, compute_latest
from steppe.query.series import SeriesData, SeriesKey, multi_series
from tests.query_data import (
    Point,
    history,
    latest_rows,
    latest_table,
    metrics_table,
    same_floats,
    snapshot_of,
    write_metrics_file,
)

NAN, INF = math.nan, math.inf


@pytest.fixture
def reader() -> Iterator[Reader]:
    r = Reader(threads=1)
    yield r
    r.close()


@pytest.fixture
def data_dir(tmp_path: Path) -> DataDir:
    return DataDir.at(tmp_path / "data")


def one_series(
    reader: Reader,
    snapshot: Snapshot,
    run_id: str,
    key: str,
    buckets: int,
    x_min: int | None = None,
    x_max: int | None = None,
) -> SeriesData:
    """One series by step, as GET /series asks it, with x named ``step`` as that route does."""
    keys = [SeriesKey(run_id, key)]
    data = multi_series(reader, snapshot, keys, buckets, x_min=x_min, x_max=x_max).series[0]
    names = ["step", *data.table.column_names[1:]]
    return SeriesData(data.series, data.bucketed, data.table.rename_columns(names))


def rows(series: SeriesData) -> list[dict[str, object]]:
    table: list[dict[str, object]] = series.table.to_pylist()
    return table


def assert_same_history(got: list[tuple[int, float, int]], want: list[tuple[int, float, int]]):
    assert [(s, t) for s, _, t in got] == [(s, t) for s, _, t in want]
    assert all(same_floats(a, b) for (_, a, _), (_, b, _) in zip(got, want, strict=True))


def history_of(reader: Reader, snapshot: Snapshot, run_id: str, key: str):
    table = reader.metric_history(snapshot, run_id, key)
    assert table.schema.names == ["step", "value", "timestamp"]
    d = table.to_pydict()
    return list(zip(d["step"], d["value"], d["timestamp"], strict=True))


# --- metric history --------------------------------------------------------------------------


def test_history_is_exact_and_ordered_across_files_and_tail(reader: Reader, data_dir: DataDir):
    file1: list[Point] = [
        ("r1", "loss", 5, 1005, 0.5),
        ("r1", "loss", 1, 1001, NAN),
        ("r1", "acc", 1, 1001, 0.1),
        ("r2", "loss", 1, 1001, 9.0),
    ]
    file2: list[Point] = [
        ("r1", "loss", 3, 1003, INF),
        ("r1", "loss", 3, 1002, -INF),  # same step, older timestamp: comes first
        ("r1", "loss", 0, 1000, -0.0),
    ]
    tail: list[Point] = [
        ("r1", "loss", 4, 1004, 1e308),
        ("r1", "loss", 2, 1006, 5e-324),
        ("r1", "loss", 5, 1005, 0.5),  # logged twice: MLflow keeps every point
    ]
    snapshot = snapshot_of(data_dir, [file1, file2], tail)
    got = history_of(reader, snapshot, "r1", "loss")
    want = history(file1 + file2 + tail, "r1", "loss")
    assert [s for s, _, _ in got] == [0, 1, 2, 3, 3, 4, 5, 5]
    assert_same_history(got, want)
    assert math.copysign(1.0, got[0][1]) == -1.0  # -0.0 survives
    assert history_of(reader, snapshot, "r1", "acc") == [(1, 0.1, 1001)]
    assert history_of(reader, snapshot, "r1", "missing") == []
    assert history_of(reader, snapshot, "nobody", "loss") == []


def test_point_in_tail_and_point_in_file_each_appear_once(reader: Reader, data_dir: DataDir):
    in_file: Point = ("r", "m", 1, 10, 1.0)
    in_tail: Point = ("r", "m", 2, 20, 2.0)
    snapshot = snapshot_of(data_dir, [[in_file]], [in_tail])
    assert history_of(reader, snapshot, "r", "m") == [(1, 1.0, 10), (2, 2.0, 20)]


def test_history_with_no_files_and_empty_tail(reader: Reader, data_dir: DataDir):
    empty = snapshot_of(data_dir, [], [])
    assert history_of(reader, empty, "r", "m") == []
    series = one_series(reader, empty, "r", "m", 10)
    assert not series.bucketed and series.table.num_rows == 0
    assert series.table.schema.names == ["step", "value"]
    tail_only = snapshot_of(data_dir, [], [("r", "m", 7, 70, 7.0)])
    assert history_of(reader, tail_only, "r", "m") == [(7, 7.0, 70)]


def test_keys_with_slashes_and_quotes_are_plain_values(reader: Reader, data_dir: DataDir):
    key = 'eval/loss\'s "best"'
    snapshot = snapshot_of(data_dir, [[("r", key, 1, 1, 1.0), ("r", "eval", 1, 1, 2.0)]], [])
    assert history_of(reader, snapshot, "r", key) == [(1, 1.0, 1)]


def test_concurrent_queries_on_one_reader(reader: Reader, data_dir: DataDir):
    points: list[Point] = [
        (f"r{run}", "m", step, step, float(run * 1000 + step))
        for run in range(4)
        for step in range(500)
    ]
    snapshot = snapshot_of(data_dir, [points[:1000]], points[1000:])

    def check(run: int) -> bool:
        got = history_of(reader, snapshot, f"r{run}", "m")
        return got == [(s, float(run * 1000 + s), s) for s in range(500)]

    with ThreadPoolExecutor(max_workers=4) as pool:
        assert all(pool.map(check, [0, 1, 2, 3] * 4))


# --- series ----------------------------------------------------------------------------------


def test_series_is_exact_up_to_twice_the_buckets(reader: Reader, data_dir: DataDir):
    points: list[Point] = [("r", "m", s, 1000 + s, float(s)) for s in range(20)]
    snapshot = snapshot_of(data_dir, [points[:10]], points[10:])
    exact = one_series(reader, snapshot, "r", "m", buckets=10)
    assert not exact.bucketed
    assert rows(exact) == [{"step": s, "value": float(s)} for s in range(20)]
    bucketed = one_series(reader, snapshot, "r", "m", buckets=9)  # 20 > 2 * 9
    assert bucketed.bucketed
    assert bucketed.table.schema.names == ["step", "min", "max", "first", "last", "mean", "count"]
    assert sum(r["count"] for r in rows(bucketed)) == 20


def test_series_windows_are_inclusive_and_exact_when_small(reader: Reader, data_dir: DataDir):
    points: list[Point] = [("r", "m", s, s, float(s % 7)) for s in range(0, 100_000, 3)]
    snapshot = snapshot_of(data_dir, [points[: len(points) // 2]], points[len(points) // 2 :])
    window = one_series(reader, snapshot, "r", "m", buckets=100, x_min=30, x_max=60)
    assert not window.bucketed
    assert [r["step"] for r in rows(window)] == list(range(30, 61, 3))
    assert [r["value"] for r in rows(window)] == [float(s % 7) for s in range(30, 61, 3)]
    only_low = one_series(reader, snapshot, "r", "m", buckets=5, x_max=9)
    assert [r["step"] for r in rows(only_low)] == [0, 3, 6, 9]
    only_high = one_series(reader, snapshot, "r", "m", buckets=5, x_min=99_990)
    assert [r["step"] for r in rows(only_high)] == [99_990, 99_993, 99_996, 99_999]
    big = one_series(reader, snapshot, "r", "m", buckets=100, x_min=30_000, x_max=60_000)
    assert big.bucketed
    assert rows(big)[0]["step"] >= 30_000 and rows(big)[-1]["step"] <= 60_000
    assert sum(r["count"] for r in rows(big)) == len(range(30_000, 60_001, 3))
    assert one_series(reader, snapshot, "r", "m", 10, x_min=61, x_max=62).table.num_rows == 0


def check_buckets(points: list[Point], series: SeriesData, buckets: int) -> None:
    """Every bucket's min, max, first, last, count and mean are those of the points between
    its first step and the next bucket's; the global min and max survive."""
    assert series.bucketed
    got = rows(series)
    assert 1 <= len(got) <= buckets
    starts = [r["step"] for r in got]
    assert starts == sorted(set(starts))
    ordered = sorted(points, key=lambda p: (p[2], p[3]))
    assert starts[0] == ordered[0][2]
    for i, row in enumerate(got):
        end = starts[i + 1] if i + 1 < len(got) else math.inf
        inside = [p for p in ordered if row["step"] <= p[2] < end]
        values = [p[4] for p in inside]
        finite = [v for v in values if not math.isnan(v)]
        assert row["count"] == len(inside) > 0
        assert row["step"] == inside[0][2]
        assert same_floats(row["first"], values[0])
        assert same_floats(row["last"], values[-1])
        assert same_floats(row["min"], min(finite) if finite else NAN)
        assert same_floats(row["max"], max(finite) if finite else NAN)
        mean = row["mean"]
        assert isinstance(mean, float)
        if any(math.isnan(v) for v in values):
            assert math.isnan(mean)  # the mean shows that a bucket holds a NaN
        elif max(abs(v) for v in values) < 1e300:  # no overflow of the running sum
            slack = 1e-9 * max(abs(v) for v in values)
            assert min(values) - slack <= mean <= max(values) + slack
    finite_all = [p[4] for p in points if not math.isnan(p[4])]
    if finite_all:
        assert min(finite_all) == min(r["min"] for r in got if not math.isnan(r["min"]))
        assert max(finite_all) == max(r["max"] for r in got if not math.isnan(r["max"]))


def test_series_buckets_keep_spikes(reader: Reader, data_dir: DataDir):
    points: list[Point] = [("r", "m", s, s, math.sin(s / 100)) for s in range(10_000)]
    points[4321] = ("r", "m", 4321, 4321, 1e9)  # a spike
    points[4322] = ("r", "m", 4322, 4322, -1e9)
    points[7000] = ("r", "m", 7000, 7000, NAN)
    snapshot = snapshot_of(data_dir, [points[:6000]], points[6000:])
    series = one_series(reader, snapshot, "r", "m", buckets=50)
    check_buckets(points, series, 50)
    got = rows(series)
    assert max(r["max"] for r in got) == 1e9
    assert min(r["min"] for r in got) == -1e9
    assert len(got) == 50
    assert [r["step"] for r in got] == [i * 200 for i in range(50)]  # equal step ranges


finite_values = st.floats(allow_nan=False, allow_infinity=False, width=64)
values = st.one_of(finite_values, st.sampled_from([NAN, INF, -INF]))
steps = st.one_of(
    st.integers(-50, 50),
    st.integers(-(2**63), 2**63 - 1),
)


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    data=st.lists(st.tuples(steps, values), min_size=1, max_size=200),
    buckets=st.integers(1, 20),
    split=st.floats(0, 1),
)
def test_series_property(reader: Reader, data, buckets: int, split: float):
    points: list[Point] = [("r", "m", s, t, v) for t, (s, v) in enumerate(data)]
    cut = int(len(points) * split)
    with tempfile.TemporaryDirectory() as tmp:
        snapshot = snapshot_of(DataDir.at(tmp), [points[:cut]] if cut else [], points[cut:])
        series = one_series(reader, snapshot, "r", "m", buckets)
        history_rows = history_of(reader, snapshot, "r", "m")
    assert_same_history(history_rows, history(points, "r", "m"))
    if len(points) <= 2 * buckets:
        assert not series.bucketed
        want = history(points, "r", "m")
        got = rows(series)
        assert [r["step"] for r in got] == [s for s, _, _ in want]
        assert all(same_floats(r["value"], v) for r, (_, v, _) in zip(got, want, strict=True))
    else:
        check_buckets(points, series, buckets)


# --- latest and keys ---------------------------------------------------------------------------


def test_latest_metrics_and_keys_from_the_snapshot(reader: Reader, data_dir: DataDir):
    points: list[Point] = [
        ("r1", "loss", 1, 10, 3.0),
        ("r1", "loss", 2, 5, 2.0),  # highest step wins over newer timestamp
        ("r1", "loss", 1, 99, 1.0),
        ("r1", "nan", 0, 1, NAN),
        ("r2", "acc", 0, 1, 0.5),
    ]
    snapshot = snapshot_of(data_dir, [points[:2]], points[2:])
    latest = reader.latest_metrics(snapshot, ["r1", "absent"])
    assert list(latest) == ["r1"]
    assert list(latest["r1"]) == ["loss", "nan"]
    assert latest["r1"]["loss"] == {
        "value": 2.0,
        "step": 2,
        "timestamp": 5,
        "min": 1.0,
        "max": 3.0,
        "count": 3,
    }
    only_nan = latest["r1"]["nan"]
    assert math.isnan(only_nan["value"]) and only_nan["min"] is None and only_nan["count"] == 1
    assert reader.latest_metrics(snapshot, []) == {}
    assert reader.metric_keys(snapshot, "r1") == ["loss", "nan"]
    assert reader.metric_keys(snapshot, "absent") == []


# --- DirectorySnapshot ---------------------------------------------------------------------------

POINTS: list[Point] = [
    ("r1", "loss", 0, 100, 1.0),
    ("r1", "loss", 1, 101, NAN),
    ("r1", "loss", 1, 101, 0.25),  # same step and timestamp: the larger value wins (MLflow)
    ("r1", "acc", 3, 50, INF),
    ("r2", "loss", 0, 100, NAN),
]


def assert_latest_equal(table, points: list[Point]) -> None:
    want = latest_rows(points)
    got = {(r["run_id"], r["key"]): r for r in table.to_pylist()}
    assert got.keys() == want.keys()
    for name, row in got.items():
        for column, value in want[name].items():
            if isinstance(value, float):
                assert same_floats(row[column], value), (name, column)
            else:
                assert row[column] == value, (name, column)


def test_compute_latest_matches_mlflow_semantics(data_dir: DataDir):
    paths = [
        write_metrics_file(data_dir, 1, POINTS[:2]),
        write_metrics_file(data_dir, 2, POINTS[2:]),
    ]
    table = compute_latest(paths)
    assert table.schema == LATEST_SCHEMA
    assert_latest_equal(table, POINTS)
    assert compute_latest([]).num_rows == 0


def test_directory_snapshot_without_latest_file(reader: Reader, data_dir: DataDir):
    write_metrics_file(data_dir, 2, POINTS[2:])
    write_metrics_file(data_dir, 1, POINTS[:2])
    (data_dir.metrics_dir / ".part-000000000003-000000000003.parquet.tmp").write_bytes(b"junk")
    source = DirectorySnapshot(data_dir.root)
    snapshot = source.snapshot()
    assert [p.name for p in snapshot.files] == [
        "part-000000000001-000000000001.parquet",
        "part-000000000002-000000000002.parquet",
    ]
    assert snapshot.tail.num_rows == 0
    assert_latest_equal(snapshot.latest, POINTS)
    assert source.snapshot().latest is snapshot.latest  # cached while the files are unchanged
    assert_same_history(history_of(reader, snapshot, "r1", "loss"), history(POINTS, "r1", "loss"))


def test_directory_snapshot_prefers_a_fresh_latest_file(data_dir: DataDir):
    path = write_metrics_file(data_dir, 1, POINTS)
    marker = latest_table([("r9", "written-by-ingest", 0, 0, 1.0)])
    pq.write_table(marker, data_dir.latest_file)
    newest = path.stat().st_mtime_ns
    os.utime(data_dir.latest_file, ns=(newest, newest))
    assert DirectorySnapshot(data_dir).snapshot().latest.column("key").to_pylist() == [
        "written-by-ingest"
    ]
    # A summary older than the newest metrics file is stale (e.g. a crash between the two).
    os.utime(data_dir.latest_file, ns=(newest - 10**9, newest - 10**9))
    assert_latest_equal(DirectorySnapshot(data_dir).snapshot().latest, POINTS)


def test_directory_snapshot_of_an_empty_dir(reader: Reader, tmp_path: Path):
    snapshot = DirectorySnapshot(tmp_path / "nothing-here").snapshot()
    assert snapshot.files == () and snapshot.latest.num_rows == 0
    assert history_of(reader, snapshot, "r", "m") == []


def test_reader_refuses_queries_after_close(data_dir: DataDir):
    r = Reader()
    r.close()
    r.close()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        r.metric_history(snapshot_of(data_dir, [], []), "r", "m")


def test_metrics_table_helper_matches_schema():
    assert metrics_table([]).num_rows == 0
