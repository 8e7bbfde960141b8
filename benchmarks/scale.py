"""Object storage through the storage seam (steppe.ingest.storage): S3 requests per million
points for flushes and for a compaction, and read latency from S3 beside the local disk.

An S3-compatible server (moto's server mode) runs in this process on 127.0.0.1; every HTTP
request it serves is counted by method. Metrics files are written with steppe's own Parquet
writer (steppe.ingest.metrics_files) at ``--points-per-flush`` points each and uploaded with
``Storage.put_file``; the compaction reads them back through the filesystem and writes one
merged file. Reads are DuckDB over the same files: a 100k-point history of one series, and a
runs-table query (latest value of every series of ``--runs`` runs) over a LATEST_SCHEMA file,
each from the local disk (the baseline) and from S3, median of ``--repeat``.

This is the seam only, not a whole server on S3 (the ingestor still flushes to its data dir
in this branch): the counts are what each flush and compaction costs once it goes through it.

    python benchmarks/scale.py            # 1M points, 10 flushes
    python benchmarks/scale.py --smoke
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import statistics
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from steppe.ingest.layout import LATEST_SCHEMA, METRICS_SCHEMA
from steppe.ingest.metrics_files import sort_metrics, write_metrics_file
from steppe.ingest.storage import Storage, open_storage

_METHOD_RE = re.compile(r"(GET|PUT|POST|HEAD|DELETE) /")


class _Requests(logging.Handler):
    """Counts the requests moto's werkzeug server logs, by HTTP method."""

    def __init__(self) -> None:
        super().__init__()
        self.counts: Counter[str] = Counter()
        self.last = 0.0

    def emit(self, record: logging.LogRecord) -> None:
        # Non-200 answers (204 of a DELETE, 206 of a ranged GET) come wrapped in ANSI colours.
        match = _METHOD_RE.search(record.getMessage())
        if match:
            self.counts[match.group(1)] += 1
            self.last = time.monotonic()

    def take(self) -> dict[str, int]:
        """The counts since the last take. werkzeug logs a request after it answered it, so
        wait (up to 2 s) until no request was logged for 0.2 s: a phase's last requests must
        not be counted in the next one."""
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline and time.monotonic() - self.last < 0.2:
            time.sleep(0.02)
        counts = dict(self.counts)
        self.counts.clear()
        return counts


def _points(n: int, runs: int, keys: int, first_step: int) -> pa.Table:
    rng = np.random.default_rng(first_step)
    per_series = max(1, n // (runs * keys))
    run_ids = np.repeat([f"run{r:05d}" for r in range(runs)], keys * per_series)
    key_names = np.tile(np.repeat([f"k{k}" for k in range(keys)], per_series), runs)
    steps = np.tile(np.arange(first_step, first_step + per_series, dtype=np.int64), runs * keys)
    table = pa.table(
        {
            "run_id": run_ids,
            "key": key_names,
            "step": steps,
            "timestamp": 1_700_000_000_000 + steps,
            "value": rng.normal(size=len(steps)),
        },
        schema=METRICS_SCHEMA,
    )
    return sort_metrics(table)


def _median_ms(
    con: duckdb.DuckDBPyConnection, sql: str, params: list[object], repeat: int
) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        con.execute(sql, params).fetchall()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def _history_sql(storage: Storage, names: list[str]) -> tuple[duckdb.DuckDBPyConnection, str]:
    con = duckdb.connect()
    storage.register_duckdb(con)
    urls = ", ".join(f"'{storage.url(n)}'" for n in names)
    where = "WHERE run_id = ? AND key = ? ORDER BY step"
    return con, f"SELECT step, value FROM read_parquet([{urls}]) {where}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--points", type=int, default=1_000_000)
    parser.add_argument("--points-per-flush", type=int, default=100_000)
    parser.add_argument("--history-points", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=1_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.smoke:
        args.points, args.points_per_flush, args.history_points = 20_000, 5_000, 2_000
        args.runs, args.repeat = 50, 1

    from moto.server import ThreadedMotoServer

    requests = _Requests()
    logging.getLogger("werkzeug").addHandler(requests)
    logging.getLogger("werkzeug").setLevel(logging.INFO)
    logging.getLogger("werkzeug").propagate = False
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    rows: list[dict[str, object]] = []
    try:
        host, port = server.get_host_and_port()
        env = {
            "AWS_ENDPOINT_URL": f"http://{host}:{port}",
            "AWS_REGION": "us-east-1",
            "AWS_ACCESS_KEY_ID": "bench",
            "AWS_SECRET_ACCESS_KEY": "bench",
        }
        bucket = f"steppe-bench-{uuid.uuid4().hex[:8]}"
        with tempfile.TemporaryDirectory(prefix="steppe-scale-") as tmp:
            work = Path(tmp)
            s3 = open_storage(f"s3://{bucket}/steppe", work / "unused", env)
            import boto3

            boto3.client(
                "s3",
                endpoint_url=env["AWS_ENDPOINT_URL"],
                region_name="us-east-1",
                aws_access_key_id="bench",
                aws_secret_access_key="bench",
            ).create_bucket(Bucket=bucket)
            local = open_storage(None, work / "data")
            requests.take()

            # Flushes: one metrics file per flush, uploaded.
            names = []
            flushes = max(1, args.points // args.points_per_flush)
            for i in range(flushes):
                name = f"metrics/part-{i:012d}-{i:012d}.parquet"
                staged = work / "stage.parquet"
                write_metrics_file(_points(args.points_per_flush, 10, 10, i * 10_000), staged)
                s3.put_file(staged, name)
                local.put_file(staged, name)
                names.append(name)
            flush = requests.take()
            points = flushes * args.points_per_flush
            rows.append(_row("flush", flush, points, f"{flushes} files"))

            # Compaction: read every file through the filesystem, write one, delete the inputs.
            merged = pa.concat_tables(pq.read_table(s3.open_input(n)) for n in names)
            staged = work / "merged.parquet"
            write_metrics_file(sort_metrics(merged), staged)
            s3.put_file(staged, f"metrics/part-{0:012d}-{flushes - 1:012d}.parquet")
            for n in names:
                s3.delete(n)
            rows.append(_row("compaction", requests.take(), points, f"{flushes} -> 1 files"))

            # A 100k-point history: one series, one file.
            hist = "metrics/history.parquet"
            staged = work / "history.parquet"
            write_metrics_file(_points(args.history_points, 1, 1, 0), staged)
            s3.put_file(staged, hist)
            local.put_file(staged, hist)
            # The runs table: latest of every series of --runs runs.
            latest = pa.table(
                {
                    "run_id": [f"run{r:05d}" for r in range(args.runs) for _ in range(10)],
                    "key": [f"k{k}" for _ in range(args.runs) for k in range(10)],
                    "value": np.ones(args.runs * 10),
                    "step": np.zeros(args.runs * 10, dtype=np.int64),
                    "timestamp": np.zeros(args.runs * 10, dtype=np.int64),
                    "min": np.ones(args.runs * 10),
                    "max": np.ones(args.runs * 10),
                    "count": np.ones(args.runs * 10, dtype=np.int64),
                },
                schema=LATEST_SCHEMA,
            )
            pq.write_table(latest, work / "latest.parquet")
            s3.put_file(work / "latest.parquet", "latest.parquet")
            local.put_file(work / "latest.parquet", "latest.parquet")
            requests.take()
            for label, storage in (("local", local), ("s3", s3)):
                con, sql = _history_sql(storage, [hist])
                got = con.execute(sql, ["run00000", "k0"]).fetchall()
                assert len(got) == args.history_points, (len(got), args.history_points)
                history_ms = _median_ms(con, sql, ["run00000", "k0"], args.repeat)
                history_requests = _per_query(requests.take(), args.repeat + 1)
                runs_sql = (
                    f"SELECT run_id, list(struct_pack(key, value)) FROM "
                    f"read_parquet('{storage.url('latest.parquet')}') GROUP BY run_id"
                )
                assert len(con.execute(runs_sql).fetchall()) == args.runs
                runs_ms = _median_ms(con, runs_sql, [], args.repeat)
                runs_requests = _per_query(requests.take(), args.repeat + 1)
                rows.append(
                    {
                        "case": f"read {label}",
                        "history_points": args.history_points,
                        "history_ms": round(history_ms, 1),
                        "history_requests": history_requests,
                        "runs": args.runs,
                        "runs_table_ms": round(runs_ms, 1),
                        "runs_table_requests": runs_requests,
                    }
                )
            base = rows[-2]
            rows[-1]["history_ratio"] = round(
                float(rows[-1]["history_ms"]) / max(0.01, float(base["history_ms"])),
                1,  # type: ignore[arg-type]
            )
            rows[-1]["runs_table_ratio"] = round(
                float(rows[-1]["runs_table_ms"]) / max(0.01, float(base["runs_table_ms"])),
                1,  # type: ignore[arg-type]
            )
    finally:
        server.stop()
    for row in rows:
        print(json.dumps(row) if args.json else "  ".join(f"{k}={v}" for k, v in row.items()))
    return 0


def _per_query(counts: dict[str, int], queries: int) -> dict[str, float]:
    return {method: round(n / queries, 1) for method, n in sorted(counts.items())}


def _row(case: str, counts: dict[str, int], points: int, note: str) -> dict[str, object]:
    total = sum(counts.values())
    return {
        "case": case,
        "points": points,
        "requests": total,
        "by_method": counts,
        "requests_per_million_points": round(total * 1_000_000 / points, 1),
        "note": note,
    }


if __name__ == "__main__":
    sys.exit(main())
