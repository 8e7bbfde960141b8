"""Pre-aggregated tiers (ingest/tiers.py, query/aligned.py): written beside each flushed and
compacted metrics file, deleted with it, never trusted when stale, and the aligned series
they answer equal to a plain-Python computation over the points for random windows, with
points in files with tiers, in files without, compacted and still in the unflushed tail."""

from __future__ import annotations

import math
import random
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from steppe.ingest import wire
from steppe.ingest.compactor import Compactor
from steppe.ingest.layout import TIER_MIN_POINTS, DataDir, Snapshot, tiers_path
from steppe.ingest.sqlite_catalog import SqliteCatalog
from steppe.ingest.store import MetricStore
from steppe.query.aligned import aligned_series
from steppe.query.reader import Reader
from steppe.query.series import SeriesKey
from tests.query_data import Point, metrics_table, same_floats

NAN, INF = math.nan, math.inf


@pytest.fixture
def reader() -> Iterator[Reader]:
    r = Reader(threads=2)
    yield r
    r.close()


def reference_shift(lo: int, hi: int, buckets: int) -> int:
    best = 0
    for k in range(63):
        if (hi >> k) - (lo >> k) + 1 >= buckets:
            best = k
    return best


def reference(
    points: Sequence[Point], keys: Sequence[tuple[str, str]], buckets: int,
    lo: int | None, hi: int | None,
) -> list[Any]:  # fmt: skip
    """Per series: ("exact", [(step, value)]) or ("bucketed", [bucket dicts]), by the
    aligned grid over the points alone: exact ones hold the window's points, bucketed ones
    those of the window widened to whole 64-step blocks (which also decides which)."""
    exact_lo, exact_hi = lo, hi
    lo = None if lo is None else lo // 64 * 64
    hi = None if hi is None else hi // 64 * 64 + 63

    def inside(step: int) -> bool:
        return (lo is None or step >= lo) and (hi is None or step <= hi)

    def order(p: Point) -> tuple[int, int]:
        return p[2], p[3]

    chosen = {
        key: sorted((p for p in points if (p[0], p[1]) == key and inside(p[2])), key=order)
        for key in keys
    }
    present = [c for c in chosen.values() if c]
    if not present:
        return [("exact", []) for _ in keys]
    k = reference_shift(min(c[0][2] for c in present), max(c[-1][2] for c in present), buckets)
    out: list[Any] = []
    for key in keys:
        rows = chosen[key]
        if len(rows) <= 2 * buckets:
            inside = [
                p for p in rows
                if (exact_lo is None or p[2] >= exact_lo) and (exact_hi is None or p[2] <= exact_hi)
            ]  # fmt: skip
            out.append(("exact", [(p[2], p[4]) for p in inside]))
            continue
        groups: dict[int, list[Point]] = {}
        for p in rows:
            groups.setdefault(p[2] >> k, []).append(p)
        got = []
        for _, group in sorted(groups.items()):
            values = [p[4] for p in group]
            finite = [v for v in values if not math.isnan(v)]
            got.append(
                {
                    "x": group[0][2],
                    "min": min(finite) if finite else NAN,
                    "max": max(finite) if finite else NAN,
                    "first": values[0],
                    "last": values[-1],
                    "mean": math.fsum(values) / len(values) if not any(
                        math.isnan(v) for v in values) and not (INF in values and -INF in values)
                    else NAN,
                    "count": len(group),
                }
            )  # fmt: skip
        out.append(("bucketed", got))
    return out


def check(result: Any, want: list[Any]) -> None:
    for data, (kind, rows) in zip(result.series, want, strict=True):
        table = data.table.to_pylist()
        if kind == "exact":
            assert not data.bucketed
            assert [r["x"] for r in table] == [s for s, _ in rows]
            assert all(same_floats(r["value"], v) for r, (_, v) in zip(table, rows, strict=True))
            continue
        assert data.bucketed
        assert [r["x"] for r in table] == [r["x"] for r in rows]
        for got, exp in zip(table, rows, strict=True):
            assert got["count"] == exp["count"]
            for name in ("min", "max", "first", "last"):
                assert same_floats(got[name], exp[name]), (name, got, exp)
            if math.isnan(exp["mean"]) or math.isinf(exp["mean"]):
                assert same_floats(got["mean"], exp["mean"])
            else:
                assert got["mean"] == pytest.approx(exp["mean"], rel=1e-9, abs=1e-9)


def noisy(rng: random.Random) -> float:
    roll = rng.random()
    if roll < 0.002:
        return NAN
    if roll < 0.003:
        return INF
    if roll < 0.004:
        return -INF
    return rng.gauss(0, 1)


async def append(store: MetricStore, seq: int, points: Sequence[Point]) -> None:
    table = wire.decode_metric_batch(
        wire.encode_metric_batch("s", seq, metrics_table(points))
    ).table
    payload = wire.encode_metric_batch("s", seq, metrics_table(points)).SerializeToString()
    await store.append("s", seq, table, payload)


async def test_aligned_series_from_tiers_equal_the_points(tmp_path: Path, reader: Reader) -> None:
    data_dir = DataDir.at(tmp_path / "data")
    data_dir.root.mkdir()
    catalog = SqliteCatalog(data_dir.catalog_file)
    store = MetricStore(data_dir, catalog, flush_interval_s=3600)
    await store.open()
    rng = random.Random(15)
    everything: list[Point] = []
    try:
        # Big series "r/loss" (tiers), small "r/lr" (points only), "q/loss" with negative
        # steps and repeated steps (later timestamps); 8 flushes, then a tail.
        for seq, chunk in enumerate(range(9), 1):
            points: list[Point] = []
            base = chunk * 9000
            for i in range(9000):
                points.append(("r", "loss", base + i, 10 * (base + i), noisy(rng)))
            for i in range(0, 9000, 500):
                points.append(("r", "lr", base + i, 10 * (base + i), rng.random()))
            for i in range(6000):
                step = -20_000 + chunk * 3000 + i // 2
                points.append(("q", "loss", step, 10 * (chunk * 6000 + i), noisy(rng)))
            await append(store, seq, points)
            everything.extend(points)
            if chunk < 8:
                await store.flush()
        compactor = Compactor(
            store, data_dir.metrics_dir, min_files=3, max_files=3, small_file_rows=1 << 20,
            grace_s=0,
        )  # fmt: skip
        merged = await compactor.compact_once()
        assert merged is not None
        await compactor.close()
        snapshot = store.snapshot()
        assert snapshot.tail.num_rows == 9000 + 18 + 6000
        # Tiers beside every file (big series only), gone with the compacted inputs.
        tier_files = sorted(p.name for p in data_dir.tiers_dir.iterdir())
        assert tier_files == sorted(p.name for p in snapshot.files)
        for path in snapshot.files:
            tiers = reader.tiers.of(path)
            assert tiers is not None and tiers.tiered == {("r", "loss"), ("q", "loss")}
            assert tiers.present == {("r", "loss"), ("q", "loss"), ("r", "lr")}
        assert TIER_MIN_POINTS > 18 * 3  # r/lr never gets tiers, even compacted

        keys = [("r", "loss"), ("r", "lr"), ("q", "loss")]
        series = [SeriesKey(*k) for k in keys]
        steps = [p[2] for p in everything]
        lo_all, hi_all = min(steps), max(steps)
        cases: list[tuple[int, int | None, int | None]] = [(1000, None, None), (50, None, None)]
        for _ in range(25):
            a, b = sorted(rng.randint(lo_all - 100, hi_all + 100) for _ in range(2))
            cases.append((rng.choice([5, 64, 300, 1000, 4000]), a, b))
        cases += [(100, 17, None), (100, None, 40_001), (10, 12_345, 12_345)]
        # With the tail, and without it (the files alone: no branch reads points then).
        flushed = everything[: -snapshot.tail.num_rows]
        files_only = Snapshot(snapshot.files, snapshot.tail.slice(0, 0), snapshot.latest)
        for buckets, lo, hi in cases:
            got = aligned_series(reader, snapshot, series, buckets, x_min=lo, x_max=hi)
            check(got, reference(everything, keys, buckets, lo, hi))
            got = aligned_series(reader, files_only, series, buckets, x_min=lo, x_max=hi)
            check(got, reference(flushed, keys, buckets, lo, hi))
        # A file without its tier file (a data dir from before tiers, a failed write): its
        # points are read instead, for every series.
        tiers_path(snapshot.files[1]).unlink()
        fresh = Reader(threads=2)
        try:
            assert fresh.tiers.of(snapshot.files[1]) is None
            for buckets, lo, hi in cases[:12]:
                got = aligned_series(fresh, snapshot, series, buckets, x_min=lo, x_max=hi)
                check(got, reference(everything, keys, buckets, lo, hi))
        finally:
            fresh.close()
    finally:
        await store.close()
        catalog.close()


def test_a_stale_or_damaged_tier_file_is_not_trusted(tmp_path: Path, reader: Reader) -> None:
    from steppe.ingest.metrics_files import sort_metrics, write_metrics_file
    from steppe.ingest.tiers import write_tiers

    data_dir = DataDir.at(tmp_path / "data")
    data_dir.metrics_dir.mkdir(parents=True)
    path = data_dir.metrics_dir / "part-000000000001-000000000001.parquet"
    points = [("r", "m", s, s, float(s)) for s in range(TIER_MIN_POINTS)]
    write_metrics_file(sort_metrics(metrics_table(points)), path)
    assert write_tiers(sort_metrics(metrics_table(points)), path) == tiers_path(path)
    assert (found := reader.tiers.of(path)) is not None and found.tiered == {("r", "m")}
    # The metrics file rewritten under the same name (other points): the tiers are stale.
    other = [("r", "m", s, s, -float(s)) for s in range(TIER_MIN_POINTS + 1)]
    write_metrics_file(sort_metrics(metrics_table(other)), path)
    assert reader.tiers.of(path) is None
    tiers_path(path).write_bytes(b"not parquet")
    assert Reader().tiers.of(path) is None


def test_points_with_no_big_series_write_only_the_index(tmp_path: Path, reader: Reader) -> None:
    from steppe.ingest.metrics_files import sort_metrics, write_metrics_file
    from steppe.ingest.tiers import write_tiers

    path = tmp_path / "metrics" / "part-000000000001-000000000001.parquet"
    path.parent.mkdir()
    table = sort_metrics(metrics_table([("r", f"k{i}", 0, 0, 1.0) for i in range(100)]))
    write_metrics_file(table, path)
    assert write_tiers(table, path) == tiers_path(path)
    found = reader.tiers.of(path)
    assert found is not None and found.tiered == set() and len(found.present) == 100


def test_the_tier_cache_holds_at_most_its_bytes(tmp_path: Path) -> None:
    from steppe.ingest.metrics_files import sort_metrics, write_metrics_file
    from steppe.ingest.tiers import write_tiers
    from steppe.query.tier_files import TierIndex

    metrics = tmp_path / "metrics"
    metrics.mkdir()
    paths = []
    for n in range(1, 4):
        path = metrics / f"part-{n:012d}-{n:012d}.parquet"
        table = sort_metrics(metrics_table([("r", "m", s, s, 1.0) for s in range(50_000)]))
        write_metrics_file(table, path)
        write_tiers(table, path)
        paths.append(path)
    one = TierIndex().of(paths[0])
    assert one is not None
    each = one.table.nbytes + 200 * len(one.slices)  # what the index counts per file
    index = TierIndex(max_bytes=2 * each + 10)
    for path in paths:
        assert index.of(path) is not None
    assert index._bytes <= 2 * each + 10
    assert list(index._known) == paths[1:]  # the least recently used one went first


def test_recovery_drops_tier_files_whose_metrics_file_is_gone(tmp_path: Path) -> None:
    from steppe.ingest.recovery import recover

    data_dir = DataDir.at(tmp_path / "data")
    data_dir.root.mkdir()
    data_dir.tiers_dir.mkdir()
    orphan = data_dir.tiers_dir / "part-000000000007-000000000007.parquet"
    orphan.write_bytes(b"left by a crash between two deletes")
    catalog = SqliteCatalog(data_dir.catalog_file)
    try:
        recover(data_dir, catalog)
    finally:
        catalog.close()
    assert not orphan.exists()


@pytest.mark.parametrize("batch_rows", [1 << 18, 1000])
def test_every_tier_row_equals_its_bucket_of_the_points(
    batch_rows: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Each row of every level against the points of its bucket, directly (not through a
    # query): the coarser levels are derived from the finer ones, and a bucket's first/last
    # must be its lowest/highest (step, timestamp) point even when steps repeat and the
    # series spans many 2^6 buckets (Arrow's hash "first"/"last" once got this wrong at 2^12).
    from steppe.ingest import tiers
    from steppe.ingest.layout import TIER_INDEX_SHIFT, TIER_SHIFTS
    from steppe.ingest.metrics_files import sort_metrics

    # A small batch cuts buckets (and series) across batches: their partial rows must merge.
    monkeypatch.setattr(tiers, "TIER_BATCH_ROWS", batch_rows)
    rng = random.Random(7)
    points: list[Point] = []
    for run, key, n in [("a", "x", 30_000), ("a", "y", 50), ("b", "x", TIER_MIN_POINTS)]:
        for _ in range(n):
            step = rng.randrange(-100, 300_000)
            points.append((run, key, step, rng.randrange(10**6), noisy(rng)))
    rng.shuffle(points)
    rows = tiers.compute_tiers(sort_metrics(metrics_table(points))).to_pylist()

    def order(p: Point) -> tuple[int, int]:
        return (p[2], p[3])

    want: dict[tuple[str, str, int, int], list[Point]] = {}
    sizes: dict[tuple[str, str], int] = {}
    for p in points:
        sizes[(p[0], p[1])] = sizes.get((p[0], p[1]), 0) + 1
    for p in sorted(points, key=order):
        want.setdefault((p[0], p[1], TIER_INDEX_SHIFT, 0), []).append(p)
        if sizes[(p[0], p[1])] >= TIER_MIN_POINTS:
            for shift in TIER_SHIFTS:
                want.setdefault((p[0], p[1], shift, p[2] >> shift), []).append(p)
    assert [(r["run_id"], r["key"], r["shift"], r["bucket"]) for r in rows] == sorted(want)
    for row in rows:
        bucket = want[(row["run_id"], row["key"], row["shift"], row["bucket"])]
        values = [p[4] for p in bucket]
        finite = [v for v in values if not math.isnan(v)]
        assert row["count"] == len(bucket)
        assert same_floats(row["first"], bucket[0][4]) and same_floats(row["last"], bucket[-1][4])
        assert (row["first_step"], row["first_ts"]) == order(bucket[0])
        assert (row["last_step"], row["last_ts"]) == order(bucket[-1])
        assert same_floats(row["min"], min(finite) if finite else NAN)
        assert same_floats(row["max"], max(finite) if finite else NAN)
        assert (row["ts_lo"], row["ts_hi"]) == (
            min(p[3] for p in bucket),
            max(p[3] for p in bucket),
        )
        if all(math.isfinite(v) for v in values):
            assert row["sum"] == pytest.approx(math.fsum(values), rel=1e-9, abs=1e-9)
