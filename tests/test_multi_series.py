"""Many series in one call (steppe.query.series and POST /api/steppe/v1/series): exact and
bucketed answers against a plain-Python reference, spike preservation per series and for
aggregates across series, x as step / wall / relative time, over real Parquet + tail."""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from steppe.ingest.layout import DataDir, Snapshot
from steppe.ingest.sqlite_catalog import SqliteCatalog
from steppe.query.app import make_app
from steppe.query.reader import Reader
from steppe.query.series import SeriesData, SeriesKey, multi_series
from tests.query_data import FixedSource, Point, same_floats, snapshot_of

API = "/api/steppe/v1"
NAN, INF = math.nan, math.inf


@pytest.fixture
def reader() -> Iterator[Reader]:
    r = Reader(threads=1)
    yield r
    r.close()


def x_of(point: Point, x: str, starts: dict[str, int]) -> int:
    if x == "step":
        return point[2]
    if x == "wall":
        return point[3]
    return point[3] - starts[point[0]]


def selected(
    points: list[Point], key: SeriesKey, x: str, lo: int | None = None, hi: int | None = None
) -> list[tuple[int, int, int, float]]:
    """Reference: (x, step, ts, value) of one series in the window, in (x, step, ts) order."""
    starts: dict[str, int] = {}
    for p in points:
        starts[p[0]] = min(starts.get(p[0], p[3]), p[3])
    out = [
        (x_of(p, x, starts), p[2], p[3], p[4])
        for p in points
        if (p[0], p[1]) == (key.run_id, key.key)
    ]
    out = [o for o in out if (lo is None or o[0] >= lo) and (hi is None or o[0] <= hi)]
    return sorted(out, key=lambda o: o[:3])


def reference_buckets(
    rows: list[tuple[int, float]], lo: int, hi: int, buckets: int
) -> list[dict[str, Any]]:
    """Each non-empty bucket of (x, value) rows already in order."""
    groups: dict[int, list[tuple[int, float]]] = {}
    for x, v in rows:
        groups.setdefault((x - lo) * buckets // (hi - lo + 1), []).append((x, v))
    out = []
    for _, group in sorted(groups.items()):
        values = [v for _, v in group]
        finite = [v for v in values if not math.isnan(v)]
        out.append(
            {
                "x": group[0][0],
                "min": min(finite) if finite else NAN,
                "max": max(finite) if finite else NAN,
                "first": values[0],
                "last": values[-1],
                "count": len(values),
                "values": values,
            }
        )
    return out


def check_bucketed(data: SeriesData, want: list[dict[str, Any]]) -> None:
    got = data.table.to_pylist()
    assert data.bucketed and [g["x"] for g in got] == [w["x"] for w in want]
    for g, w in zip(got, want, strict=True):
        for name in ("min", "max", "first", "last"):
            assert same_floats(g[name], w[name]), (name, g, w)
        assert g["count"] == w["count"]
        if any(math.isnan(v) for v in w["values"]):
            assert math.isnan(g["mean"])
        elif max(abs(v) for v in w["values"]) < 1e300:
            slack = 1e-9 * max(abs(v) for v in w["values"])
            assert min(w["values"]) - slack <= g["mean"] <= max(w["values"]) + slack


def check_exact(data: SeriesData, want: list[tuple[int, float]]) -> None:
    assert not data.bucketed
    got = data.table.to_pylist()
    assert [g["x"] for g in got] == [x for x, _ in want]
    assert all(same_floats(g["value"], v) for g, (_, v) in zip(got, want, strict=True))


# --- several series ----------------------------------------------------------------------------


def ranks(steps: int = 3000) -> list[Point]:
    points: list[Point] = []
    for rank in range(4):
        run = f"rank{rank}"
        points += [
            (run, "loss", s, 10_000 * rank + 2 * s, math.sin(s / 50) + rank) for s in range(steps)
        ]
        points.append((run, "grad_norm", 0, 10_000 * rank - 5, 1.0))  # the run's first point
    points[1234] = ("rank0", "loss", 1234, 2468, 1e9)  # a spike
    points[3001 + 2222] = ("rank1", "loss", 2222, 10_000 + 4444, -1e9)
    points[3001 * 2 + 10] = ("rank2", "loss", 10, 20_000 + 20, NAN)
    return points


@pytest.fixture
def world(tmp_path: Path) -> Snapshot:
    points = ranks()
    return snapshot_of(DataDir.at(tmp_path), [points[:5000]], points[5000:])


@pytest.mark.parametrize("x", ["step", "wall", "relative"])
def test_each_series_keeps_its_spikes_on_a_shared_grid(
    reader: Reader, world: Snapshot, x: str
) -> None:
    points = ranks()
    keys = [SeriesKey(f"rank{r}", "loss") for r in range(4)] + [SeriesKey("rank3", "nope")]
    result = multi_series(reader, world, keys, 100, x=x)  # type: ignore[arg-type]
    assert result.x == x and result.aggregate is None
    assert [d.series for d in result.series] == keys
    every = [o for k in keys for o in selected(points, k, x)]
    lo, hi = min(o[0] for o in every), max(o[0] for o in every)
    for key, data in zip(keys[:4], result.series, strict=False):
        rows = [(o[0], o[3]) for o in selected(points, key, x)]
        check_bucketed(data, reference_buckets(rows, lo, hi, 100))
    assert not result.series[4].bucketed and result.series[4].table.num_rows == 0
    assert max(r["max"] for r in result.series[0].table.to_pylist()) == 1e9
    assert min(r["min"] for r in result.series[1].table.to_pylist()) == -1e9
    if x == "relative":
        # ms since each run's first point of any key (grad_norm, 5 ms before the loss).
        assert result.series[0].table.column("x")[0].as_py() == 5


def test_a_window_makes_small_series_exact(reader: Reader, world: Snapshot) -> None:
    points = ranks()
    keys = [SeriesKey("rank0", "loss"), SeriesKey("rank2", "loss")]
    result = multi_series(reader, world, keys, 50, x_min=1200, x_max=1299)
    for key, data in zip(keys, result.series, strict=True):
        check_exact(data, [(o[0], o[3]) for o in selected(points, key, "step", 1200, 1299)])
    wall = multi_series(reader, world, keys, 50, x="wall", x_min=20_000, x_max=20_040)
    assert wall.series[0].table.num_rows == 0
    check_exact(
        wall.series[1], [(o[0], o[3]) for o in selected(points, keys[1], "wall", 20_000, 20_040)]
    )
    relative = multi_series(reader, world, keys, 50, x="relative", x_min=0, x_max=30)
    for key, data in zip(keys, relative.series, strict=True):
        check_exact(data, [(o[0], o[3]) for o in selected(points, key, "relative", 0, 30)])


@pytest.mark.parametrize("aggregate", ["mean", "min", "max"])
def test_aggregate_across_ranks_per_step(reader: Reader, world: Snapshot, aggregate: str) -> None:
    points = ranks()
    keys = [SeriesKey(f"rank{r}", "loss") for r in range(4)]
    per_step: dict[int, list[float]] = {}
    for key in keys:
        for x, _, _, v in selected(points, key, "step"):
            per_step.setdefault(x, []).append(v)

    def combine(values: list[float]) -> float:
        if aggregate == "mean":
            return NAN if any(math.isnan(v) for v in values) else sum(values) / len(values)
        finite = [v for v in values if not math.isnan(v)]
        if not finite:
            return NAN
        return min(finite) if aggregate == "min" else max(finite)

    want = sorted((x, combine(values)) for x, values in per_step.items())
    exact = multi_series(reader, world, keys, 10_000, aggregate=aggregate)  # type: ignore[arg-type]
    assert exact.aggregate == aggregate and len(exact.series) == 1
    data = exact.series[0]
    assert data.series is None and not data.bucketed
    got = data.table.to_pylist()
    assert [g["x"] for g in got] == [x for x, _ in want]
    assert [g["count"] for g in got] == [len(per_step[x]) for x, _ in want]
    for g, (_, v) in zip(got, want, strict=True):
        assert same_floats(g["value"], v) or math.isclose(g["value"], v, rel_tol=1e-12)
    bucketed = multi_series(reader, world, keys, 30, aggregate=aggregate)  # type: ignore[arg-type]
    rows = bucketed.series[0].table.to_pylist()
    assert bucketed.series[0].bucketed and len(rows) == 30
    assert sum(r["count"] for r in rows) == len(want)
    aggregated = [(g["x"], g["value"]) for g in got]  # the engine's own (exact) aggregate
    for r in rows:  # each bucket's extremes are exactly those of the aggregated points in it
        inside = [v for x, v in aggregated if r["x"] <= x < r["x"] + 100]
        finite = [v for v in inside if not math.isnan(v)]
        assert same_floats(r["min"], min(finite)) and same_floats(r["max"], max(finite))
    if aggregate == "max":
        assert max(r["max"] for r in rows) == 1e9  # the spike survives the aggregate
    if aggregate == "min":
        assert min(r["min"] for r in rows) == -1e9


finite_values = st.floats(allow_nan=False, allow_infinity=False, width=64)
values = st.one_of(finite_values, st.sampled_from([NAN, INF, -INF]))


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    data=st.lists(
        st.tuples(st.integers(0, 2), st.integers(-50, 50), values), min_size=1, max_size=150
    ),
    buckets=st.integers(1, 20),
    split=st.floats(0, 1),
)
def test_multi_series_property(
    reader: Reader, data: list[tuple[int, int, float]], buckets: int, split: float
) -> None:
    """One series alone and three together, against the reference."""
    points: list[Point] = [(f"r{r}", "m", s, t, v) for t, (r, s, v) in enumerate(data)]
    cut = int(len(points) * split)
    keys = [SeriesKey(f"r{r}", "m") for r in range(3)]
    with tempfile.TemporaryDirectory() as tmp:
        snapshot = snapshot_of(DataDir.at(tmp), [points[:cut]] if cut else [], points[cut:])
        alone = multi_series(reader, snapshot, keys[:1], buckets).series[0]
        together = multi_series(reader, snapshot, keys, buckets)
    mine = [(o[0], o[3]) for o in selected(points, keys[0], "step")]
    if len(mine) <= 2 * buckets:
        check_exact(alone, mine)
    elif mine:  # alone, a series' grid spans its own points
        check_bucketed(alone, reference_buckets(mine, mine[0][0], mine[-1][0], buckets))
    every = [o for k in keys for o in selected(points, k, "step")]
    lo, hi = min(o[0] for o in every), max(o[0] for o in every)
    for key, series in zip(keys, together.series, strict=True):
        rows = [(o[0], o[3]) for o in selected(points, key, "step")]
        if len(rows) <= 2 * buckets:
            check_exact(series, rows)
        else:
            check_bucketed(series, reference_buckets(rows, lo, hi, buckets))


# --- HTTP ---------------------------------------------------------------------------------------

Client = TestClient[web.Request, web.Application]


@pytest.fixture
async def client(tmp_path: Path, world: Snapshot) -> AsyncIterator[Client]:
    catalog = SqliteCatalog(tmp_path / "catalog.sqlite")
    for rank in range(4):
        catalog.create_run(f"rank{rank}", "0", f"rank {rank}", start_time=rank)
    info = {"version": "0.1.0", "grpc_port": 1, "http_port": 0, "pid": os.getpid()}
    app = make_app(catalog, FixedSource(world), info)
    async with TestClient(TestServer(app, host="127.0.0.1")) as test_client:
        yield test_client
    catalog.close()


async def test_post_series_shapes(client: Client) -> None:
    body = {
        "series": [{"run_id": "rank0", "key": "loss"}, {"run_id": "rank1", "key": "loss"}],
        "buckets": 10,
    }
    response = await client.post(f"{API}/series", json=body)
    assert response.status == 200, await response.text()
    answer = await response.json()
    assert set(answer) == {"x", "aggregate", "series"}
    assert answer["x"] == "step" and answer["aggregate"] is None
    first, second = answer["series"]
    assert (first["run_id"], first["key"], first["bucketed"]) == ("rank0", "loss", True)
    assert set(first) == {
        "run_id", "key", "bucketed", "x", "min", "max", "first", "last", "mean", "count",
    }  # fmt: skip
    assert first["x"] == second["x"] == [300 * i for i in range(10)]  # one grid
    assert max(first["max"]) == 1e9 and min(second["min"]) == -1e9
    exact = await (
        await client.post(
            f"{API}/series",
            json={"series": [{"run_id": "rank2", "key": "loss"}], "x_min": 9.5, "x_max": 11},
        )
    ).json()
    assert exact["series"][0]["x"] == [10, 11]
    assert exact["series"][0]["value"][0] == "NaN"
    assert set(exact["series"][0]) == {"run_id", "key", "bucketed", "x", "value"}
    mean = await (
        await client.post(
            f"{API}/series",
            json={**body, "aggregate": "mean", "x": "relative", "buckets": 10_000},
        )
    ).json()
    (only,) = mean["series"]
    assert only["run_id"] is None and only["key"] is None and only["bucketed"] is False
    assert set(only) == {"run_id", "key", "bucketed", "x", "value", "count"}
    assert only["x"][:2] == [5, 7] and only["count"][:2] == [2, 2]


@pytest.mark.parametrize(
    ("body", "field", "needle"),
    [
        ({}, "series", "must be a list of 1 to 100"),
        ({"series": []}, "series", "must be a list of 1 to 100"),
        ({"series": [{"run_id": "rank0"}]}, "series[0]", "must be an object"),
        ({"series": [{"run_id": "rank0", "key": 1}]}, "series[0].key", "must be a string"),
        (
            {"series": [{"run_id": "rank0", "key": "loss"}, {"run_id": "rank0", "key": "loss"}]},
            "series[1]",
            "repeats series[0]",
        ),
        ({"series": [{"run_id": "rank0", "key": "loss"}], "buckets": 0}, "buckets", "from 1"),
        ({"series": [{"run_id": "rank0", "key": "loss"}], "x": "time"}, "x", "must be one of"),
        (
            {"series": [{"run_id": "rank0", "key": "loss"}], "aggregate": "sum"},
            "aggregate",
            "must be one of",
        ),
        ({"series": [{"run_id": "rank0", "key": "loss"}], "x_min": "a"}, "x_min", "finite number"),
        (
            {"series": [{"run_id": "rank0", "key": "loss"}], "x_min": 5, "x_max": 1},
            "x_min",
            "greater than x_max",
        ),
        ({"series": [{"run_id": "rank0", "key": "loss"}], "step": 1}, "step", "unknown field"),
    ],
)
async def test_post_series_rejects_bad_bodies(
    client: Client, body: object, field: str, needle: str
) -> None:
    response = await client.post(f"{API}/series", json=body)
    assert response.status == 400, await response.text()
    error = await response.json()
    assert error["error_code"] == "INVALID_PARAMETER_VALUE"
    assert f"'{field}'" in error["message"] and needle in error["message"], error["message"]


async def test_post_series_of_an_unknown_run_is_404(client: Client) -> None:
    body = {"series": [{"run_id": "rank0", "key": "loss"}, {"run_id": "ghost", "key": "loss"}]}
    response = await client.post(f"{API}/series", json=body)
    assert response.status == 404
    assert "ghost" in (await response.json())["message"]
