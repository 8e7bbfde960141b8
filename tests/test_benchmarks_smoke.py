"""Each benchmark runs at a smoke size: it completes and its counts add up (never its speed)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import clean_env

ROOT = Path(__file__).resolve().parents[1]


def test_throughput_benchmark_smoke() -> None:
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "throughput.py"),
            "--smoke",
            "--json",
            "--only",
            "w1-call,w1-dict,w1-bulk,w2",
        ],
        capture_output=True,
        text=True,
        timeout=110,
        env=clean_env(),
    )
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert [r["workload"] for r in rows] == ["w1-call", "w1-dict", "w1-bulk", "w2"]
    for row in rows:
        assert row["stored"] == row["points"] > 0
        assert row["points_per_s"] > 0 and row["bytes_per_point"] > 0


def test_soak_benchmark_smoke() -> None:
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "soak.py"),
            "--duration-s",
            "8",
            "--clients",
            "2",
            "--kill-every-s",
            "3",
            "--points-per-s",
            "20000",
        ],
        capture_output=True,
        text=True,
        timeout=110,
        env=clean_env(),
    )
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    header, values = done.stdout.strip().splitlines()[-2:]
    row = dict(zip(header.split(), values.split(), strict=True))
    assert int(row["kills"]) >= 2
    assert int(row["sent"]) == int(row["stored"]) > 0
    assert row["lost"] == "0" and row["duplicated"] == "0"


def test_query_benchmark_smoke() -> None:
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "query.py"),
            "--smoke",
            "--json",
            "--repeats",
            "2",
        ],
        capture_output=True,
        text=True,
        timeout=110,
        env=clean_env(),
    )
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert len(rows) == 6
    assert all(r["steppe_ms"] > 0 for r in rows)


def test_models_benchmark_smoke() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "models.py"), "--smoke", "--json"],
        capture_output=True,
        text=True,
        timeout=300,
        env=clean_env(),
    )
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert [r["client -> server"] for r in rows] == [
        "steppe -> steppe",
        "mlflow -> mlflow",
        "mlflow -> steppe",
    ]
    for row in rows:
        assert row["log_s"] > 0 and row["load_s"] > 0


def test_autolog_benchmark_smoke() -> None:
    # steppe only: MLflow's server takes most of a minute to start on a shared machine.
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "autolog.py"),
            "--smoke",
            "--json",
            "--only",
            "steppe",
        ],
        capture_output=True,
        text=True,
        timeout=110,
        env=clean_env(),
    )
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert [r["tool"] for r in rows] == ["steppe"]
    row = rows[0]
    assert row["fits"] == 3
    assert row["training_metrics"] == 7  # accuracy, precision, recall, f1, log_loss, roc_auc, score
    assert row["plain_fit_ms"] > 0 and row["autolog_fit_ms"] > 0
    # Autolog does real work inside fit (metrics, plots, uploads): it cannot be free.
    assert row["autolog_fit_ms"] > row["plain_fit_ms"]
