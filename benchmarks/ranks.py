"""Distributed-training benchmark (issue 14): N ranks x 50 keys per step into one run, against
the same points sent by N independent single-process runs (the baseline), in one run.

    python benchmarks/ranks.py                  # 8 and 32 writer processes (a minute or two)
    python benchmarks/ranks.py --smoke          # seconds; CI checks counts, never speed
    python benchmarks/ranks.py --ranks 8 --steps 4000

Each case starts a fresh steppe server and N client processes at once (with torchrun's
variables for the shared run, none for the baseline). Reported: points/s at the server (first
client start until every point is acked and stored), the training loop's cost of one
``log_metrics`` of 50 keys (median / p99 over every rank's steps), server CPU seconds and peak
RSS, and the shared run's points/s as a ratio of the baseline's.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import Server, cpu_seconds, peak_rss_mib, table

KEYS = 50


def child(uri: str, keys: int, steps: int) -> dict[str, Any]:
    """One rank (or one independent process): ``keys`` keys per step for ``steps`` steps."""
    import steppe

    steppe.set_tracking_uri(uri)
    wall_start = time.time()
    names = [f"layer{i:02d}/grad_norm" for i in range(keys)]
    with steppe.start_run() as run:
        rank = int(os.environ.get("RANK", "0"))
        costs = []
        pc = time.perf_counter_ns
        for step in range(steps):
            values = {name: float(step + rank + i) for i, name in enumerate(names)}
            t0 = pc()
            steppe.log_metrics(values, step=step)
            costs.append(pc() - t0)
    # end_run (the with block) waited for every ack.
    costs.sort()
    return {
        "run_id": run.info.run_id,
        "wall_start": wall_start,
        "median_us": costs[len(costs) // 2] / 1000,
        "p99_us": costs[min(len(costs) - 1, int(0.99 * len(costs)))] / 1000,
    }


def run_case(ranks: int, steps: int, shared: bool) -> dict[str, Any]:
    job_id = uuid.uuid4().hex
    with tempfile.TemporaryDirectory(prefix="steppe-ranks-") as tmp:
        server = Server.start(Path(tmp) / "data")
        try:
            cpu0 = cpu_seconds(server.proc.pid)
            base = {k: v for k, v in os.environ.items() if not k.startswith(("STEPPE_", "MLFLOW_"))}
            children = []
            for rank in range(ranks):
                env = dict(base)
                if shared:
                    env.update(
                        TORCHELASTIC_RUN_ID=job_id,
                        TORCHELASTIC_RESTART_COUNT="0",
                        RANK=str(rank),
                        LOCAL_RANK=str(rank),
                        WORLD_SIZE=str(ranks),
                        GROUP_RANK="0",
                        LOCAL_WORLD_SIZE=str(ranks),
                        GROUP_WORLD_SIZE="1",
                    )
                children.append(
                    subprocess.Popen(
                        [
                            sys.executable,
                            __file__,
                            "--child",
                            server.http_url,
                            str(KEYS),
                            str(steps),
                        ],
                        stdout=subprocess.PIPE,
                        env=env,
                        text=True,
                    )
                )
            results = []
            for proc in children:
                out, _ = proc.communicate(timeout=3600)
                if proc.returncode != 0:
                    raise RuntimeError("a rank failed")
                results.append(json.loads(out.strip().splitlines()[-1]))
            done = time.time()
            run_ids = sorted({r["run_id"] for r in results})
            stored = sum(server.stored_points(run_id) for run_id in run_ids)
            expected = ranks * KEYS * steps
            elapsed = done - min(r["wall_start"] for r in results)
            row: dict[str, Any] = {
                "case": f"{ranks} ranks, {'one run' if shared else 'a run each'}",
                "ranks": ranks,
                "runs": len(run_ids),
                "points": expected,
                "stored": stored,
                "points_per_s": expected / elapsed,
                "log_median_us": max(r["median_us"] for r in results),
                "log_p99_us": max(r["p99_us"] for r in results),
                "server_cpu_s": cpu_seconds(server.proc.pid) - cpu0,
                "server_rss_mib": peak_rss_mib(server.proc.pid),
            }
            if shared:
                status = server.get(f"/api/steppe/v1/runs/{run_ids[0]}")["run"]["info"]["status"]
                row["status"] = status
        finally:
            server.stop()
    return row


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, for CI")
    parser.add_argument("--ranks", default="8,32", help="comma-separated writer process counts")
    parser.add_argument("--steps", type=int, default=2000, help="steps per rank")
    parser.add_argument("--json", action="store_true", help="print rows as JSON lines too")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        uri, keys, steps = args.child
        print(json.dumps(child(uri, int(keys), int(steps))))
        return
    counts = [2, 3] if args.smoke else [int(n) for n in args.ranks.split(",")]
    steps = 20 if args.smoke else args.steps
    rows = []
    for ranks in counts:
        print(f"running {ranks} ranks x {KEYS} keys x {steps} steps", file=sys.stderr, flush=True)
        baseline = run_case(ranks, steps, shared=False)
        shared = run_case(ranks, steps, shared=True)
        shared["vs_baseline"] = shared["points_per_s"] / baseline["points_per_s"]
        rows += [shared, baseline]
    columns = [
        "case",
        "runs",
        "points",
        "stored",
        "points_per_s",
        "vs_baseline",
        "log_median_us",
        "log_p99_us",
        "server_cpu_s",
        "server_rss_mib",
        "status",
    ]
    print(table(rows, columns))
    if args.json:
        for row in rows:
            print(json.dumps(row))


if __name__ == "__main__":
    main()
