"""Shared benchmark plumbing: a real steppe server subprocess, /proc readings, tables.

Benchmarks talk only to 127.0.0.1 and stop what they start.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a live process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


@dataclass
class Server:
    proc: subprocess.Popen[str]
    data_dir: Path
    http_url: str

    @classmethod
    def start(cls, data_dir: Path, *extra: str) -> Server:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("STEPPE_", "MLFLOW_"))}
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "steppe",
                "server",
                "--data-dir",
                str(data_dir),
                "--http-port",
                "0",
                "--grpc-port",
                "0",
                *extra,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env=env,
        )
        assert proc.stdout is not None
        deadline = time.monotonic() + 60
        for line in proc.stdout:
            match = re.search(r"listening on (http://\S+)", line)
            if match:
                return cls(proc, data_dir, match.group(1))
            if time.monotonic() > deadline:
                break
        proc.kill()
        raise RuntimeError("steppe server did not start")

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(self.http_url + path, timeout=60) as response:
            return json.loads(response.read())

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=120)
        if self.proc.stdout:
            self.proc.stdout.close()

    def stored_points(self, run_id: str) -> int:
        run = self.get(f"/api/steppe/v1/runs/{run_id}")["run"]
        return sum(int(m["count"]) for m in run["data"]["metrics"].values())


@dataclass
class MlflowServer:
    """MLflow's own tracking server (the baseline): sqlite backend, artifacts proxied into a
    local folder, on a free 127.0.0.1 port; needs the ``bench`` extra."""

    proc: subprocess.Popen[str]
    http_url: str

    @classmethod
    def start(cls, root: Path, workers: int = 1) -> MlflowServer:
        import socket

        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        root.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("STEPPE_", "MLFLOW_"))}
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "mlflow",
                "server",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--workers",
                str(workers),
                "--backend-store-uri",
                f"sqlite:///{root / 'mlflow.db'}",
                "--artifacts-destination",
                str(root / "artifacts"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            text=True,
            env=env,
        )
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited with {proc.returncode}")
            try:
                with urllib.request.urlopen(url + "/health", timeout=2) as response:
                    if response.status == 200:
                        return cls(proc, url)
            except OSError:
                time.sleep(0.2)  # polling a starting server: no event to wait on
        proc.kill()
        raise RuntimeError("mlflow server did not start within 120 s")

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def disk_bytes(data_dir: Path) -> int:
    return sum(p.stat().st_size for p in (data_dir / "metrics").glob("*.parquet"))


def percentiles_ns(samples: list[int] | Any, overhead_ns: float) -> dict[str, float]:
    ordered = sorted(samples)
    n = len(ordered)

    def at(q: float) -> float:
        return max(0.0, ordered[min(n - 1, int(q * n))] - overhead_ns)

    return {"median_ns": at(0.5), "p99_ns": at(0.99), "p999_ns": at(0.999)}


def table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:,.2f}" if abs(v) < 100 else f"{v:,.0f}"
        return str(v)

    cells = [[fmt(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines += ["  ".join(v.rjust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(lines)
