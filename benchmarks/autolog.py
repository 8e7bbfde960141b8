"""Autolog overhead benchmark (issue 13): the user's example training loop, fit time with
``sklearn.autolog()`` against without, through steppe and through MLflow's autolog into
MLflow's own server (``mlflow server``, sqlite backend), in one run.

    python benchmarks/autolog.py              # 20 fits per mode
    python benchmarks/autolog.py --smoke      # seconds; CI checks it completes, never speed
    python benchmarks/autolog.py --log-models # also log the model (steppe's flavor needed)

Each mode runs in its own client process (one warm-up iteration first, not counted):
``plain`` is the loop with tracking but no autolog, ``autolog`` the same loop with it on.
Reported per tool: median fit time and median whole-iteration time (start_run .. end_run)
in both modes, autolog's overhead (the differences), and as fractions of MLflow's figures:
steppe's fit overhead and steppe's whole autolog iteration. Models are not logged by
default (``--log-models`` logs them), for both tools alike.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import Server, table

STARTUP_TIMEOUT_S = 120.0


def client(tool: str, uri: str, mode: str, fits: int, log_models: bool) -> dict[str, Any]:
    """The user's example, ``fits`` + 1 times; the first is a warm-up."""
    import logging

    logging.disable(logging.WARNING)  # MLflow's pickle advice, steppe's flavor notes
    from sklearn.datasets import load_breast_cancer
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score

    if tool == "steppe":
        import steppe as mlflow
        import steppe.sklearn  # noqa: F401
    else:
        import mlflow  # type: ignore[no-redef]
        import mlflow.sklearn

    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment(f"bench-{mode}")
    X, y = load_breast_cancer(return_X_y=True)
    if mode == "autolog":
        mlflow.sklearn.autolog(log_models=log_models)
    fit_s: list[float] = []
    run_s: list[float] = []
    run_ids: list[str] = []
    for i in range(fits + 1):
        t0 = time.perf_counter()
        with mlflow.start_run():
            mlflow.log_param("learning_rate", 0.01)
            t1 = time.perf_counter()
            model = LogisticRegression(solver="liblinear", random_state=42).fit(X, y)
            t2 = time.perf_counter()
            mlflow.log_metric("accuracy", accuracy_score(y, model.predict(X)))
            run_ids.append(mlflow.active_run().info.run_id)  # type: ignore[union-attr]
        t3 = time.perf_counter()
        if i:
            fit_s.append(t2 - t1)
            run_s.append(t3 - t0)
    # The loop measured what it claims: autolog's training metrics are stored (or absent).
    metrics = mlflow.get_run(run_ids[-1]).data.metrics
    return {
        "fit_s": statistics.median(fit_s),
        "run_s": statistics.median(run_s),
        "fits": fits,
        "run_id": run_ids[-1],
        "training_metrics": sum(k.startswith("training_") for k in metrics),
        "user_metric": "accuracy" in metrics,
    }


def _child(tool: str, uri: str, mode: str, fits: int, log_models: bool) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("STEPPE_", "MLFLOW_"))}
    args = [tool, uri, mode, str(fits), "1" if log_models else "0"]
    out = subprocess.run(
        [sys.executable, __file__, "--child", *args],
        capture_output=True,
        text=True,
        timeout=1800,
        env=env,
    )
    if out.returncode != 0:
        raise RuntimeError(f"client {args} failed:\n{out.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class MlflowServer:
    """``mlflow server`` on 127.0.0.1 with a temp sqlite backend, in its own process group
    (it forks workers), stopped by that group's id."""

    def __init__(self, folder: Path) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("STEPPE_", "MLFLOW_"))}
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "mlflow",
                "server",
                "--backend-store-uri",
                f"sqlite:///{folder}/mlflow.db",
                "--default-artifact-root",
                str(folder / "artifacts"),
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--workers",
                "1",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
        )
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError("mlflow server exited at startup")
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                pass  # not listening yet: poll until the deadline
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("mlflow server did not start")
            time.sleep(0.2)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=30)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="3 fits per mode, for CI")
    parser.add_argument("--fits", type=int, default=20, help="timed fits per mode")
    parser.add_argument("--log-models", action="store_true", help="autolog logs models too")
    parser.add_argument("--only", default="steppe,mlflow", help="comma-separated tools")
    parser.add_argument("--json", action="store_true", help="print rows as JSON lines too")
    parser.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        tool, uri, mode, fits, log_models = args.child
        print(json.dumps(client(tool, uri, mode, int(fits), log_models == "1")), flush=True)
        return 0

    fits = 3 if args.smoke else args.fits
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="steppe-autolog-bench-") as tmp:
        for tool in args.only.split(","):
            print(f"running {tool}: {fits} fits per mode", file=sys.stderr, flush=True)
            folder = Path(tmp) / tool
            folder.mkdir()
            server: Server | MlflowServer
            server = Server.start(folder / "data") if tool == "steppe" else MlflowServer(folder)
            uri = server.http_url if isinstance(server, Server) else server.url
            try:
                plain = _child(tool, uri, "plain", fits, args.log_models)
                auto = _child(tool, uri, "autolog", fits, args.log_models)
            finally:
                server.stop()
            if plain["training_metrics"] or not auto["training_metrics"]:
                raise RuntimeError(f"{tool}: autolog's metrics missing or logged without it")
            if not (plain["user_metric"] and auto["user_metric"]):
                raise RuntimeError(f"{tool}: the user's own metric is missing")
            row = {
                "tool": tool,
                "fits": fits,
                "training_metrics": auto["training_metrics"],
                "plain_fit_ms": plain["fit_s"] * 1e3,
                "autolog_fit_ms": auto["fit_s"] * 1e3,
                "fit_overhead_ms": (auto["fit_s"] - plain["fit_s"]) * 1e3,
                "plain_run_ms": plain["run_s"] * 1e3,
                "autolog_run_ms": auto["run_s"] * 1e3,
                "run_overhead_ms": (auto["run_s"] - plain["run_s"]) * 1e3,
            }
            rows.append(row)
            if args.json:
                print(json.dumps(row), flush=True)
    by_tool = {r["tool"]: r for r in rows}
    if "steppe" in by_tool and "mlflow" in by_tool:
        ours, theirs = by_tool["steppe"], by_tool["mlflow"]
        # MLflow's plain iteration is itself slow (REST round trips to its server), so the
        # whole-iteration figure compares autolog iterations, not their differences.
        for key, ratio in (
            ("fit_overhead_ms", "fit_overhead_x_mlflow"),
            ("autolog_run_ms", "autolog_run_x_mlflow"),
        ):
            ours[ratio] = ours[key] / theirs[key] if theirs[key] else float("nan")
    print(
        table(
            rows,
            [
                "tool",
                "fits",
                "plain_fit_ms",
                "autolog_fit_ms",
                "fit_overhead_ms",
                "fit_overhead_x_mlflow",
                "plain_run_ms",
                "autolog_run_ms",
                "autolog_run_x_mlflow",
                "run_overhead_ms",
            ],
        )
    )
    if args.json and "steppe" in by_tool and "mlflow" in by_tool:
        print(json.dumps({"summary": by_tool["steppe"]}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
