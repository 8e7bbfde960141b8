"""Catalog queries per second with many concurrent runs: SQLite (the embedded default) vs
PostgreSQL (``--catalog postgresql://...``), through the Catalog itself, from N threads.

Each backend gets ``--runs`` RUNNING runs (created from the threads), then every thread loops
over its share of them doing what a tracking request does to the catalog: ``log_params`` and
``set_tags`` (what MLflow's log_batch writes there), ``get_run`` (a read), and now and then
``save_stream_watermarks`` (the store, after a flush). It prints calls per second per backend
and PostgreSQL's ratio against SQLite measured in the same run. PostgreSQL is a throwaway one
(initdb + pg_ctl on 127.0.0.1, fsync on, as a real one), started and stopped here.

    python benchmarks/catalog.py [--runs 1000] [--threads 16] [--rounds 3] [--smoke] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.harness import table  # noqa: E402
from steppe.ingest.catalog import open_catalog  # noqa: E402
from steppe.ingest.sql_catalog import SqlCatalog  # noqa: E402


def _threads(count: int, work: Callable[[int], int]) -> tuple[int, float]:
    """Run ``work(i)`` in ``count`` threads started together; (calls made, seconds)."""
    done = [0] * count
    start = threading.Barrier(count + 1)

    def body(i: int) -> None:
        start.wait()
        done[i] = work(i)

    threads = [threading.Thread(target=body, args=(i,), name=f"bench-{i}") for i in range(count)]
    for thread in threads:
        thread.start()
    start.wait()
    began = time.perf_counter()
    for thread in threads:
        thread.join()
    return sum(done), time.perf_counter() - began


def measure(catalog: SqlCatalog, runs: int, threads: int, rounds: int) -> dict[str, Any]:
    experiment_id = catalog.create_experiment(f"bench-{uuid.uuid4().hex[:8]}").experiment_id
    run_ids = [uuid.uuid4().hex for _ in range(runs)]

    def create(i: int) -> int:
        for run_id in run_ids[i::threads]:
            catalog.create_run(run_id, experiment_id, "", int(time.time() * 1000))
        return len(run_ids[i::threads])

    created, create_s = _threads(threads, create)

    def work(i: int) -> int:
        calls = 0
        for r in range(rounds):
            for n, run_id in enumerate(run_ids[i::threads]):
                catalog.log_params(run_id, [(f"p{r}", str(n)), (f"q{r}", "x")])
                catalog.set_tags(run_id, [("phase", f"round-{r}"), (f"t{r}", "y")])
                catalog.get_run(run_id)
                calls += 3
                if n % 10 == 0:
                    catalog.save_stream_watermarks({f"stream-{i}": r * runs + n + 1})
                    calls += 1
        return calls

    calls, work_s = _threads(threads, work)
    sample = catalog.get_run(run_ids[-1])
    assert len(sample.params) == 2 * rounds, sample.params  # every call landed
    return {
        "runs": created,
        "threads": threads,
        "create_runs_per_s": created / create_s,
        "calls": calls,
        "calls_per_s": calls / work_s,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3, help="passes over the runs per thread")
    parser.add_argument("--smoke", action="store_true", help="seconds: 40 runs, 4 threads")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.smoke:
        args.runs, args.threads, args.rounds = 40, 4, 1

    from tests.importing import start_postgres

    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="steppe-bench-catalog-") as tmp:
        sqlite = open_catalog(None, Path(tmp) / "catalog.db")
        assert isinstance(sqlite, SqlCatalog)
        try:
            rows.append(
                {"backend": "sqlite", **measure(sqlite, args.runs, args.threads, args.rounds)}
            )
        finally:
            sqlite.close()
        pg = start_postgres(fsync=True)
        if pg is None:
            print("PostgreSQL binaries or psycopg missing: sqlite only", file=sys.stderr)
        else:
            try:
                dsn = f"postgresql://postgres@127.0.0.1:{pg.port}/postgres"
                from steppe.ingest.postgres_catalog import PostgresCatalog

                postgres = PostgresCatalog(dsn, pool_size=args.threads)
                try:
                    rows.append(
                        {
                            "backend": "postgresql",
                            **measure(postgres, args.runs, args.threads, args.rounds),
                        }
                    )
                finally:
                    postgres.close()
            finally:
                pg.stop()
    base = rows[0]["calls_per_s"]
    for row in rows:
        row["ratio_vs_sqlite"] = row["calls_per_s"] / base
    if args.json:
        for row in rows:
            print(json.dumps(row))
    else:
        columns = ["backend", "runs", "threads", "create_runs_per_s", "calls", "calls_per_s"]
        print(table(rows, [*columns, "ratio_vs_sqlite"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
