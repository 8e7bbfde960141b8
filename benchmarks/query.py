"""Query latency benchmark (issue 4) on a generated data set, each question beside the same
question asked of DuckDB directly on the Parquet files (the floor), as a ratio.

    python benchmarks/query.py            # 100 runs x 10 keys x 100k steps + one 5M-step run
    python benchmarks/query.py --smoke    # 10 runs x 2 keys x 5k steps + one 50k-step run
    python benchmarks/query.py --medium   # 20 runs x 5 keys x 100k steps + one 5M-step run

Reported (median of repeats): a 100k-point metric history through the Python client; the
5M-step series as 1,000 buckets over HTTP, by GET and by the UI's POST /series; 20 series of
one key across runs in one POST (the UI's chart of a key over 20 runs); the runs table with
latest metrics for every run (1,001: the big runs plus 900 runs of 10 keys x 10 steps);
and freshness: how long after an ack a point is visible to queries (p50/p99 over probes).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import urllib.request
from array import array
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import Server, table
from throughput import curve


def _median_ms(fn: Any, repeats: int) -> float:
    fn()  # warm caches, as a user's second look would
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=120) as response:
        return json.loads(response.read())


def _post(url: str, body: dict[str, Any]) -> Any:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=120) as response:
        return json.loads(response.read())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--medium", action="store_true", help="fewer 100k-step runs")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    runs, keys, steps, long_steps = (
        (10, 2, 5_000, 50_000)
        if args.smoke
        else (20, 5, 100_000, 5_000_000)
        if args.medium
        else (100, 10, 100_000, 5_000_000)
    )
    # Small runs so the runs table holds >= 1,000 runs (issue 4: "1,000 runs <= 100 ms").
    small_runs, small_keys, small_steps = (90, 10, 10) if args.smoke else (900, 10, 10)

    import duckdb

    import steppe

    with tempfile.TemporaryDirectory(prefix="steppe-query-bench-") as tmp:
        data_dir = Path(tmp) / "data"
        server = Server.start(data_dir)
        try:
            client = steppe.Client(server.http_url)
            exp = client.create_experiment("bench")
            t0 = time.perf_counter()
            series = {k: curve(steps, seed=k) for k in range(keys)}
            step_col = array("q", range(steps))
            run_ids = []
            for r in range(runs):
                run = client.create_run(exp, run_name=f"run-{r}")
                run_ids.append(run.info.run_id)
                client.log_param(run.info.run_id, "index", r)
                for k in range(keys):
                    client.log_series(run.info.run_id, f"metric_{k}", series[k], steps=step_col)
                client.flush()
            long_run = client.create_run(exp, run_name="long").info.run_id
            client.log_series(
                long_run, "loss", curve(long_steps, seed=99), steps=array("q", range(long_steps))
            )
            client.flush()
            small_step_col = array("q", range(small_steps))
            for r in range(small_runs):
                small = client.create_run(exp, run_name=f"small-{r}").info.run_id
                for k in range(small_keys):
                    client.log_series(
                        small, f"metric_{k}", curve(small_steps, seed=k), steps=small_step_col
                    )
            client.flush()
            total = runs * keys * steps + long_steps + small_runs * small_keys * small_steps
            load_s = time.perf_counter() - t0
            print(f"loaded {total:,} points in {load_s:.1f} s", file=sys.stderr)
            # Let the server flush its tail so the floor (files only) sees the same data.
            server.stop()
            server = Server.start(data_dir)
            client = steppe.Client(server.http_url)
            files = [str(p) for p in sorted((data_dir / "metrics").glob("part-*.parquet"))]
            floor = duckdb.connect()
            floor.execute(f"CREATE VIEW m AS SELECT * FROM read_parquet({files!r})")
            rid = run_ids[0]
            rows: list[dict[str, Any]] = []

            def row(name: str, ms: float, floor_ms: float, target: str) -> None:
                rows.append(
                    {
                        "question": name,
                        "steppe_ms": ms,
                        "duckdb_floor_ms": floor_ms,
                        "x_floor": ms / floor_ms if floor_ms else float("nan"),
                        "target": target,
                    }
                )

            row(
                f"history {steps:,} points (client)",
                _median_ms(lambda: client.get_metric_history(rid, "metric_0"), args.repeats),
                _median_ms(
                    lambda: floor.execute(
                        "SELECT step, value, timestamp FROM m WHERE run_id = ? AND key = ? "
                        "ORDER BY step, timestamp",
                        [rid, "metric_0"],
                    ).fetchall(),
                    args.repeats,
                ),
                "<= 50 ms",
            )
            url = f"{server.http_url}/api/steppe/v1/series?run_id={long_run}&key=loss&buckets=1000"
            row(
                f"{long_steps:,}-step series as 1,000 buckets (HTTP)",
                _median_ms(lambda: _get(url), args.repeats),
                _median_ms(
                    lambda: floor.execute(
                        "SELECT floor((step - 0) * 1000 / ?) AS b, min(value), max(value), "
                        "avg(value), arg_min(value, step), arg_max(value, step), count(*) FROM m "
                        "WHERE run_id = ? AND key = 'loss' GROUP BY b ORDER BY b",
                        [long_steps, long_run],
                    ).fetchall(),
                    args.repeats,
                ),
                "<= 100 ms",
            )
            post_url = f"{server.http_url}/api/steppe/v1/series"
            one = {"series": [{"run_id": long_run, "key": "loss"}], "buckets": 1000}
            row(
                f"{long_steps:,}-step series as 1,000 buckets (HTTP POST, the UI's call)",
                _median_ms(lambda: _post(post_url, one), args.repeats),
                _median_ms(
                    lambda: floor.execute(
                        "SELECT floor((step - 0) * 1000 / ?) AS b, min(value), max(value), "
                        "avg(value), arg_min(value, step), arg_max(value, step), count(*) FROM m "
                        "WHERE run_id = ? AND key = 'loss' GROUP BY b ORDER BY b",
                        [long_steps, long_run],
                    ).fetchall(),
                    args.repeats,
                ),
                "<= 100 ms",
            )
            chosen = run_ids[:20]
            many = {"series": [{"run_id": r, "key": "metric_0"} for r in chosen], "buckets": 1000}
            row(
                f"{len(chosen)} series x {steps:,} steps as 1,000 buckets each (HTTP POST)",
                _median_ms(lambda: _post(post_url, many), args.repeats),
                _median_ms(
                    lambda: floor.execute(
                        "SELECT run_id, floor(step * 1000 / ?) AS b, min(value), max(value), "
                        "avg(value), arg_min(value, step), arg_max(value, step), count(*) FROM m "
                        f"WHERE run_id IN ({', '.join('?' * len(chosen))}) AND key = 'metric_0' "
                        "GROUP BY run_id, b ORDER BY run_id, b",
                        [steps, *chosen],
                    ).fetchall(),
                    args.repeats,
                ),
                "<= 300 ms",
            )
            runs_url = f"{server.http_url}/api/steppe/v1/experiments/{exp}/runs"
            row(
                f"runs table, latest metrics, {runs + 1 + small_runs:,} runs (HTTP)",
                _median_ms(lambda: _get(runs_url), args.repeats),
                _median_ms(
                    lambda: floor.execute(
                        "SELECT run_id, key, arg_max(value, (step, timestamp)), min(value), "
                        "max(value), count(*) FROM m GROUP BY run_id, key"
                    ).fetchall(),
                    args.repeats,
                ),
                "<= 100 ms",
            )
            # Freshness: log one point, wait for its ack, then poll until a query shows it.
            probe = client.create_run(exp, run_name="probe").info.run_id
            lags = []
            for i in range(20 if args.smoke else 100):
                client.log_metric(probe, "probe", float(i), step=i)
                client.flush()
                acked = time.perf_counter()
                while True:
                    got = _get(f"{server.http_url}/api/steppe/v1/runs/{probe}")
                    latest = got["run"]["data"]["metrics"].get("probe")
                    if latest and latest["step"] == i:
                        break
                lags.append((time.perf_counter() - acked) * 1000)
            lags.sort()
            rows.append(
                {
                    "question": "ack -> visible p50 / p99 (ms)",
                    "steppe_ms": lags[len(lags) // 2],
                    "duckdb_floor_ms": lags[min(len(lags) - 1, int(0.99 * len(lags)))],
                    "x_floor": float("nan"),
                    "target": "p99 <= 1000 ms",
                }
            )
        finally:
            server.stop()
    if args.json:
        for r in rows:
            print(json.dumps(r))
    print(table(rows, ["question", "steppe_ms", "duckdb_floor_ms", "x_floor", "target"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
