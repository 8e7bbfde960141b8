"""Import speed: `steppe import` of a generated MLflow sqlite store and a TensorBoard log,
in points/s end to end (read, stream, WAL, acked), beside a baseline read in the same run:
mlflow's own reader (``MlflowClient.get_metric_history`` on the store) and tensorboard's
``EventAccumulator`` (every scalar kept), when installed.

    python benchmarks/import_speed.py [--points 10000000] [--baseline-points 1000000] [--json]

The stores are written fast and directly: mlflow creates the database schema and the runs,
then the points go in with one bulk INSERT; the event file is framed by steppe's own
TFRecord writer (one scalar per event, as TensorBoard's writers do). The baselines read at
most ``--baseline-points`` (a rate, not a total: mlflow's reader at 10M points takes long).
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import Server, table

RUNS = 10
KEYS = 10
T0_MS = 1_700_000_000_000


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("STEPPE_", "MLFLOW_"))}
    env["GIT_PYTHON_REFRESH"] = "quiet"
    return env


def make_mlflow_store(path: Path, points: int) -> list[str]:
    """An MLflow sqlite store: RUNS runs x KEYS keys, ``points`` points in all."""
    uri = f"sqlite:///{path}"
    code = (
        "import json, sys\n"
        "from mlflow import MlflowClient\n"
        "c = MlflowClient(sys.argv[1])\n"
        "e = c.create_experiment('bench')\n"
        f"ids = [c.create_run(e, run_name=f'r{{i}}').info.run_id for i in range({RUNS})]\n"
        "print(json.dumps(ids))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, uri], capture_output=True, text=True, env=_env(), check=True
    )
    ids: list[str] = json.loads(done.stdout.strip().splitlines()[-1])
    per_series = points // (RUNS * KEYS)
    db = sqlite3.connect(path)
    with db:
        db.execute("PRAGMA journal_mode=OFF")
        db.execute("PRAGMA synchronous=OFF")

        def rows() -> Any:
            for run_id in ids:
                for k in range(KEYS):
                    key = f"metric_{k}"
                    for step in range(per_series):
                        yield (key, step * 0.001 + k, T0_MS + step, run_id, step, 0)

        db.executemany(
            "INSERT INTO metrics (key, value, timestamp, run_uuid, step, is_nan) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            rows(),
        )
    db.close()
    return ids


def make_tensorboard_log(root: Path, points: int) -> None:
    """RUNS run folders, KEYS tags, one scalar per event (steppe's TFRecord framing)."""
    from steppe.importers.tfevents import encode_file_version, encode_scalar_event
    from steppe.importers.tfrecord import frame

    per_series = points // (RUNS * KEYS)
    for r in range(RUNS):
        folder = root / f"run_{r}"
        folder.mkdir(parents=True)
        with (folder / "events.out.tfevents.1700000000.bench").open("wb") as f:
            f.write(frame(encode_file_version(1_700_000_000.0)))
            for step in range(per_series):
                wall = 1_700_000_000.0 + step * 0.001
                f.write(
                    b"".join(
                        frame(encode_scalar_event(wall, step, f"metric_{k}", step * 0.5 + k))
                        for k in range(KEYS)
                    )
                )


def steppe_import(kind: str, source: str, url: str, tmp: Path) -> dict[str, Any]:
    report = tmp / f"report-{kind}.json"
    started = time.perf_counter()
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "steppe",
            "import",
            kind,
            source,
            "--tracking-uri",
            url,
            "--no-progress",
            "--report",
            str(report),
        ],
        capture_output=True,
        text=True,
        env=_env(),
    )
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"steppe import {kind} failed:\n{done.stderr[-3000:]}")
    data: dict[str, Any] = json.loads(report.read_text())
    data["wall_s"] = elapsed
    return data


def mlflow_baseline(path: Path, ids: list[str], limit: int) -> float | None:
    """Points/s of mlflow's own reader of the store (get_metric_history per run and key)."""
    code = (
        "import sys, time\n"
        "from mlflow import MlflowClient\n"
        "c = MlflowClient(sys.argv[1])\n"
        "limit = int(sys.argv[2]); n = 0\n"
        "t = time.perf_counter()\n"
        "for run_id in sys.argv[3:]:\n"
        f"    for k in range({KEYS}):\n"
        "        n += len(c.get_metric_history(run_id, f'metric_{k}'))\n"
        "        if n >= limit: break\n"
        "    if n >= limit: break\n"
        "print(n / (time.perf_counter() - t))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, f"sqlite:///{path}", str(limit), *ids],
        capture_output=True,
        text=True,
        env=_env(),
    )
    return float(done.stdout.strip().splitlines()[-1]) if done.returncode == 0 else None


def tensorboard_baseline(root: Path, limit: int) -> float | None:
    """Points/s of tensorboard's EventAccumulator keeping every scalar (size_guidance 0)."""
    code = (
        "import sys, time, os\n"
        "from tensorboard.backend.event_processing.event_accumulator import EventAccumulator\n"
        "limit = int(sys.argv[2]); n = 0\n"
        "t = time.perf_counter()\n"
        "for d in sorted(os.listdir(sys.argv[1])):\n"
        "    acc = EventAccumulator(os.path.join(sys.argv[1], d), size_guidance={'scalars': 0})\n"
        "    acc.Reload()\n"
        "    n += sum(len(acc.Scalars(tag)) for tag in acc.Tags()['scalars'])\n"
        "    if n >= limit: break\n"
        "print(n / (time.perf_counter() - t))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(root), str(limit)],
        capture_output=True,
        text=True,
        env=_env(),
    )
    return float(done.stdout.strip().splitlines()[-1]) if done.returncode == 0 else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--points", type=int, default=10_000_000)
    parser.add_argument("--baseline-points", type=int, default=1_000_000)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="steppe-bench-import-") as tmp_name:
        tmp = Path(tmp_name)
        server = Server.start(tmp / "steppe-data")
        try:
            started = time.perf_counter()
            db = tmp / "mlflow.db"
            ids = make_mlflow_store(db, args.points)
            made_s = time.perf_counter() - started
            report = steppe_import("mlflow", f"sqlite:///{db}", server.http_url, tmp)
            base = mlflow_baseline(db, ids, min(args.baseline_points, args.points))
            rows.append(_row("mlflow sqlite", report, base, "mlflow get_metric_history", made_s))

            started = time.perf_counter()
            logdir = tmp / "tb"
            make_tensorboard_log(logdir, args.points)
            made_s = time.perf_counter() - started
            report = steppe_import("tensorboard", str(logdir), server.http_url, tmp)
            base = tensorboard_baseline(logdir, min(args.baseline_points, args.points))
            rows.append(_row("tensorboard", report, base, "EventAccumulator", made_s))
        finally:
            server.stop()
    if args.json:
        for row in rows:
            print(json.dumps(row))
    else:
        print(
            table(
                rows,
                [
                    "source",
                    "points",
                    "stored",
                    "points_per_s",
                    "baseline",
                    "baseline_points_per_s",
                    "ratio",
                    "generate_s",
                    "import_s",
                    "ok",
                ],
            )
        )


def _row(
    name: str, report: dict[str, Any], base: float | None, base_name: str, made_s: float
) -> dict[str, Any]:
    points = report["points"]["source"]
    rate = points / report["wall_s"]
    return {
        "source": name,
        "points": points,
        "stored": report["points"]["in_steppe"],
        "points_per_s": round(rate),
        "baseline": base_name if base is not None else f"{base_name} (not installed)",
        "baseline_points_per_s": round(base) if base is not None else None,
        "ratio": round(rate / base, 2) if base else None,
        "generate_s": round(made_s, 1),
        "import_s": round(report["wall_s"], 2),
        "ok": report["ok"],
    }


if __name__ == "__main__":
    main()
