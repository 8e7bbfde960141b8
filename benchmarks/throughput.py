"""Ingest throughput benchmark (issue 3): W1 per-call, W1 dict, W1 bulk, W2 concurrent,
and the same points through MLflow's own client into a local sqlite store, in one run.

    python benchmarks/throughput.py              # full sizes (minutes)
    python benchmarks/throughput.py --smoke      # seconds; CI checks counts, never speed
    python benchmarks/throughput.py --only w1-call,mlflow

Each workload runs in its own client process against a fresh steppe server; reported:
end-to-end points/s (first log call until every point is acked and queryable), the
training loop's cost per call (median/p99/p99.9, timer overhead subtracted), client and
server peak RSS, server CPU seconds, and bytes on disk per point.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from array import array
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import Server, cpu_seconds, disk_bytes, peak_rss_mib, percentiles_ns, table

WORKLOADS = ["w1-call", "w1-dict", "w1-bulk", "w2", "w1-down", "mlflow"]


def curve(steps: int, seed: int) -> array:  # type: ignore[type-arg]
    """A realistic, incompressible-ish loss curve: decay plus noise plus rare spikes."""
    rng = random.Random(seed)
    out = array("d", bytes(8 * steps))
    for s in range(steps):
        spike = 5.0 if rng.random() < 1e-4 else 0.0
        out[s] = 2.0 / (1.0 + s * 1e-4) + rng.gauss(0.0, 0.05) + spike
    return out


def _timer_overhead_ns(n: int = 200_000) -> float:
    pc = time.perf_counter_ns
    samples = array("q", bytes(8 * n))
    for i in range(n):
        t0 = pc()
        samples[i] = pc() - t0
    return float(sorted(samples)[n // 2])


# --- client processes -------------------------------------------------------------------


def client_w1(uri: str, mode: str, keys: int, steps: int) -> dict[str, Any]:
    import steppe

    steppe.set_tracking_uri(uri)
    names = [f"metric_{k}" for k in range(keys)]
    series = [curve(steps, seed=k) for k in range(keys)]
    pairs = list(zip(names, series, strict=True))
    run = steppe.start_run(run_name=f"bench-{mode}")
    run_id = run.info.run_id
    overhead = _timer_overhead_ns()
    pc = time.perf_counter_ns
    log_metric = steppe.log_metric
    log_metrics = steppe.log_metrics
    latencies = array("q", bytes(8 * steps))
    j = 0
    start = time.perf_counter()
    if mode == "call":
        # One call in ten (the first key of each step) is timed, so the timer's own cost
        # barely touches the end-to-end rate; the others run bare.
        (first, first_values), rest = pairs[0], pairs[1:]
        for step in range(steps):
            value = first_values[step]
            t0 = pc()
            log_metric(first, value, step)
            latencies[j] = pc() - t0
            j += 1
            for name, values in rest:
                log_metric(name, values[step], step)
    else:
        for step in range(steps):
            row = {name: values[step] for name, values in pairs}
            t0 = pc()
            log_metrics(row, step=step)
            latencies[j] = pc() - t0
            j += 1
    loop_s = time.perf_counter() - start
    steppe.flush()
    acked_s = time.perf_counter() - start
    steppe.end_run()
    return {
        "run_ids": [run_id],
        "start": start,
        "loop_s": loop_s,
        "acked_s": acked_s,
        "points": steps * keys,
        "timed_calls": j,
        **percentiles_ns(latencies[:j], overhead),
        "client_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "wall_start": time.time() - (time.perf_counter() - start),
    }


def client_down(spool: str, keys: int, steps: int) -> dict[str, Any]:
    """W1 per-call with no server at all: what the training loop pays while it is down."""
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.update(
        STEPPE_SPOOL_DIR=spool, STEPPE_CONNECT_TIMEOUT_S="0.5", STEPPE_FLUSH_TIMEOUT_S="0"
    )
    import steppe

    steppe.set_tracking_uri(f"http://127.0.0.1:{port}")
    names = [f"metric_{k}" for k in range(keys)]
    series = [curve(steps, seed=k) for k in range(keys)]
    (first, first_values), rest = (
        (names[0], series[0]),
        list(zip(names[1:], series[1:], strict=True)),
    )
    steppe.start_run()
    overhead = _timer_overhead_ns()
    pc = time.perf_counter_ns
    log_metric = steppe.log_metric
    latencies = array("q", bytes(8 * steps))
    start = time.perf_counter()
    for step in range(steps):
        value = first_values[step]
        t0 = pc()
        log_metric(first, value, step)
        latencies[step] = pc() - t0
        for name, values in rest:
            log_metric(name, values[step], step)
    loop_s = time.perf_counter() - start
    from steppe.connection import connect

    sender = connect(steppe.get_tracking_uri()).sender
    sender.encode_pending()
    spooled = sum(p.stat().st_size for p in Path(spool).rglob("*.spool"))
    return {
        "points": steps * keys,
        "loop_s": loop_s,
        "unacked": sender.unacked_points(),
        "spool_mib": spooled / 2**20,
        **percentiles_ns(latencies, overhead),
        "client_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def client_bulk(uri: str, keys: int, steps: int) -> dict[str, Any]:
    import steppe

    steppe.set_tracking_uri(uri)
    run = steppe.start_run(run_name="bench-bulk")
    step_col = array("q", range(steps))
    values = {f"metric_{k}": curve(steps, seed=k) for k in range(keys)}
    start = time.perf_counter()
    steppe.log_metrics(values, step=step_col)
    loop_s = time.perf_counter() - start
    steppe.flush()
    acked_s = time.perf_counter() - start
    steppe.end_run()
    return {
        "run_ids": [run.info.run_id],
        "loop_s": loop_s,
        "acked_s": acked_s,
        "points": steps * keys,
        "calls": keys,
        "client_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "wall_start": time.time() - (time.perf_counter() - start),
    }


def client_mlflow(store_dir: str, keys: int, steps: int) -> dict[str, Any]:
    import logging

    logging.disable(logging.WARNING)
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{store_dir}/mlflow.db")
    exp = client.create_experiment("bench", artifact_location=f"{store_dir}/artifacts")
    run = client.create_run(exp)
    names = [f"metric_{k}" for k in range(keys)]
    series = [curve(steps, seed=k) for k in range(keys)]
    now = int(time.time() * 1000)
    start = time.perf_counter()
    batch: list[Metric] = []
    for step in range(steps):
        for name, values in zip(names, series, strict=True):
            batch.append(Metric(name, values[step], now, step))
            if len(batch) == 1000:
                client.log_batch(run.info.run_id, metrics=batch)
                batch = []
    if batch:
        client.log_batch(run.info.run_id, metrics=batch)
    acked_s = time.perf_counter() - start
    return {
        "points": steps * keys,
        "loop_s": acked_s,
        "acked_s": acked_s,
        "client_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def _child(args: list[str]) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, __file__, "--child", *args],
        capture_output=True,
        text=True,
        timeout=3600,
    )
    if out.returncode != 0:
        raise RuntimeError(f"client {args} failed:\n{out.stderr}")
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


# --- the parent -------------------------------------------------------------------------


def run_steppe(name: str, keys: int, steps: int, procs: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="steppe-bench-") as tmp:
        server = Server.start(Path(tmp) / "data")
        try:
            cpu0 = cpu_seconds(server.proc.pid)
            t0 = time.time()
            if name == "w2":
                children = [
                    subprocess.Popen(
                        [
                            sys.executable,
                            __file__,
                            "--child",
                            "w1-dict",
                            server.http_url,
                            str(keys),
                            str(steps),
                        ],
                        stdout=subprocess.PIPE,
                        text=True,
                    )
                    for _ in range(procs)
                ]
                results = []
                for child in children:
                    out, _ = child.communicate(timeout=3600)
                    if child.returncode != 0:
                        raise RuntimeError("a W2 client failed")
                    results.append(json.loads(out.strip().splitlines()[-1]))
                run_ids = [r for res in results for r in res["run_ids"]]
                expected = keys * steps * procs
                client = {
                    "client_rss_mib": max(r["client_rss_mib"] for r in results),
                    "median_ns": max(r["median_ns"] for r in results),
                    "p99_ns": max(r["p99_ns"] for r in results),
                    "p999_ns": max(r["p999_ns"] for r in results),
                }
            else:
                mode = name.split("-")[1]
                result = _child(
                    [name, server.http_url, str(keys), str(steps)]
                    if mode != "bulk"
                    else ["w1-bulk", server.http_url, str(keys), str(steps)]
                )
                results = [result]
                run_ids = result["run_ids"]
                expected = keys * steps
                client = {
                    k: result.get(k) for k in ("client_rss_mib", "median_ns", "p99_ns", "p999_ns")
                }
            stored = sum(server.stored_points(r) for r in run_ids)
            elapsed = time.time() - min(r["wall_start"] for r in results)
            del t0
            row: dict[str, Any] = {
                "workload": name,
                "points": expected,
                "stored": stored,
                "points_per_s": expected / elapsed,
                **client,
                "server_rss_mib": peak_rss_mib(server.proc.pid),
                "server_cpu_s": cpu_seconds(server.proc.pid) - cpu0,
            }
        finally:
            server.stop()
        row["bytes_per_point"] = disk_bytes(Path(tmp) / "data") / max(1, row["stored"])
        return row


def run_down(keys: int, steps: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="steppe-down-") as tmp:
        result = _child(["w1-down", tmp, str(keys), str(steps)])
    return {
        "workload": "w1-call, server down",
        "points": result["points"],
        "stored": result["points"] if result["unacked"] == result["points"] else -1,
        "points_per_s": result["points"] / result["loop_s"],
        **{k: result[k] for k in ("median_ns", "p99_ns", "p999_ns", "client_rss_mib")},
    }


def run_mlflow(keys: int, steps: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="mlflow-bench-") as tmp:
        result = _child(["mlflow", tmp, str(keys), str(steps)])
    return {
        "workload": "mlflow log_batch(1000) sqlite",
        "points": result["points"],
        "stored": result["points"],
        "points_per_s": result["points"] / result["acked_s"],
        "client_rss_mib": result["client_rss_mib"],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, for CI")
    parser.add_argument("--only", default=",".join(WORKLOADS), help="comma-separated workloads")
    parser.add_argument("--json", action="store_true", help="print rows as JSON lines too")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, target, keys, steps = args.child
        if kind == "mlflow":
            result = client_mlflow(target, int(keys), int(steps))
        elif kind == "w1-down":
            result = client_down(target, int(keys), int(steps))
            print(json.dumps(result), flush=True)
            os._exit(0)  # skip the exit-time flush: there is no server to wait for
        elif kind == "w1-bulk":
            result = client_bulk(target, int(keys), int(steps))
        else:
            result = client_w1(target, kind.split("-")[1], int(keys), int(steps))
        print(json.dumps(result))
        return 0

    smoke = args.smoke
    sizes = {  # (keys, steps, processes)
        "w1-call": (10, 2_000 if smoke else 100_000, 1),
        "w1-dict": (10, 2_000 if smoke else 100_000, 1),
        "w1-bulk": (10, 10_000 if smoke else 1_000_000, 1),
        "w2": (10, 1_000 if smoke else 200_000, 2 if smoke else 8),
        "w1-down": (10, 2_000 if smoke else 100_000, 1),
        "mlflow": (10, 200 if smoke else 10_000, 1),
    }
    rows = []
    for name in args.only.split(","):
        keys, steps, procs = sizes[name]
        print(
            f"running {name}: {keys} keys x {steps:,} steps x {procs} process(es)",
            file=sys.stderr,
            flush=True,
        )
        if name == "mlflow":
            row = run_mlflow(keys, steps)
        elif name == "w1-down":
            row = run_down(keys, steps)
        else:
            row = run_steppe(name, keys, steps, procs)
        rows.append(row)
        if args.json:
            print(json.dumps(row), flush=True)
    baseline = next((r for r in rows if r["workload"].startswith("mlflow")), None)
    for row in rows:
        if baseline and row is not baseline:
            row["x_mlflow"] = row["points_per_s"] / baseline["points_per_s"]
    print(
        table(
            rows,
            [
                "workload",
                "points",
                "stored",
                "points_per_s",
                "x_mlflow",
                "median_ns",
                "p99_ns",
                "p999_ns",
                "client_rss_mib",
                "server_rss_mib",
                "server_cpu_s",
                "bytes_per_point",
            ],
        )
    )
    lost = [r["workload"] for r in rows if r["stored"] != r["points"]]
    if lost:
        print(f"MISMATCH: stored != logged for {lost}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    os.environ.pop("STEPPE_TRACKING_URI", None)
    raise SystemExit(main())
