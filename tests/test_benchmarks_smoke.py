"""Each benchmark runs at a smoke size: it completes and its counts add up (never its speed)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import clean_env

ROOT = Path(__file__).resolve().parents[1]


def run_benchmark(
    script: str, *args: str, timeout: float = 110
) -> subprocess.CompletedProcess[str]:
    """Run ``benchmarks/<script>`` with ``args``; it must exit 0."""
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / script), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=clean_env(),
    )
    assert done.returncode == 0, done.stdout[-1000:] + done.stderr[-3000:]
    return done


def json_rows(script: str, *args: str, timeout: float = 110) -> list[dict[str, Any]]:
    """The JSON rows a benchmark prints with ``--json``."""
    done = run_benchmark(script, "--json", *args, timeout=timeout)
    return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]


def test_throughput_benchmark_smoke() -> None:
    rows = json_rows("throughput.py", "--smoke", "--only", "w1-call,w1-dict,w1-bulk,w2")
    assert [r["workload"] for r in rows] == ["w1-call", "w1-dict", "w1-bulk", "w2"]
    for row in rows:
        assert row["stored"] == row["points"] > 0
        assert row["points_per_s"] > 0 and row["bytes_per_point"] > 0


def test_soak_benchmark_smoke() -> None:
    done = run_benchmark(
        "soak.py",
        "--duration-s",
        "8",
        "--clients",
        "2",
        "--kill-every-s",
        "3",
        "--points-per-s",
        "20000",
    )
    header, values = done.stdout.strip().splitlines()[-2:]
    row = dict(zip(header.split(), values.split(), strict=True))
    assert int(row["kills"]) >= 2
    assert int(row["sent"]) == int(row["stored"]) > 0
    assert row["lost"] == "0" and row["duplicated"] == "0"


def test_query_benchmark_smoke() -> None:
    rows = json_rows("query.py", "--smoke", "--repeats", "2")
    assert len(rows) == 6
    assert all(r["steppe_ms"] > 0 for r in rows)


@pytest.mark.timeout(330)  # it starts MLflow's own server, which is slow on a busy machine
def test_models_benchmark_smoke() -> None:
    rows = json_rows("models.py", "--smoke", timeout=300)
    assert [r["client -> server"] for r in rows] == [
        "steppe -> steppe",
        "mlflow -> mlflow",
        "mlflow -> steppe",
    ]
    for row in rows:
        assert row["log_s"] > 0 and row["load_s"] > 0


def test_autolog_benchmark_smoke() -> None:
    # steppe only: MLflow's server takes most of a minute to start on a shared machine.
    rows = json_rows("autolog.py", "--smoke", "--only", "steppe")
    assert [r["tool"] for r in rows] == ["steppe"]
    row = rows[0]
    assert row["fits"] == 3
    assert row["training_metrics"] == 7  # accuracy, precision, recall, f1, log_loss, roc_auc, score
    assert row["plain_fit_ms"] > 0 and row["autolog_fit_ms"] > 0
    # Autolog does real work inside fit (metrics, plots, uploads): it cannot be free.
    assert row["autolog_fit_ms"] > row["plain_fit_ms"]


@pytest.mark.timeout(330)  # three processes importing torch and Lightning
def test_integrations_benchmark_smoke() -> None:
    # Lightning only (each mode is a process importing torch): the other frameworks run the
    # same driver. Skipped where the integration extras are not installed (CI's base install).
    pytest.importorskip("torch")
    pytest.importorskip("lightning")
    pytest.importorskip("mlflow")
    rows = json_rows("integrations.py", "--steps", "6", "--only", "lightning", timeout=300)
    assert [r["tool"] for r in rows] == ["none", "steppe", "mlflow"]
    for row in rows:
        assert row["steps"] == 6 and row["ms_per_step"] > 0
    # Both loggers stored every step's loss exactly once; the baseline logged nothing.
    assert [r["stored"] for r in rows] == [0, 6, 6]


@pytest.mark.timeout(330)  # a server, 500 runs and a browser on a busy machine
def test_ui_benchmark_smoke() -> None:
    pytest.importorskip("playwright")
    if not Path("/usr/bin/chromium").exists():
        pytest.skip("the UI benchmark drives Debian's /usr/bin/chromium")
    rows = json_rows("ui.py", "--smoke", "--repeats", "1", timeout=300)
    views = [r["view"] for r in rows]
    assert len(rows) == 14, views
    assert views[0] == "runs table of 500 runs: navigation -> first page"
    timed = [r for r in rows if r["target"].startswith("<")]
    assert len(timed) == 8
    assert all(r["ui_ms"] > 0 and r["http_floor_ms"] > 0 for r in timed), timed
    # The compare page's POST before the tiers (even grid) and after (aligned), as a ratio.
    after = [r for r in rows if "from the tiers (after)" in r["view"]]
    assert len(after) == 2 and all(r["x_floor"] > 0 for r in after), after
    assert 0 < rows[-1]["uplots_live"] <= 300 and rows[-1]["heap_mib"] > 0


def test_import_speed_benchmark_smoke() -> None:
    rows = json_rows("import_speed.py", "--points", "20000", "--baseline-points", "5000")
    assert [r["source"] for r in rows] == ["mlflow sqlite", "tensorboard"]
    for row in rows:
        assert row["stored"] == row["points"] == 20000 and row["ok"]
        assert row["points_per_s"] > 0


def test_tiers_benchmark_smoke() -> None:
    out = run_benchmark("tiers.py", "--smoke").stdout
    assert "50,000 points in 10 series" in out
    ratio = [line for line in out.splitlines() if "tiers / baseline" in line]
    assert len(ratio) == 1, out
    # The tier file is a small fraction of the metrics file it summarises.
    assert 0 < float(ratio[0].rsplit("size x", 1)[1]) < 0.5, out


def test_catalog_benchmark_smoke() -> None:
    rows = json_rows("catalog.py", "--smoke", timeout=200)
    assert rows[0]["backend"] == "sqlite"
    for row in rows:  # 4 threads x 10 runs: 3 calls per run, a watermark save per 10 runs
        assert (row["runs"], row["calls"]) == (40, 124), row
        assert row["calls_per_s"] > 0


def test_scale_benchmark_smoke() -> None:
    rows = {row["case"]: row for row in json_rows("scale.py", "--smoke")}
    assert rows["flush"]["points"] == 20_000
    assert rows["flush"]["by_method"].get("PUT", 0) >= 4  # at least one upload per file
    assert rows["compaction"]["by_method"].get("DELETE", 0) == 4
    assert rows["read local"]["history_requests"] == {}
    assert rows["read s3"]["history_requests"].get("GET", 0) >= 1
